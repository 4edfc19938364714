"""DEIS: Fast sampling of diffusion models with exponential integrator (Zhang & Chen, ICLR 2023), log-ρ multistep.

Symbols: ρ_i = σ_i / α_i (the noise-to-signal ratio, `sigmas`), m_k the ε̂ of the k-th previous step. DEIS
integrates the probability-flow ODE dx/α = d(ρ) ε exactly in x/α, approximating ε by the Lagrange polynomial
through (log ρ_{s_k}, m_k):

    x_t / α_t = x_s0 / α_s0 + Σ_k C_k m_k,   C_k = ∫_{ρ_s0}^{ρ_t} ℓ_k(log ρ) dρ,

where ℓ_k is the Lagrange basis in u = log ρ; ∫ ℓ_k(log ρ) dρ has a closed form (linear basis for order 2,
quadratic for order 3, diffusers' `ind_fn`). Order 1 is DDIM:
x_t = α_t/α_s x_s − σ_t (e^{h} − 1) m_0 with h = λ_t − λ_s.

All weights depend on the schedule only: set_timesteps stores (c_x, c_0, c_1, c_2) per step and order and
step() applies one row to (x, m_0, m_1, m_2).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from .base import SchedulerOutput
from .dpmsolver_multistep import ExponentialIntegratorMixin, dpm_timesteps, mask_unreachable
from .fused import FusedLaunch, f64, fused_table, rows


def _log(x: torch.Tensor) -> torch.Tensor:
    """float32 log by NumPy, as diffusers evaluates these formulas: the third-order integral cancels
    catastrophically in float32, so torch.log's last-ulp differences would show up at the 1e-5 level."""
    return torch.from_numpy(np.log(x.numpy()))


def _lagrange_integral_2(t, b, c):
    """F(t) = ∫^t ℓ_b(log ρ) dρ for the linear basis ℓ_b(u) = (u − u_c)/(u_b − u_c), u = log ρ:
    F(t) = t (log t − log c − 1)/(log b − log c)."""
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _lagrange_integral_3(t, b, c, d):
    """F(t) = ∫^t ℓ_b(log ρ) dρ for the quadratic basis ℓ_b(u) = (u − u_c)(u − u_d)/((u_b − u_c)(u_b − u_d))."""
    lt, lc, ld, lb = _log(t), _log(c), _log(d), _log(b)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((lb - lc) * (lb - ld))


class DEISMultistepScheduler(ExponentialIntegratorMixin):
    """DEIS log-ρ multistep sampling (orders 1-3).

    Example:
        >>> scheduler = DEISMultistepScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(20)
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
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ):
        self._check_common_config(algorithm_type=(("deis",), dict.fromkeys(("dpmsolver", "dpmsolver++"), "deis")),
                                  solver_type=(("logrho",), dict.fromkeys(("midpoint", "heun", "bh1", "bh2"), "logrho")))
        self._init_noise_schedule()

    # ---- schedule -------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None, mu: float | None = None):
        """Timesteps by `timestep_spacing`, σ_i (Karras-style spacings end on their own last σ), coefficients."""
        cfg = self.config
        self._refuse_mu(mu)
        self._check_step_count(num_inference_steps)
        timesteps = dpm_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps, cfg.steps_offset)
        sigmas, timesteps = self._inference_sigmas(timesteps, num_inference_steps)
        spaced = cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas
        final = sigmas[-1] if spaced else (((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5).item()
        sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
        alpha, sigma, lam = self._set_tables(timesteps, sigmas, device)
        n = len(timesteps)
        max_orders = [cfg.solver_order] * n
        if cfg.lower_order_final and n < 15:  # diffusers lowers the order of the last two steps of short runs
            max_orders[-1] = 1
            if n >= 2:
                max_orders[-2] = min(max_orders[-2], 2)
        self._store_orders(max_orders, device)
        self._coefficients = mask_unreachable(self._coefficient_table(alpha, sigma, lam), max_orders).to(device)

    def _coefficient_table(self, alpha, sigma, lam) -> torch.Tensor:
        """(steps, 3 orders, 4) weights (c_x, c_0, c_1, c_2) of x, m_0, m_1, m_2 for x_i -> x_{i+1}."""
        n = len(alpha) - 1
        i = torch.arange(n)
        t, s0, s1, s2 = i + 1, i, (i - 1).clamp(min=0), (i - 2).clamp(min=0)
        rho = sigma / alpha  # ρ = σ/α
        r_t, r0, r1, r2 = rho[t], rho[s0], rho[s1], rho[s2]
        zero = torch.zeros(n)
        # order 1 (DDIM in ε form): x_t = α_t/α_s x − σ_t (e^{h} − 1) m_0
        h = lam[t] - lam[s0]
        first = [alpha[t] / alpha[s0], -(sigma[t] * (torch.exp(h) - 1.0)), zero, zero]
        # order 2: C_0 = ∫_{ρ_s0}^{ρ_t} ℓ_0, C_1 = ∫ ℓ_1 (linear Lagrange basis in log ρ through s0, s1)
        I2 = _lagrange_integral_2
        c0 = I2(r_t, r0, r1) - I2(r0, r0, r1)
        c1 = I2(r_t, r1, r0) - I2(r0, r1, r0)
        second = [alpha[t] / alpha[s0], alpha[t] * c0, alpha[t] * c1, zero]
        # order 3: the quadratic Lagrange basis through s0, s1, s2
        I3 = _lagrange_integral_3
        c0 = I3(r_t, r0, r1, r2) - I3(r0, r0, r1, r2)
        c1 = I3(r_t, r1, r2, r0) - I3(r0, r1, r2, r0)
        c2 = I3(r_t, r2, r0, r1) - I3(r0, r2, r0, r1)
        third = [alpha[t] / alpha[s0], alpha[t] * c0, alpha[t] * c1, alpha[t] * c2]
        return torch.stack([torch.stack(row, dim=1) for row in (first, second, third)], dim=1)

    # ---- the update -----------------------------------------------------------------------------------

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor = None, **kwargs):
        """ε̂ at the current step, via x̂_0 so that dynamic thresholding (a separate stage) can act on it."""
        sample = self._sample_arg(sample, args)
        x0 = self._predict_x0(model_output, sample)
        if self.config.thresholding:
            x0 = self._threshold(x0)
        alpha, sigma = self._at(self._alpha), self._at(self._sigma)
        return (sample - alpha * x0) / sigma  # ε̂ = (x − α x̂_0)/σ

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """x_i -> x_{i+1}: ε̂ onto the device history, then one row of the coefficient table."""
        self._check_ready()
        self._init_step_index(timestep)
        self._push_history(self.convert_model_output(model_output, sample=sample))
        row = self._row(self._coefficients, self._effective_order())
        prev = self._combine(row[0], sample, row[1:4], self._history)
        self._advance()
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Not with dynamic thresholding (a quantile)."""
        return not self.config.thresholding and not step_kwargs

    def _fused_table(self) -> torch.Tensor:
        """Row (i, w): D = ε̂ = (x − α x̂_0)/σ pushed; x' = c_x x + c_0 D + c_1 H_0 + c_2 H_1 at the order step()
        uses after w steps."""
        def build():
            n = len(self.timesteps)
            alpha, sigma = f64(self._alpha[:n]), f64(self._sigma[:n])
            x_x, x_m = self._fused_prediction("x0")  # ε̂ through x̂_0, as convert_model_output
            w_x, w_m = (1 - alpha * x_x) / sigma, -alpha * x_m / sigma
            per_warmup = []
            for w in range(self.config.solver_order):
                c = self._fused_order_rows(self._coefficients, w)  # (c_x, c_0, c_1, c_2)
                per_warmup.append(rows(n, c.device, PX=w_x, PM=w_m, DP=1, XX=c[:, 0], XD=c[:, 1],
                                       XH=[c[:, 2], c[:, 3]], PUSH=1))
            return fused_table(*per_warmup)

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample) -> FusedLaunch:
        self._check_ready()
        self._init_step_index(timestep)
        history = self._fused_history(sample, model_output)
        return FusedLaunch(self._fused_table(), self._step, self._start, history=history)
