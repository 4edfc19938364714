"""UniPC: a unified predictor-corrector framework for fast sampling of diffusion models (Zhao et al., NeurIPS 2023).

Symbols as in DPM-Solver: λ_i = log α_i − log σ_i, h = λ_t − λ_s0, m_0 the newest converted output (x̂_0 when
predict_x0, ε̂ otherwise), m_k the k-th older one, r_k = (λ_{s_k} − λ_s0)/h, D1_k = (m_k − m_0)/r_k.
With ĥ = −h (x̂_0) or h (ε̂), hφ_1 = e^{ĥ} − 1 and B(h) = ĥ (bh1) or e^{ĥ} − 1 (bh2):

    UniP-p (predictor, order p):  x_t = σ_t/σ_s0 x − α_t hφ_1 m_0 − α_t B(h) Σ_{k<p} ρ^p_k D1_k
    UniC-p (corrector, order p):  x_t^c = σ_t/σ_s0 x_s − α_t hφ_1 m_0 − α_t B(h) (Σ_{k<p} ρ^c_k D1_k + ρ^c_p (m_t − m_0))

(α_t ↔ σ_t and σ_t/σ_s0 ↔ α_t/α_s0 in the ε̂ form), where ρ solves R ρ = b with R_jk = r_k^{j}, b_j =
j! hφ_{j+1}(ĥ)/B(h) (Algorithm 2 of the paper; ρ = ½ for the second-order predictor and first-order corrector).

Both are linear in (x, m_0, m_1, m_2, m_t): set_timesteps solves all the small systems for every step and
order at once and stores the weights; step() applies the corrector row to the previous sample, pushes the new
output onto the device history and applies the predictor row.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from .base import SchedulerMixin, SchedulerOutput
from .dpmsolver_multistep import ExponentialIntegratorMixin, dpm_timesteps, mask_unreachable
from .fused import FusedLaunch, f64, fused_table, rows

SOLVER_TYPES = ("bh1", "bh2")


class UniPCMultistepScheduler(ExponentialIntegratorMixin):
    """UniPC multistep sampling: UniP predictor plus UniC corrector, orders 1-3, bh1/bh2 variants.

    Example:
        >>> scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(10)
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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 - diffusers' default, never mutated
        solver_p: SchedulerMixin = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        name = type(self).__name__
        self._check_common_config(solver_type=(SOLVER_TYPES, dict.fromkeys(("midpoint", "heun", "logrho"), "bh2")))
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("`shift_terminal` is only supported when `use_flow_sigmas=True`.")
        if solver_p is not None:
            raise NotImplementedError(f"{name}: config key solver_p (an external predictor scheduler) is not "
                                      "implemented in fastdiff.")
        self._init_noise_schedule()
        self.predict_x0 = predict_x0
        self.disable_corrector = disable_corrector
        self.solver_p = solver_p

    # ---- schedule -------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device = None,
                      sigmas: list[float] | None = None, mu: float | None = None):
        """Timesteps by `timestep_spacing`, σ_i by the configured spacing, and predictor/corrector weights."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None:  # custom sigmas exist only for flow-matching schedules, as in diffusers
            raise ValueError("Passing `sigmas` is only supported when `use_flow_sigmas=True`. "
                             "Please set `use_flow_sigmas=True` during scheduler initialization.")
        self._check_step_count(num_inference_steps)
        timesteps = dpm_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        sigmas, timesteps = self._inference_sigmas(timesteps, num_inference_steps)
        spaced = cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas
        final = self._final_sigma() if not (spaced and cfg.final_sigmas_type == "sigma_min") else sigmas[-1]
        sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
        alpha, sigma, lam = self._set_tables(timesteps, sigmas, device)
        n = len(timesteps)
        max_orders = [min(cfg.solver_order, n - i) if cfg.lower_order_final else cfg.solver_order for i in range(n)]
        self._store_orders(max_orders, device)
        predictor, corrector = self._coefficient_tables(alpha, sigma, lam)
        self._predictor = mask_unreachable(predictor, max_orders).to(device)
        # the corrector at step i has the order of the predictor at step i-1 and sees only the i older outputs
        corrector_orders = [min(order, i) for i, order in enumerate([0] + max_orders[:-1])]
        self._corrector = mask_unreachable(corrector, corrector_orders).to(device)
        corrects = [i > 0 and (i - 1) not in self.disable_corrector for i in range(n)]
        self._corrects = torch.tensor(corrects, device=device)

    def _coefficient_tables(self, alpha, sigma, lam):
        """Predictor (steps, 3, 4): weights of (x, m_0, m_1, m_2) for x_i -> x_{i+1}.
        Corrector (steps, 3, 5): weights of (x_{i-1}, m_0, m_1, m_2, m_t) giving the corrected x_i."""
        n = len(alpha) - 1
        i = torch.arange(n)
        predictor = [self._uni_weights(alpha, sigma, lam, t=i + 1, s0=i, p=p, corrector=False) for p in (1, 2, 3)]
        s0 = (i - 1).clamp(min=0)
        corrector = [self._uni_weights(alpha, sigma, lam, t=i, s0=s0, p=p, corrector=True) for p in (1, 2, 3)]
        return torch.stack(predictor, dim=1), torch.stack(corrector, dim=1)

    def _uni_weights(self, alpha, sigma, lam, t, s0, p: int, corrector: bool) -> torch.Tensor:
        """Weights of UniP-p / UniC-p for every step at once (rows of steps where it cannot run are junk)."""
        h = lam[t] - lam[s0]
        rks = [(lam[(s0 - k).clamp(min=0)] - lam[s0]) / h for k in range(1, p)] + [torch.ones_like(h)]
        rks = torch.stack(rks, dim=1)  # (steps, p): r_1 .. r_{p-1}, 1
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)  # hφ_1(ĥ) = e^{ĥ} − 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1  # b_j = j! hφ_{j+1}(ĥ) / B(h), via φ_{k+1} = (φ_k − 1/k!)/ĥ
        for j in range(1, p + 1):
            b.append(h_phi_k * factorial / B_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        b = torch.stack(b, dim=1)
        R = torch.stack([rks ** (j - 1) for j in range(1, p + 1)], dim=1)  # R_jk = r_k^{j-1}
        rho = self._solve_rho(R, b, p, corrector)
        x_scale, out_scale = (sigma, alpha) if self.predict_x0 else (alpha, sigma)
        c_x = x_scale[t] / x_scale[s0]
        gain = out_scale[t] * B_h  # the B(h)-weighted correction enters as −α_t B(h) (Σ ρ_k D1_k ...)
        weights = torch.zeros(len(h), 4)  # over (m_0, m_1, m_2, m_t)
        weights[:, 0] = -out_scale[t] * h_phi_1
        for k in range(1, p):  # ρ_k D1_k = ρ_k (m_k − m_0) / r_k
            w = gain * rho[:, k - 1] / rks[:, k - 1]
            weights[:, k] -= w
            weights[:, 0] += w
        if corrector:  # ρ_p (m_t − m_0)
            weights[:, 3] -= gain * rho[:, p - 1]
            weights[:, 0] += gain * rho[:, p - 1]
            return torch.cat([c_x[:, None], weights], dim=1)
        return torch.cat([c_x[:, None], weights[:, :3]], dim=1)

    @staticmethod
    def _solve_rho(R, b, p: int, corrector: bool) -> torch.Tensor:
        """ρ^c = R⁻¹ b (ρ = ½ at order 1); ρ^p from the leading (p−1)×(p−1) system (ρ = ½ at order 2)."""
        size = p if corrector else p - 1
        if size == 0:
            return torch.zeros(len(b), 0)
        if size == 1 and ((corrector and p == 1) or (not corrector and p == 2)):
            return torch.full((len(b), 1), 0.5)
        R, b = R[:, :size, :size], b[:, :size]
        ok = torch.isfinite(R).all((1, 2)) & (torch.linalg.det(R.double()).abs() > 0)
        R = torch.where(ok[:, None, None], R, torch.eye(size))  # unreachable rows: any solvable system
        return torch.linalg.solve(R, torch.where(ok[:, None], b, torch.zeros(()))).nan_to_num()

    # ---- the update -----------------------------------------------------------------------------------

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor = None, **kwargs):
        """x̂_0 (predict_x0, then optional dynamic thresholding as a separate stage) or ε̂ at the current step."""
        sample = self._sample_arg(sample, args)
        if self.predict_x0:
            x0 = self._predict_x0(model_output, sample)
            return self._threshold(x0) if self.config.thresholding else x0
        return self._predict_epsilon(model_output, sample)

    def _reset_step_state(self):
        super()._reset_step_state()
        self._last_sample: torch.Tensor | None = None

    @property
    def last_sample(self):
        """x_{i-1} before its predictor step, kept for the corrector (device tensor)."""
        return self.__dict__.get("_last_sample")

    @property
    def this_order(self):
        """Order of the last predictor step (a device tensor)."""
        if self.__dict__.get("_step") is None:
            return None
        return self._effective_order((self._step - 1).clamp(min=0))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """UniC corrects x_i with the new output m_t, then UniP predicts x_{i+1} from the corrected x_i."""
        self._check_ready()
        self._init_step_index(timestep)
        m_t = self.convert_model_output(model_output, sample=sample)
        if self._history is None:
            self._history = m_t.new_zeros((self.config.solver_order, *m_t.shape))
            self._last_sample = torch.zeros_like(sample)
        sample = self._correct(sample, m_t)
        self._push_history(m_t)
        self._last_sample.copy_(sample)
        row = self._row(self._predictor, self._effective_order())
        prev = self._combine(row[0], sample, row[1:4], self._history).to(sample.dtype)
        self._advance()
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _correct(self, sample: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
        """UniC on the device: use = the corrector is enabled for this step and a previous step exists."""
        use = self._corrects.index_select(0, self._step.view(1)) & (self._step > self._start)
        order = self._effective_order((self._step - 1).clamp(min=0))  # the previous predictor's order
        row = self._row(self._corrector, order) * use  # zero row when the corrector is off
        corrected = self._combine(row[0], self._last_sample, row[1:4], self._history, row[4], m_t)
        return torch.where(use, corrected.to(sample.dtype), sample)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Not with dynamic thresholding (a quantile)."""
        return not self.config.thresholding and not step_kwargs

    def _fused_table(self) -> torch.Tensor:
        """Row (i, w), w = steps taken (capped at solver_order): D = m_t = x̂_0 (or ε̂), pushed;
        S = UniC(last sample S_old, H, D) if the corrector runs (w > 0 and enabled) else x, kept as the last sample;
        x' = UniP(S, D, H_0, H_1) at the predictor's order."""
        def build():
            w_x, w_m = self._fused_prediction("x0" if self.predict_x0 else "eps")
            previous_max = torch.cat([self._max_order[:1], self._max_order[:-1]])  # the previous predictor's order
            per_warmup = []
            for w in range(self.config.solver_order + 1):
                p = self._fused_order_rows(self._predictor, w)  # on (S, D, H_0, H_1)
                order = torch.clamp(previous_max, max=max(w, 1))
                k = f64(self._corrector[torch.arange(len(order), device=order.device), order - 1])  # (S_old, H, D)
                use = f64(self._corrects & (w > 0))
                per_warmup.append(rows(
                    len(p), p.device, PX=w_x, PM=w_m, DP=1, SX=1 - use, SS=use * k[:, 0],
                    SH=[use * k[:, 1], use * k[:, 2], use * k[:, 3]], SD=use * k[:, 4],
                    XS=p[:, 0], XD=p[:, 1], XH=[p[:, 2], p[:, 3]], PUSH=1, STASH=1))
            return fused_table(*per_warmup)

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample) -> FusedLaunch:
        self._check_ready()
        self._init_step_index(timestep)
        history = self._fused_history(sample, model_output)
        if self._last_sample is None:
            self._last_sample = torch.zeros_like(sample)
        return FusedLaunch(self._fused_table(), self._step, self._start, history=history, stash=self._last_sample,
                           read_oldest=True)
