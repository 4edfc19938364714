"""DPM-Solver (Lu et al., NeurIPS 2022) and DPM-Solver++ (Lu et al., 2022): singlestep solvers.

A singlestep solver of order k spends k model calls on one step from the anchor x_s to x_t, each call at an
intermediate point (here: the next timesteps of the schedule). With the anchor s = s_{k-1} the k-th call
completes the step from x_s:

    order 2:  h = λ_t − λ_s1,  r_0 = (λ_s0 − λ_s1)/h,  D_0 = m_1,  D_1 = (m_0 − m_1)/r_0
    order 3:  h = λ_t − λ_s2,  r_0 = (λ_s0 − λ_s2)/h,  r_1 = (λ_s1 − λ_s2)/h,  D_0 = m_2,
              D1_0 = (m_1 − m_2)/r_1,  D1_1 = (m_0 − m_2)/r_0,
              D_1 = (r_0 D1_0 − r_1 D1_1)/(r_0 − r_1),  D_2 = 2 (D1_1 − D1_0)/(r_0 − r_1)

and x_t = c_x x_s + φ_0 D_0 + φ_1 D_1 (+ φ_2 D_2) + c_z z with the exponential-integrator weights of
`integrator_terms`. So the update is again one row of a table: x_{i+1} = c_x·anchor + c_0 m_0 + c_1 m_1 +
c_2 m_2 + c_z z, with the anchor replaced by the current sample whenever the step's order is 1.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from .base import SchedulerOutput, check_choice
from .dpmsolver_multistep import (
    DPMSolverMultistepScheduler,
    ExponentialIntegratorMixin,
    check_dpm_solver_config,
    integrator_terms,
    mask_unreachable,
)
from .fused import FusedLaunch, draw_noise, f64, fused_table, rows

logger = logging.getLogger(__name__)

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")


class DPMSolverSinglestepScheduler(ExponentialIntegratorMixin):
    """Singlestep DPM-Solver / DPM-Solver++ (orders 1-3, repeating blocks of 1, 2, ..., order model calls).

    Example:
        >>> scheduler = DPMSolverSinglestepScheduler(solver_order=3)
        >>> scheduler.set_timesteps(21)
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Literal["learned", "learned_range"] | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ):
        check_dpm_solver_config(self, ALGORITHM_TYPES)
        self._init_noise_schedule()
        self.order_list = self.get_order_list(num_train_timesteps)

    # ---- schedule -------------------------------------------------------------------------------------

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """Order of each step: blocks 1, 2, ..., solver_order; with lower_order_final the tail is a shorter
        block; a final σ = 0 is always reached by a first-order step."""
        k, n = self.config.solver_order, num_inference_steps
        if k > 3:
            raise ValueError("Order > 3 is not supported by this scheduler")
        block = list(range(1, k + 1))
        full, tail = divmod(n, k)
        if not self.config.lower_order_final:
            orders = block * full
        elif tail == 0 and k > 1:  # the last full block becomes [1, ..., k-1] and a first-order step
            orders = block * (full - 1) + block[:-1] + [1]
        else:  # a shorter block [1, ..., tail] at the end
            orders = block * full + block[:tail]
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device = None,
                      mu: float | None = None, timesteps: list[int] | None = None):
        """Timesteps (linspace below the λ clip, or custom), σ_i, the order list and the step coefficients."""
        cfg = self.config
        self._refuse_mu(mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Must pass exactly one of  `num_inference_steps` or `timesteps`.")
        if timesteps is not None and cfg.use_karras_sigmas:
            raise ValueError("Cannot use `timesteps` when `config.use_karras_sigmas=True`.")
        for key in ("use_exponential_sigmas", "use_beta_sigmas"):
            if timesteps is not None and cfg[key]:
                raise ValueError(f"Cannot set `timesteps` with `config.{key} = True`.")
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.int64)
            if timesteps.ndim != 1 or len(timesteps) == 0:
                raise ValueError("`timesteps` must be a non-empty list of integers.")
            num_inference_steps = len(timesteps)
        else:
            self._check_step_count(num_inference_steps)
            last = self._clipped_last_timestep()
            timesteps = np.linspace(0, last - 1, num_inference_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        sigmas, timesteps = self._inference_sigmas(timesteps, num_inference_steps)
        sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        alpha, sigma, lam = self._set_tables(timesteps, sigmas, device)
        self._force_lower_order_final(num_inference_steps)
        self.order_list = self.get_order_list(num_inference_steps)
        self._store_orders(self.order_list, device)
        self._coefficients = mask_unreachable(self._coefficient_table(alpha, sigma, lam), self.order_list).to(device)

    def _force_lower_order_final(self, n: int):
        """diffusers rewrites the config: an uneven step count or a final σ = 0 needs lower_order_final."""
        cfg = self.config
        if not cfg.lower_order_final and (n % cfg.solver_order != 0 or cfg.final_sigmas_type == "zero"):
            logger.warning(f"Setting `lower_order_final=True` in the config of {type(self).__name__}: {n} steps are not a "
                           f"multiple of solver_order={cfg.solver_order}, or the final sigma is zero.")
            self.register_to_config(lower_order_final=True)

    def _coefficient_table(self, alpha, sigma, lam) -> torch.Tensor:
        """(steps, 3 orders, 5) weights (c_x, c_0, c_1, c_2, c_z) of anchor, m_0, m_1, m_2, z."""
        n = len(alpha) - 1
        i = torch.arange(n)
        t, s0, s1, s2 = i + 1, i, (i - 1).clamp(min=0), (i - 2).clamp(min=0)
        e = torch.eye(3)  # weights over (m_0, m_1, m_2)
        mid = self.config.solver_type == "midpoint"

        def terms(s):  # the exponential-integrator weights of the step s -> t
            h = lam[t] - lam[s]
            return h, integrator_terms(self.config.algorithm_type, alpha[t], sigma[t], alpha[s], sigma[s], h)

        rows = []
        h, w = terms(s0)  # order 1 from the anchor s0 = i:  x_t = c_x x_s0 + φ_0 m_0
        rows.append((w, w.phi0[:, None] * e[0].expand(n, 3)))
        h, w = terms(s1)  # order 2 from the anchor s1 = i − 1
        r0 = ((lam[s0] - lam[s1]) / h)[:, None]
        D0, D1 = e[1].expand(n, 3), (e[0] - e[1]) / r0
        rows.append((w, w.phi0[:, None] * D0 + (w.mid1 if mid else w.phi1)[:, None] * D1))
        h, w = terms(s2)  # order 3 from the anchor s2 = i − 2
        r0, r1 = ((lam[s0] - lam[s2]) / h)[:, None], ((lam[s1] - lam[s2]) / h)[:, None]
        D0, D1_0, D1_1 = e[2].expand(n, 3), (e[1] - e[2]) / r1, (e[0] - e[2]) / r0
        if mid:
            m3 = w.phi0[:, None] * D0 + w.phi1[:, None] * D1_1
        else:
            D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1)
            D2 = 2.0 * (D1_1 - D1_0) / (r0 - r1)
            m3 = w.phi0[:, None] * D0 + w.phi1[:, None] * D1 + w.phi2[:, None] * D2
        rows.append((w, m3))
        return torch.stack([torch.cat([w.cx[:, None], m, w.noise[:, None]], dim=1) for w, m in rows], dim=1)

    # ---- the update -----------------------------------------------------------------------------------

    # x̂_0 (or ε̂) exactly as in the multistep solver, thresholding included
    convert_model_output = DPMSolverMultistepScheduler.convert_model_output

    def _reset_step_state(self):
        super()._reset_step_state()
        self._anchor: torch.Tensor | None = None

    @property
    def sample(self) -> torch.Tensor | None:
        """diffusers' `sample`: the anchor x_s the current singlestep block started from."""
        return self.__dict__.get("_anchor")

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True, variance_noise: torch.Tensor | None = None):
        """One model call of the current block; the anchor is refreshed on first-order steps (on the device)."""
        self._check_ready()
        self._init_step_index(timestep)
        m = self.convert_model_output(model_output, sample=sample)
        self._push_history(m)
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = variance_noise if variance_noise is not None else randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        order = self._effective_order()
        if self._anchor is None:
            self._anchor = torch.zeros_like(sample)
        self._anchor.copy_(torch.where(order == 1, sample, self._anchor))  # a new block starts from x_i
        row = self._row(self._coefficients, order)
        prev = self._combine(row[0], self._anchor, row[1:4], self._history, row[4], noise)
        self._advance()
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    supports_fused_step = DPMSolverMultistepScheduler.supports_fused_step

    def _fused_table(self) -> torch.Tensor:
        """Row (i, w): D = x̂_0 (or ε̂) pushed; S = the anchor (x itself on a first-order step), kept;
        x' = c_x S + c_0 D + c_1 H_0 + c_2 H_1 + c_z z with the order step() uses after w steps."""
        def build():
            target = "x0" if self.config.algorithm_type.endswith("dpmsolver++") else "eps"
            w_x, w_m = self._fused_prediction(target)
            per_warmup = []
            for w in range(self.config.solver_order):
                c = self._fused_order_rows(self._coefficients, w)
                new_block = f64(torch.clamp(self._max_order, max=w + 1) == 1)
                per_warmup.append(rows(len(c), c.device, PX=w_x, PM=w_m, DP=1, SX=new_block, SS=1 - new_block,
                                       XS=c[:, 0], XD=c[:, 1], XH=[c[:, 2], c[:, 3]], XZ=c[:, 4], PUSH=1, STASH=1))
            return fused_table(*per_warmup)

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        self._check_ready()
        self._init_step_index(timestep)
        history = self._fused_history(sample, model_output)
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = draw_noise(sample, model_output, generator, variance_noise)
        if self._anchor is None:
            self._anchor = torch.zeros_like(sample)
        return FusedLaunch(self._fused_table(), self._step, self._start, noise=noise, history=history,
                           stash=self._anchor)

    def singlestep_dpm_solver_update(self, model_output_list, *args, sample=None, order=None, noise=None, **kwargs):
        """diffusers' public update of a given order at the current step (model_output_list oldest first)."""
        if sample is None or order is None:
            raise ValueError("missing `sample` or `order` as a required keyword argument")
        check_choice("order", order, (1, 2, 3), type(self).__name__)
        row = self._row(self._coefficients, torch.tensor(order, device=self._coefficients.device))
        newest_first = torch.stack(list(reversed(model_output_list))[:order])
        return self._combine(row[0], sample, row[1:4], newest_first, row[4], noise)
