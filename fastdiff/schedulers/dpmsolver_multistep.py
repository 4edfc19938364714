"""DPM-Solver (Lu et al., NeurIPS 2022) and DPM-Solver++ (Lu et al., 2022, arXiv:2211.01095): multistep solvers.

Symbols (VP process x_t = α_t x_0 + σ_t ε):
    σ_i (self.sigmas) = σ_t / α_t, the noise-to-signal ratio at step i; α_i = 1/√(σ_i² + 1), σ_i α_i the noise scale;
    λ_i = log α_i − log σ_i (half log-SNR);  h = λ_t − λ_s  for a step from s to t;
    m_0, m_1, m_2: the converted model outputs of this and the two previous steps (x̂_0 for "++", ε otherwise);
    D_0 = m_0,  D_1 = (m_0 − m_1) / r_0  with  r_0 = h_0 / h,  h_0 = λ_s0 − λ_s1   (finite differences in λ).

DPM-Solver++ (data prediction) integrates x_t = σ_t/σ_s x_s − α_t (e^{−h} − 1) D_0 + ... exactly in λ;
DPM-Solver (noise prediction) integrates x_t = α_t/α_s x_s − σ_t (e^{h} − 1) D_0 + ...; the SDE variants add
σ_t √(1 − e^{−2h}) z (or σ_t √(e^{2h} − 1) z).

Every step is one linear combination with coefficients fixed by the schedule:

    x_{i+1} = c_x · x_i + c_0 · m_0 + c_1 · m_1 + c_2 · m_2 + c_z · z,

so set_timesteps computes the table `_coefficients[i, p-1] = (c_x, c_0, c_1, c_2, c_z)` for every step i and
order p, and `_max_order[i]`; step() converts the model output, shifts the device history and applies one row.
The effective order min(_max_order[i], 1 + i − start) reproduces diffusers' warm-up (`lower_order_nums`) and
lower-order final steps without Python state. `ExponentialIntegratorMixin` is shared with DPM-Solver singlestep,
UniPC and DEIS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from .base import (
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SchedulerMixin,
    SchedulerOutput,
    broadcast_to_sample,
    check_choice,
    check_num_inference_steps,
    check_sigma_options,
    convert_sigmas,
    sigma_to_t,
    step_indices_for,
    threshold_sample,
    vp_sigmas,
)
from .fused import FusedLaunch, f64, fused_table, prediction_weights, rows

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


# ---- the schedule shared by the DPM-Solver family ---------------------------------------------------


def dpm_timesteps(spacing: str, num_train_timesteps: int, n: int, steps_offset: int = 0,
                  last_timestep: int | None = None) -> np.ndarray:
    """n integer timesteps, descending: n+1 points on [0, last_timestep) with the final t=0 dropped."""
    T = num_train_timesteps
    last = T if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose one of {list(TIMESTEP_SPACINGS)}.")


@dataclass
class IntegratorTerms:
    """The exponential-integrator weights of one step s -> t (tensors over steps).

    x_t = cx·x_s + phi0·D_0 + phi1·D_1 + phi2·D_2 + noise·z   (Taylor form; `mid1` replaces phi1 for midpoint).
    """

    cx: torch.Tensor
    phi0: torch.Tensor
    phi1: torch.Tensor
    phi2: torch.Tensor | None
    mid1: torch.Tensor
    noise: torch.Tensor


def integrator_terms(algorithm_type: str, alpha_t, sigma_t, alpha_s, sigma_s, h) -> IntegratorTerms:
    """Weights of DPM-Solver(++) and their SDE variants (Lu et al. 2022, eqs. 3.7-3.9 and Alg. 1-2 of "++")."""
    zero = torch.zeros_like(h)
    if algorithm_type == "dpmsolver++":  # x̂_0 form: ∫ e^{-(λ_t-λ)} dλ = -(e^{-h} - 1)
        e = torch.exp(-h) - 1.0
        return IntegratorTerms(sigma_t / sigma_s, -(alpha_t * e), alpha_t * (e / h + 1.0),
                               -(alpha_t * ((e + h) / h**2 - 0.5)), -0.5 * (alpha_t * e), zero)
    if algorithm_type == "dpmsolver":  # ε form: ∫ e^{λ_t-λ} dλ = e^{h} - 1
        e = torch.exp(h) - 1.0
        return IntegratorTerms(alpha_t / alpha_s, -(sigma_t * e), -(sigma_t * (e / h - 1.0)),
                               -(sigma_t * ((e - h) / h**2 - 0.5)), -0.5 * (sigma_t * e), zero)
    if algorithm_type == "sde-dpmsolver++":  # SDE in x̂_0 form: the exponent doubles, noise σ_t √(1 - e^{-2h})
        e2 = 1.0 - torch.exp(-2.0 * h)
        return IntegratorTerms(sigma_t / sigma_s * torch.exp(-h), alpha_t * e2, alpha_t * (e2 / (-2.0 * h) + 1.0),
                               alpha_t * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5), 0.5 * (alpha_t * e2),
                               sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)))
    # sde-dpmsolver: ε form with a doubled drift, noise σ_t √(e^{2h} - 1); diffusers has no third order here
    e = torch.exp(h) - 1.0
    return IntegratorTerms(alpha_t / alpha_s, -2.0 * (sigma_t * e), -2.0 * (sigma_t * (e / h - 1.0)), None,
                           -(sigma_t * e), sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0))


def mask_unreachable(table: torch.Tensor, max_orders: list[int]) -> torch.Tensor:
    """Zero the (step, order) rows no loop can reach: order above the step's maximum, or above 1 + the step
    index (a history that long cannot exist). Those rows may hold inf/NaN from differences at σ = 0."""
    order = torch.arange(1, table.shape[1] + 1)[None, :]
    reachable = (order <= torch.tensor(max_orders)[:, None]) & (order <= torch.arange(table.shape[0])[:, None] + 1)
    return torch.where(reachable[:, :, None], table, torch.zeros((), dtype=table.dtype))


class ExponentialIntegratorMixin(SchedulerMixin):
    """The λ-schedule and device state shared by DPM-Solver (multistep, singlestep), UniPC and DEIS.

    Device state after set_timesteps: `timesteps`, `sigmas` (σ_i, with the final σ appended), `_alpha`, `_sigma`,
    `_lambda` (α_i, σ_i α_i, λ_i), and the scheduler's coefficient tables. During the loop: the step index
    `_step`, the index `_start` the loop began at, and `_history` (solver_order × sample shape, newest first).
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    # ---- construction -----------------------------------------------------------------------------

    def _check_common_config(self, **renames):
        """The family's config checks, after renaming the option values diffusers takes over from sibling
        schedulers (key=(allowed values, {old: new}), e.g. DEIS's solver_type "logrho" -> "midpoint" here);
        the renamed values are written back to the config, as diffusers does."""
        name = type(self).__name__
        self.register_to_config(**{key: accept_deprecated(key, self.config[key], allowed, old_to_new, name)
                                   for key, (allowed, old_to_new) in renames.items()})
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, PREDICTION_TYPES + ("flow_prediction",), name)
        if "timestep_spacing" in cfg:
            check_choice("timestep_spacing", cfg.timestep_spacing, TIMESTEP_SPACINGS, name)
        if "final_sigmas_type" in cfg:
            check_choice("final_sigmas_type", cfg.final_sigmas_type, FINAL_SIGMAS_TYPES, name)
        if not 1 <= cfg.solver_order <= 3:
            raise ValueError(f"{name}: solver_order={cfg.solver_order} is not supported; choose 1, 2 or 3.")
        check_sigma_options(cfg, name)
        for key in ("use_flow_sigmas", "use_dynamic_shifting"):
            if cfg.get(key):
                raise NotImplementedError(f"{name}: config key {key}=True (flow matching) is not implemented in fastdiff.")
        if cfg.prediction_type == "flow_prediction":
            raise NotImplementedError(f"{name}: prediction_type='flow_prediction' is not implemented in fastdiff.")

    def _init_noise_schedule(self):
        """β, ᾱ and the training-time α_t, σ_t, λ_t, σ (diffusers' attributes of the same names)."""
        cfg = self.config
        # a zero-SNR rescale keeps ᾱ_T = 2^-24, not 0 (λ_T = -∞)
        self._set_betas(cfg.get("rescale_betas_zero_snr", False), CLASSIC_BETA_SCHEDULES, sigma_space=True)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        T = cfg.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())
        self._reset_step_state()

    def _reset_step_state(self):
        super()._reset_step_state()
        self._start: torch.Tensor | None = None
        self._history: torch.Tensor | None = None

    # ---- set_timesteps helpers ------------------------------------------------------------------------

    def _check_step_count(self, num_inference_steps):
        check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps, type(self).__name__)

    def _refuse_mu(self, mu):
        if mu is not None and not self.config.use_dynamic_shifting:
            raise ValueError("`mu` is only used with `use_dynamic_shifting=True` (flow matching schedules).")

    def _clipped_last_timestep(self) -> int:
        """Timesteps with λ_t < lambda_min_clipped are never visited (cosine schedule stability)."""
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), self.config.get("lambda_min_clipped", -np.inf))
        return int(self.config.num_train_timesteps - clipped.item())

    def _inference_sigmas(self, timesteps: np.ndarray, n: int, round_karras: bool = True):
        """σ_i at the inference steps; Karras / exponential / beta / Lu spacings re-derive the timesteps from σ."""
        cfg = self.config
        sigmas = vp_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sigmas)
        if cfg.get("use_lu_lambdas"):  # uniform in λ = −log σ between the training ends (Lu et al. 2022)
            log_s = np.flip(log_sigmas.copy())
            high, low = log_s[0].item(), log_s[-1].item()
            sigmas = np.exp(high + np.linspace(0, 1, n) * (low - high))
            timesteps = sigma_to_t(sigmas, log_sigmas)
            return sigmas, timesteps.round() if round_karras else timesteps
        converted = convert_sigmas(cfg, np.flip(sigmas).copy(), n)  # Karras / exponential / beta spacing
        if converted is not None:
            timesteps = sigma_to_t(converted, log_sigmas)
            return converted, timesteps.round() if (cfg.use_karras_sigmas and round_karras) else timesteps
        return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas), timesteps

    def _final_sigma(self) -> float:
        """σ after the last step: 0 ("zero") or the smallest training σ ("sigma_min")."""
        if self.config.final_sigmas_type == "zero":
            return 0.0
        return (((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5).item()

    def _sigma_to_alpha_sigma_t(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """α = 1/√(σ² + 1) and σ_t = σ α of the VP process with noise-to-signal ratio σ."""
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _set_tables(self, timesteps: np.ndarray, sigmas: np.ndarray, device):
        """Host arrays -> device tables; returns the host (CPU float32) α_i, σ_i, λ_i for coefficient building."""
        sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        alpha, sigma = self._sigma_to_alpha_sigma_t(sigmas)
        lam = torch.log(alpha) - torch.log(sigma)  # λ_i = log α_i − log σ_i  (+∞ at a final σ = 0)
        self.sigmas = sigmas.to(device)
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._alpha, self._sigma, self._lambda = alpha.to(device), sigma.to(device), lam.to(device)
        self._reset_step_state()
        return alpha, sigma, lam

    def _store_orders(self, max_order: list[int], device):
        self._max_order = torch.tensor(max_order, dtype=torch.long, device=device)

    # ---- the loop's device state ------------------------------------------------------------------------

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Index of `timestep` in the schedule, on the device: the second match if it occurs twice, the last
        index if it does not occur (diffusers' rule for this family)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        return self._indices_for_timesteps(torch.as_tensor(timestep, device=schedule.device).view(1), schedule)[0]

    @staticmethod
    def _indices_for_timesteps(timesteps: torch.Tensor, schedule: torch.Tensor) -> torch.Tensor:
        """`step_indices_for`, plus this family's rule that a timestep not in the schedule means the last step."""
        found = (schedule[None, :] == timesteps.to(schedule.dtype)[:, None]).any(1)
        return torch.where(found, step_indices_for(timesteps, schedule), torch.full_like(found, len(schedule) - 1,
                                                                                         dtype=torch.long))

    def _init_step_index(self, timestep):
        if self.__dict__.get("_step") is None:
            super()._init_step_index(timestep)
            self._start = self._step.clone()

    def _check_ready(self):
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")

    def _effective_order(self, step: torch.Tensor | None = None) -> torch.Tensor:
        """min(max order of this step, 1 + steps taken): diffusers' warm-up via `lower_order_nums`, on the device."""
        step = self._step if step is None else step
        return torch.minimum(self._max_order.index_select(0, step.view(1)), step.view(1) - self._start + 1).clamp(min=1)

    def _row(self, table: torch.Tensor, order: torch.Tensor, step: torch.Tensor | None = None) -> torch.Tensor:
        """table[step, order - 1] gathered on the device (table: steps × orders × coefficients)."""
        step = self._step if step is None else step
        flat = table.reshape(-1, table.shape[-1])
        return flat.index_select(0, (step.view(1) * table.shape[1] + order.view(1) - 1)).view(-1)

    def _push_history(self, m: torch.Tensor):
        """m_2 <- m_1 <- m_0 <- m: shift the fixed-size device history (newest first)."""
        if self._history is None:
            self._history = m.new_zeros((self.config.solver_order, *m.shape))
        if self._history.shape[0] > 1:
            self._history[1:] = self._history[:-1].clone()
        self._history[0] = m

    @staticmethod
    def _combine(x_coef, x, m_coefs, history, z_coef=None, z=None) -> torch.Tensor:
        """c_x · x + Σ_j c_j · m_j (+ c_z · z): the whole update as one linear combination."""
        out = x_coef * x
        for j in range(history.shape[0]):
            out = out + m_coefs[j] * history[j]
        if z is not None:
            out = out + z_coef * z
        return out

    @property
    def model_outputs(self) -> list[torch.Tensor] | None:
        """diffusers' list view of the history, oldest first (slots not yet filled are zeros)."""
        return None if self._history is None else [self._history[j] for j in reversed(range(self._history.shape[0]))]

    @property
    def lower_order_nums(self):
        """Steps taken since the loop began, capped at solver_order (a device tensor)."""
        if self.__dict__.get("_step") is None:
            return 0
        return (self._step - self._start).clamp(max=self.config.solver_order)

    # ---- model output conversion ---------------------------------------------------------------------------

    @staticmethod
    def _sample_arg(sample, args):
        """diffusers' convert_model_output(model_output, [timestep, sample]) with `sample` also by keyword."""
        if sample is None:
            if len(args) > 1:
                return args[1]
            raise ValueError("missing `sample` as a required keyword argument")
        return sample

    def _predict_x0(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x̂_0 from the model's parameterisation at the current step (x = α x_0 + σ ε, v = α ε − σ x_0)."""
        kind = self.config.prediction_type
        if kind == "sample":
            return model_output
        alpha, sigma = self._at(self._alpha), self._at(self._sigma)
        if kind == "epsilon":
            return (sample - sigma * model_output) / alpha
        return alpha * sample - sigma * model_output

    def _predict_epsilon(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """ε̂ from the model's parameterisation at the current step."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        alpha, sigma = self._at(self._alpha), self._at(self._sigma)
        if kind == "sample":
            return (sample - alpha * model_output) / sigma
        return alpha * model_output + sigma * sample

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Stage 2 (separate from the linear update): dynamic thresholding of x̂_0 (Saharia et al. 2022)."""
        return threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    # ---- the fused step (fused.py): shared by the family -------------------------------------------------

    def _fused_history(self, sample, model_output) -> torch.Tensor:
        """The device history step() keeps (zeros before the first step), in the converted output's dtype."""
        if self._history is None:
            dtype = torch.promote_types(sample.dtype, model_output.dtype)
            self._history = sample.new_zeros((self.config.solver_order, *sample.shape), dtype=dtype)
        return self._history

    def _fused_prediction(self, target: str):
        """(PX, PM) per step: x̂_0 (target "x0", `_predict_x0`) or ε̂ ("eps", `_predict_epsilon`)."""
        n = len(self.timesteps)
        return prediction_weights(self.config.prediction_type, self._alpha[:n], self._sigma[:n], target)

    def _fused_order_rows(self, table: torch.Tensor, w: int) -> torch.Tensor:
        """table[i, order − 1] for every step i, order = min(max order of i, w + 1): the rows after w steps."""
        n = table.shape[0]
        order = torch.clamp(self._max_order, max=w + 1)
        return f64(table[torch.arange(n, device=table.device), order - 1])

    # ---- the remaining public protocol ------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = α_i x_0 + σ_i α_i ε at each timestep's step index (or the begin / current index when set)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps, device=original_samples.device).flatten()
        if self.begin_index is None:
            index = self._indices_for_timesteps(timesteps, self.timesteps.to(original_samples.device))
        else:
            start = self.step_index if self.step_index is not None else torch.tensor(self.begin_index)
            index = start.to(original_samples.device).view(1).expand(timesteps.shape[0])
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(broadcast_to_sample(sigmas.index_select(0, index), original_samples))
        return alpha_t * original_samples + sigma_t * noise


# ---- DPM-Solver multistep ---------------------------------------------------------------------------


ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def accept_deprecated(name: str, value: str, allowed, aliases, owner: str) -> str:
    """diffusers' renames of solver options from sibling schedulers ("deis" -> "dpmsolver++", ...)."""
    if value in allowed:
        return value
    if value in aliases:
        return aliases[value]
    check_choice(name, value, list(allowed) + list(aliases), owner)


def check_final_sigmas(algorithm_type: str, final_sigmas_type: str):
    """A final σ = 0 needs the data-prediction form (λ = +∞ there); diffusers checks the name as given, so the
    deprecated alias "deis" is refused too."""
    if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
        raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                         f"{algorithm_type}. Please choose `sigma_min` instead.")


def check_dpm_solver_config(scheduler: ExponentialIntegratorMixin, algorithm_types):
    """DPM-Solver multistep and singlestep: DEIS's and UniPC's option names renamed, the family's checks, and a
    final σ = 0 only for the data-prediction form (judged on algorithm_type as given, as diffusers)."""
    given = scheduler.config.algorithm_type
    scheduler._check_common_config(algorithm_type=(algorithm_types, {"deis": "dpmsolver++"}),
                                   solver_type=(SOLVER_TYPES, dict.fromkeys(("logrho", "bh1", "bh2"), "midpoint")))
    check_final_sigmas(given, scheduler.config.final_sigmas_type)


class DPMSolverMultistepScheduler(ExponentialIntegratorMixin):
    """DPM-Solver / DPM-Solver++ multistep sampling (orders 1-3, midpoint or Heun second order, SDE variants).

    Example:
        >>> scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Literal["learned", "learned_range"] | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ):
        check_dpm_solver_config(self, ALGORITHM_TYPES)
        if self.config.algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise ValueError(f"{type(self).__name__}: solver_order=3 is not defined for algorithm_type='sde-dpmsolver' "
                             "(diffusers has no third-order SDE-DPM-Solver update); use solver_order 1 or 2.")
        self._init_noise_schedule()

    # ---- schedule -------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int = None, device: str | torch.device = None,
                      mu: float | None = None, timesteps: list[int] | None = None):
        """Timesteps by `timestep_spacing` (or custom), σ_i by the configured spacing, and the step coefficients."""
        cfg = self.config
        self._refuse_mu(mu)
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            for key in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"):
                if cfg[key]:
                    raise ValueError(f"Cannot use `timesteps` with `config.{key} = True`.")
            timesteps = np.array(timesteps).astype(np.int64)
            if timesteps.ndim != 1 or len(timesteps) == 0:
                raise ValueError("`timesteps` must be a non-empty list of integers.")
        else:
            self._check_step_count(num_inference_steps)
            timesteps = dpm_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                                      cfg.steps_offset, self._clipped_last_timestep())
        sigmas, timesteps = self._inference_sigmas(timesteps, num_inference_steps,
                                                   round_karras=cfg.beta_schedule != "squaredcos_cap_v2")
        sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        alpha, sigma, lam = self._set_tables(timesteps, sigmas, device)
        max_orders = self._max_orders(len(timesteps))
        self._store_orders(max_orders, device)
        self._coefficients = mask_unreachable(self._coefficient_table(alpha, sigma, lam), max_orders).to(device)

    def _max_orders(self, n: int) -> list[int]:
        """Highest order each step may use: solver_order, lowered at the end (diffusers' lower_order_final,
        euler_at_final, and first order into σ = 0)."""
        cfg = self.config
        short = cfg.lower_order_final and n < 15
        last_first_order = cfg.euler_at_final or short or cfg.final_sigmas_type == "zero"
        orders = [cfg.solver_order] * n
        if n >= 2 and short:
            orders[-2] = min(orders[-2], 2)
        if last_first_order:
            orders[-1] = 1
        return orders

    def _coefficient_table(self, alpha, sigma, lam) -> torch.Tensor:
        """(steps, 3 orders, 5) weights (c_x, c_0, c_1, c_2, c_z) of x, m_0, m_1, m_2, z for a step i -> i+1."""
        n = len(alpha) - 1
        i = torch.arange(n)
        s1, s2 = (i - 1).clamp(min=0), (i - 2).clamp(min=0)
        h = lam[i + 1] - lam[i]  # h = λ_t − λ_s0
        r0 = (lam[i] - lam[s1]) / h  # r_0 = h_0 / h,  h_0 = λ_s0 − λ_s1
        r1 = (lam[s1] - lam[s2]) / h  # r_1 = h_1 / h,  h_1 = λ_s1 − λ_s2
        w = integrator_terms(self.config.algorithm_type, alpha[i + 1], sigma[i + 1], alpha[i], sigma[i], h)
        e = torch.eye(3)  # weights over (m_0, m_1, m_2)
        D0 = e[0].expand(n, 3)
        D1_0 = (e[0] - e[1]) / r0[:, None]  # (m_0 − m_1) / r_0
        D1_1 = (e[1] - e[2]) / r1[:, None]  # (m_1 − m_2) / r_1
        second = w.mid1 if self.config.solver_type == "midpoint" else w.phi1
        m_weights = [
            w.phi0[:, None] * D0,  # first order (DDIM):  x_t = c_x x_s + φ_0 D_0
            w.phi0[:, None] * D0 + second[:, None] * D1_0,  # second order: + φ_1 D_1 (midpoint: ½ φ_0-type weight)
        ]
        if w.phi2 is not None:  # third order: D_1 = D1_0 + r_0/(r_0+r_1) (D1_0 − D1_1), D_2 = (D1_0 − D1_1)/(r_0+r_1)
            k = (r0 / (r0 + r1))[:, None]
            D1 = D1_0 + k * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)[:, None]
            m_weights.append(w.phi0[:, None] * D0 + w.phi1[:, None] * D1 + w.phi2[:, None] * D2)
        else:
            m_weights.append(torch.zeros(n, 3))
        rows = [torch.cat([w.cx[:, None], m, w.noise[:, None]], dim=1) for m in m_weights]
        return torch.stack(rows, dim=1)

    # ---- the update -----------------------------------------------------------------------------------

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
        """Model output -> the solver's variable at the current step: x̂_0 ("++") or ε̂ (noise-prediction form).
        Dynamic thresholding of x̂_0 is a separate stage."""
        sample = self._sample_arg(sample, args)
        if self.config.variance_type in ("learned", "learned_range") and self.config.prediction_type == "epsilon":
            model_output = model_output[:, :3]  # the learned variance channels are dropped (diffusers: 3 channels)
        if self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            x0 = self._predict_x0(model_output, sample)
            return self._threshold(x0) if self.config.thresholding else x0
        eps = self._predict_epsilon(model_output, sample)
        if self.config.thresholding:  # threshold x̂_0 = (x − σ ε̂)/α, then map back to ε̂
            alpha, sigma = self._at(self._alpha), self._at(self._sigma)
            x0 = self._threshold((sample - sigma * eps) / alpha)
            eps = (sample - alpha * x0) / sigma
        return eps

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """x_i -> x_{i+1}: convert the output, push it onto the history, apply this step's coefficient row."""
        self._check_ready()
        self._init_step_index(timestep)
        m = self.convert_model_output(model_output, sample=sample)
        self._push_history(m)
        noise = self._noise(model_output, generator, variance_noise)
        row = self._row(self._coefficients, self._effective_order())
        prev = self._combine(row[0], sample.to(torch.float32), row[1:4], self._history, row[4], noise)
        self._advance()
        prev = prev.to(model_output.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _noise(self, model_output, generator, variance_noise):
        """z for the SDE variants: the caller's pre-drawn noise (graph replays) or a draw from `generator`."""
        if not self.config.algorithm_type.startswith("sde"):
            return None
        if variance_noise is not None:
            return variance_noise.to(device=model_output.device, dtype=torch.float32)
        return randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=torch.float32)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Not with dynamic thresholding (a quantile) or learned-variance channels (sliced off the output)."""
        cfg = self.config
        learned = cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon"
        return not (cfg.thresholding or learned) and set(step_kwargs) <= {"generator", "variance_noise"}

    def _fused_table(self) -> torch.Tensor:
        """Row (i, w): D = x̂_0 (or ε̂) pushed onto the history; x' = c_x x + c_0 D + c_1 H_0 + c_2 H_1 + c_z z with
        the coefficients of the order step() uses after w steps."""
        def build():
            target = "x0" if self.config.algorithm_type.endswith("dpmsolver++") else "eps"
            w_x, w_m = self._fused_prediction(target)
            per_warmup = []
            for w in range(self.config.solver_order):
                c = self._fused_order_rows(self._coefficients, w)  # (c_x, c_0, c_1, c_2, c_z)
                per_warmup.append(rows(len(c), c.device, PX=w_x, PM=w_m, DP=1, XX=c[:, 0], XD=c[:, 1],
                                       XH=[c[:, 2], c[:, 3]], XZ=c[:, 4], PUSH=1))
            return fused_table(*per_warmup)

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        self._check_ready()
        self._init_step_index(timestep)
        history = self._fused_history(sample, model_output)
        noise = self._noise(sample, generator, variance_noise)  # the guided output's shape, as step() draws it
        return FusedLaunch(self._fused_table(), self._step, self._start, noise=noise, history=history)

    # diffusers' public per-order updates, at the current step (model_output_list is oldest first)

    def _apply_order(self, order: int, model_output_list, sample, noise):
        if sample is None:
            raise ValueError("missing `sample` as a required keyword argument")
        row = self._row(self._coefficients, torch.tensor(order, device=self._coefficients.device))
        newest_first = torch.stack(list(reversed(model_output_list))[:order])
        return self._combine(row[0], sample, row[1:4], newest_first, row[4], noise)

    def dpm_solver_first_order_update(self, model_output, *args, sample=None, noise=None, **kwargs):
        return self._apply_order(1, [model_output], sample, noise)

    def multistep_dpm_solver_second_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        return self._apply_order(2, model_output_list, sample, noise)

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        return self._apply_order(3, model_output_list, sample, noise)
