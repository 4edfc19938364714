"""What every scheduler shares: the mixins, noise schedules, timestep spacing, and the device step index.

The contract (see DESIGN.md, "Schedulers"): `set_timesteps()` computes everything the loop needs,
once, on the scheduler's device. `step()`, `scale_model_input()` and `add_noise()` then never force
a host sync. Two kinds of state make that possible:

* the **device step index** (`self._step`, an int64 0-dim tensor) says where in the schedule the
  loop is. It is found from the first timestep on the device (diffusers' rule, without
  `.nonzero().item()`) or set by `set_begin_index`, and advanced in place after each step, so a
  replayed CUDA graph advances it too. Coefficients are gathered from device tables with it.
* the **host step counter** (`self._host_step`) only decides host-side things diffusers decides
  per step, such as whether this step draws noise from the user's generator. It never indexes a
  device table. (A graph replay draws its noise ahead of time, in the same order.)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from ..configuration import ConfigMixin
from ..outputs import BaseOutput

SCHEDULER_CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
CLASSIC_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


class KarrasDiffusionSchedulers(Enum):
    """The schedulers Stable Diffusion pipelines accept, interchangeable through from_config."""

    DDIMScheduler = 1
    DDPMScheduler = 2
    PNDMScheduler = 3
    LMSDiscreteScheduler = 4
    EulerDiscreteScheduler = 5
    HeunDiscreteScheduler = 6
    EulerAncestralDiscreteScheduler = 7
    DPMSolverMultistepScheduler = 8
    DPMSolverSinglestepScheduler = 9
    KDPM2DiscreteScheduler = 10
    KDPM2AncestralDiscreteScheduler = 11
    DEISMultistepScheduler = 12
    UniPCMultistepScheduler = 13
    DPMSolverSDEScheduler = 14
    EDMEulerScheduler = 15


KARRAS_COMPATIBLES = [e.name for e in KarrasDiffusionSchedulers]


@dataclass
class SchedulerOutput(BaseOutput):
    """prev_sample: x_{t-1}, the input of the next model call."""

    prev_sample: torch.Tensor


class SchedulerMixin(ConfigMixin):
    """Base class of schedulers: config I/O, compatibles, and the device step index."""

    config_name = SCHEDULER_CONFIG_NAME
    _compatibles: list[str] = []
    has_compatibles = True
    order = 1

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None,
                        subfolder: str | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Load `scheduler_config.json` from a folder or hub id (`subfolder="scheduler"` in pipelines)."""
        config, kwargs = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder,
                                         return_unused_kwargs=True, **kwargs)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        self.save_config(save_directory, push_to_hub=push_to_hub)

    @property
    def compatibles(self) -> list[type]:
        return self._get_compatibles()

    # ---- step index -------------------------------------------------------------------------

    def _reset_step_state(self):
        """Called by set_timesteps: the next step() starts the loop again."""
        self._step: torch.Tensor | None = None
        self._host_step = 0
        self._begin_index: int | None = None
        self._fused_tables: dict = {}  # fused-step tables of this schedule (fused.py), by step options

    @property
    def step_index(self) -> torch.Tensor | None:
        """Index of the current step in `timesteps`, as a device tensor (None before the first step)."""
        return self.__dict__.get("_step")

    @property
    def begin_index(self) -> int | None:
        return self.__dict__.get("_begin_index")

    def set_begin_index(self, begin_index: int = 0):
        """Start the loop at `timesteps[begin_index]` (image-to-image); call before the first step."""
        self._begin_index = int(begin_index)
        self._host_step = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Index of `timestep` in the schedule, computed on the device (no host sync).

        diffusers' rule: if the timestep occurs more than once, the *second* occurrence is taken, so
        a loop starting mid-schedule (image-to-image) does not skip a sigma.
        """
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        match = schedule == torch.as_tensor(timestep, device=schedule.device).to(schedule.dtype)
        occurrence = 1 + (match.sum() > 1).long()
        hit = match & (match.long().cumsum(0) == occurrence)
        return hit.long().argmax()

    def _init_step_index(self, timestep):
        if self.__dict__.get("_step") is not None:
            return
        if self.begin_index is None:
            self._step = self.index_for_timestep(timestep).clone()
        else:
            self._step = torch.full((), self.begin_index, dtype=torch.long, device=self.timesteps.device)

    def _advance(self):
        """End of a step: the device index and the host counter move on together."""
        self._step.add_(1)
        self._host_step += 1

    def _at(self, table: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """table[step_index + offset]: a 0-dim tensor, or a row of a 2-D table (gathered on the device, no sync)."""
        index = self._step if offset == 0 else self._step + offset
        return table.index_select(0, index.view(1)).squeeze(0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _set_betas(self, rescale_betas_zero_snr: bool = False, allowed=BETA_SCHEDULES, sigma_space: bool = False):
        """β_t from the config (`make_betas`), α_t = 1 - β_t and ᾱ_t = Π_{s≤t} α_s.

        After a zero-SNR rescale ᾱ_T = 0, so σ_T = √((1-ᾱ_T)/ᾱ_T) is infinite: schedulers that work in σ
        (`sigma_space`) set ᾱ_T = 2^-24 instead, as diffusers does.
        """
        cfg = self.config
        self.betas = make_betas(type(self).__name__, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end,
                                cfg.beta_schedule, cfg.trained_betas, rescale_betas_zero_snr, allowed)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr and sigma_space:
            self.alphas_cumprod[-1] = 2**-24

    # ---- the fused step (fused.py) ------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Can `fused_step` replace guidance + step() for this config and these step() options?"""
        return False

    def fused_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, guidance_scale=None,
                   **step_kwargs) -> tuple:
        """step() with classifier-free guidance folded in, as one `ops.scheduler_step` launch.

        With `guidance_scale` (a float or a 1-element device tensor), `model_output` is the CFG batch
        [uncond; cond] and the update uses uncond + g (cond − uncond). Same arguments, noise draws and state
        as step(); returns step()'s tuple: (prev_sample,) — LCM: (prev_sample, denoised).

        Example:
            >>> g = torch.tensor(7.5, device=latents.device)
            >>> latents = scheduler.fused_step(unet(torch.cat([latents] * 2), t).sample, t, latents, g)[0]
        """
        from .. import ops

        if not self.supports_fused_step(**step_kwargs):
            raise ValueError(f"{type(self).__name__} has no fused step for this config and {sorted(step_kwargs)}")
        batch = 2 * sample.shape[0] if guidance_scale is not None else sample.shape[0]
        if tuple(model_output.shape) != (batch, *sample.shape[1:]):
            what = "the CFG batch [uncond; cond] for" if guidance_scale is not None else "shaped like"
            raise ValueError(f"fused_step: model_output {tuple(model_output.shape)} must be {what} the sample "
                             f"{tuple(sample.shape)}")
        launch = self._fused_launch(model_output, timestep, sample, **step_kwargs)
        if guidance_scale is not None and not isinstance(guidance_scale, torch.Tensor):
            guidance_scale = torch.tensor(float(guidance_scale), device=sample.device)
        prev = ops.scheduler_step(sample, model_output, launch.table, launch.step, guidance=guidance_scale,
                                  start=launch.start, noise=launch.noise, history=launch.history, stash=launch.stash,
                                  accumulator=launch.accumulator, denoised=launch.denoised, clamp=launch.clamp,
                                  read_oldest=launch.read_oldest)
        self._fused_finish()
        return (prev,) if launch.denoised is None else (prev, launch.denoised)

    def _fused_finish(self):
        """After the launch: advance the step index and the host counter, as step() does."""
        self._advance()

    def _fused_table_cached(self, key, build):
        """The fused table for `key` (step options), built once per set_timesteps."""
        tables = self.__dict__.setdefault("_fused_tables", {})
        if key not in tables:
            tables[key] = build()
        return tables[key]


# ---- noise schedules (betas) -------------------------------------------------------------------


def check_choice(name: str, value, allowed, owner: str):
    """A config value outside its allowed set is an error naming the key, the value and the choices."""
    if value not in allowed:
        raise ValueError(f"{owner}: {name}={value!r} is not supported; choose one of {list(allowed)}.")


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999,
                        alpha_transform_type: str = "cosine") -> torch.Tensor:
    """β_t = min(1 - ᾱ(t+1/T) / ᾱ(t/T), max_beta) for a continuous ᾱ (Nichol & Dhariwal 2021)."""
    def cosine(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    def exp(t):
        return math.exp(t * -12.0)

    def laplace(t):
        lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
        snr = math.exp(lmb)
        return math.sqrt(snr / (1 + snr))

    transforms = {"cosine": cosine, "exp": exp, "laplace": laplace}
    check_choice("alpha_transform_type", alpha_transform_type, transforms, "betas_for_alpha_bar")
    alpha_bar = transforms[alpha_transform_type]
    T = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so the last step has zero SNR (Lin et al. 2023, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_betas(owner: str, num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
               trained_betas=None, rescale_betas_zero_snr: bool = False, allowed=BETA_SCHEDULES) -> torch.Tensor:
    """β_1..β_T in float32, computed exactly as diffusers computes them (parity starts here).

    `allowed` narrows the schedules to those the scheduler accepts in diffusers (most accept only
    CLASSIC_BETA_SCHEDULES; Heun also takes "exp").
    """
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    else:
        check_choice("beta_schedule", beta_schedule, allowed, owner)
        T = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":  # SD: linear in √β
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
        else:
            transform = {"squaredcos_cap_v2": "cosine", "exp": "exp"}.get(beta_schedule, "laplace")
            betas = betas_for_alpha_bar(T, alpha_transform_type=transform)
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int,
                     steps_offset: int = 0) -> np.ndarray:
    """Integer timesteps, descending, for DDPM/DDIM-style schedulers (Lin et al. 2023, Table 2)."""
    T, n = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = T // n
        return (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose one of {list(TIMESTEP_SPACINGS)}.")


def check_num_inference_steps(num_inference_steps, num_train_timesteps: int, owner: str):
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"{owner}: num_inference_steps must be an int, got {num_inference_steps!r}.")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"{owner}: num_inference_steps={num_inference_steps} must be between 1 and num_train_timesteps="
            f"{num_train_timesteps}."
        )


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022): clamp x̂_0 to ±s, s = the `ratio` quantile of |x̂_0|
    per sample (at least 1, at most `max_value`), then divide by s."""
    dtype = sample.dtype
    batch, *rest = sample.shape
    flat = sample.float().reshape(batch, -1) if dtype not in (torch.float32, torch.float64) else sample.reshape(batch, -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(batch, *rest).to(dtype)


def broadcast_to_sample(values: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample values -> (B, 1, 1, ...) to multiply a (B, ...) sample."""
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (sample.ndim - 1)))


def add_noise_with_alphas(alphas_cumprod: torch.Tensor, original: torch.Tensor, noise: torch.Tensor,
                          timesteps: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I): x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
    ab = alphas_cumprod.to(device=original.device, dtype=original.dtype)
    ab_t = ab.index_select(0, torch.as_tensor(timesteps, device=original.device).long().flatten())
    return broadcast_to_sample(ab_t**0.5, original) * original + broadcast_to_sample((1 - ab_t) ** 0.5, original) * noise


# ---- sigma schedules (σ = √((1-ᾱ)/ᾱ), the noise-to-signal ratio of the VP process) ------------------
# Host-side NumPy, computed exactly as diffusers computes them; set_timesteps moves the result to the device.


def vp_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """σ_t = √((1 - ᾱ_t) / ᾱ_t) for every training timestep (float32, as diffusers)."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy().copy()  # np.array(tensor) warns in NumPy 2


def sigma_range(config, in_sigmas: np.ndarray) -> tuple[float, float]:
    """(σ_min, σ_max): `config.sigma_min/sigma_max` if the config has them and they are set (diffusers reads
    them even when they are hidden keys of another scheduler's config), else the ends of `in_sigmas`."""
    sigma_min, sigma_max = config.get("sigma_min"), config.get("sigma_max")
    sigma_min = sigma_min if sigma_min is not None else in_sigmas[-1].item()
    sigma_max = sigma_max if sigma_max is not None else in_sigmas[0].item()
    return sigma_min, sigma_max


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(n-1) · (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ."""
    ramp = np.linspace(0, 1, n)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """log σ evenly spaced from log σ_max to log σ_min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024 ("Beta Sampling is All You Need"): σ_i = σ_min + F⁻¹_Beta(α,β)(1 - i/(n-1)) (σ_max - σ_min).
    F⁻¹ is `beta_ppf` below (to ~1e-15 of scipy's), so scipy is not needed at run time."""
    return sigma_min + beta_ppf(1 - np.linspace(0, 1, n), alpha, beta) * (sigma_max - sigma_min)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each σ: linear interpolation of log σ between the two neighbouring
    training sigmas (`log_sigmas` ascending in t)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


# ---- custom schedules ------------------------------------------------------------------------------


class UnsupportedScheduleError(ValueError, TypeError):
    """A custom `timesteps=` / `sigmas=` given to a set_timesteps that does not take it.

    A ValueError with diffusers' `retrieve_timesteps` wording; also a TypeError, which is what
    diffusers raises when the keyword reaches its set_timesteps directly.
    """


def refuse_custom_schedule(owner: str, **given):
    """Raise for any custom schedule keyword in `given` that is not None (set_timesteps' **kwargs).

    Taking them as **kwargs keeps `"timesteps" in inspect.signature(set_timesteps).parameters`
    False, which is how pipelines decide whether a scheduler takes custom schedules.
    """
    for name, value in given.items():
        if name not in ("timesteps", "sigmas"):
            raise TypeError(f"{owner}.set_timesteps() got an unexpected keyword argument {name!r}")
        if value is not None:
            kind = "timestep" if name == "timesteps" else "sigmas"
            raise UnsupportedScheduleError(
                f"The current scheduler class {owner}'s `set_timesteps` does not support custom {kind} schedules "
                f"(`{name}=`). Please check whether you are using the correct scheduler."
            )


# ---- σ schedules (Karras et al. 2022 notation: x_t = x_0 + σ_t ε) ---------------------------------------


def sigma_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int,
                    steps_offset: int = 0) -> np.ndarray:
    """Float32 timesteps, descending, as the σ-schedulers (Euler, Heun, LMS, KDPM2) space them."""
    T, n = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.float32) + np.float32(steps_offset)
    if spacing == "trailing":
        return np.arange(T, 0, -T / n).round().astype(np.float32) - np.float32(1)
    raise ValueError(f"timestep_spacing={spacing!r} is not supported; choose one of {list(TIMESTEP_SPACINGS)}.")


def _betainc_cf(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Continued fraction of the incomplete beta function (modified Lentz), elementwise; converges fast
    for x < (a+1)/(a+b+2)."""
    tiny = 1e-300

    def nonzero(v):
        return np.where(np.abs(v) < tiny, tiny, v)

    c, d = np.ones_like(x), 1.0 / nonzero(1.0 - (a + b) * x / (a + 1))
    h = d.copy()
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / nonzero(1.0 + num * d)
            c = nonzero(1.0 + num / c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 4e-16):
            break
    return h


def betainc(a: float, b: float, x) -> np.ndarray:
    """Regularised incomplete beta I_x(a, b) = ∫_0^x u^{a-1} (1-u)^{b-1} du / B(a, b), elementwise in x."""
    x = np.asarray(x, dtype=np.float64)
    inner = np.clip(x, 1e-300, 1 - 1e-16)
    swap = inner >= (a + 1) / (a + b + 2)  # use I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction is slow
    aa, bb, xx = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, 1 - inner, inner)
    log_front = aa * np.log(xx) + bb * np.log1p(-xx) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    part = np.exp(log_front) * _betainc_cf(aa, bb, xx) / aa
    value = np.where(swap, 1.0 - part, part)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, value))


def beta_ppf(q, a: float, b: float):
    """Inverse of I_x(a, b) (elementwise in q): Newton steps on the density inside a shrinking bisection
    bracket, each entry until it moves by less than 2e-15 relative (~1e-15 of scipy.stats.beta.ppf)."""
    q = np.asarray(q, dtype=np.float64)
    flat_q = q.reshape(-1)
    x, lo, hi = np.full_like(flat_q, 0.5), np.zeros_like(flat_q), np.ones_like(flat_q)
    active = (flat_q > 0) & (flat_q < 1)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    for _ in range(200):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xa = x[idx]
        err = betainc(a, b, xa) - flat_q[idx]
        hi[idx], lo[idx] = np.where(err > 0, xa, hi[idx]), np.where(err > 0, lo[idx], xa)
        density = np.exp(log_norm + (a - 1) * np.log(xa) + (b - 1) * np.log1p(-xa))
        newton = xa - err / density
        x[idx] = np.where((lo[idx] < newton) & (newton < hi[idx]), newton, 0.5 * (lo[idx] + hi[idx]))
        active[idx] = (np.abs(x[idx] - xa) > 2e-15 * xa) & (lo[idx] < hi[idx])
    x = np.where(flat_q <= 0, 0.0, np.where(flat_q >= 1, 1.0, x)).reshape(q.shape)
    return float(x) if x.ndim == 0 else x


SIGMA_SPACING_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def check_sigma_options(config, owner: str):
    """At most one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas."""
    if sum(bool(config.get(k)) for k in SIGMA_SPACING_KEYS) > 1:
        raise ValueError(
            f"{owner}: only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` can be used."
        )


def convert_sigmas(config, in_sigmas: np.ndarray, num_inference_steps: int) -> np.ndarray | None:
    """Re-space σ by the config's use_*_sigmas option (None when none is set).

    σ_min / σ_max come from the config when it has them (also as hidden keys carried over from
    another scheduler's config, as in diffusers), else from the ends of `in_sigmas`.
    """
    sigma_min, sigma_max = sigma_range(config, in_sigmas)
    if config.get("use_karras_sigmas"):
        return karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    if config.get("use_exponential_sigmas"):
        return exponential_sigmas(sigma_min, sigma_max, num_inference_steps)
    if config.get("use_beta_sigmas"):
        return beta_sigmas(sigma_min, sigma_max, num_inference_steps)
    return None


def predict_x0_from_sigma(prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor,
                          sigma: torch.Tensor) -> torch.Tensor:
    """x̂_0 in the σ parameterisation x = x_0 + σ ε (the model sees x / √(σ²+1)).

    epsilon: x̂_0 = x - σ ε̂;  v_prediction: x̂_0 = -σ/√(σ²+1) v̂ + x/(σ²+1);  sample: x̂_0 = model output.
    """
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    return model_output


def step_indices_for(timesteps: torch.Tensor, schedule: torch.Tensor) -> torch.Tensor:
    """index_for_timestep for a batch of timesteps, on the device (second-occurrence rule per entry)."""
    t = torch.as_tensor(timesteps, device=schedule.device).to(schedule.dtype).flatten()
    match = schedule.unsqueeze(0) == t.unsqueeze(1)
    occurrence = 1 + (match.sum(1, keepdim=True) > 1).long()
    hit = match & (match.long().cumsum(1) == occurrence)
    return hit.long().argmax(1)


class AlphaBarSchedulerMixin(SchedulerMixin):
    """Schedulers that index ᾱ by training timestep (DDPM, DDIM, LCM): the x̂_0 clip stage and the
    training-time helpers."""

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        """x̂_0 dynamically thresholded (`thresholding`) or clamped to ±clip_sample_range (`clip_sample`)."""
        cfg = self.config
        if cfg.thresholding:
            return threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return add_noise_with_alphas(self.alphas_cumprod, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022)."""
        ab = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
        ab_t = ab.index_select(0, torch.as_tensor(timesteps, device=sample.device).long().flatten())
        return broadcast_to_sample(ab_t**0.5, sample) * noise - broadcast_to_sample((1 - ab_t) ** 0.5, sample) * sample


class SigmaSchedulerMixin(SchedulerMixin):
    """The k-diffusion samplers in σ (Euler, Euler ancestral, Heun, LMS, KDPM2, KDPM2 ancestral).

    x = x_0 + σ ε, and the model sees x / √(σ² + 1). `sigmas` is the device table of σ per call.
    """

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """σ_max (x_T ~ N(0, σ_max²)); √(σ_max² + 1) for "leading" spacing, as diffusers."""
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return self.sigmas.max()
        return (self.sigmas.max() ** 2 + 1) ** 0.5

    @property
    def _input_sigmas(self) -> torch.Tensor:
        """The σ each call's model input is scaled by (per entry of `timesteps`)."""
        return self.sigmas

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / √(σ² + 1) at the call's σ: the model was trained on unit-variance inputs."""
        self._init_step_index(timestep)
        sigma = self._at(self._input_sigmas)
        self.is_scale_input_called = True  # Euler, Euler ancestral and LMS warn in step() without it
        return sample / (sigma**2 + 1) ** 0.5

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x_0 + σ_t ε, σ_t found as diffusers finds it (by timestep, else the step or begin index)."""
        x0, device = original_samples, original_samples.device
        sigmas = self.sigmas.to(device=device, dtype=x0.dtype)
        batch = torch.as_tensor(timesteps).flatten().shape[0]
        if self.begin_index is None:
            index = step_indices_for(timesteps, self.timesteps.to(device))
        elif self.step_index is not None:
            index = self.step_index.to(device).expand(batch)
        else:
            index = torch.full((batch,), self.begin_index, dtype=torch.long, device=device)
        return x0 + noise * broadcast_to_sample(sigmas.index_select(0, index), x0)


def interpolated_sigmas(config, alphas_cumprod: torch.Tensor, num_inference_steps: int,
                        num_train_timesteps: int | None = None, timesteps=None):
    """(timesteps, σ, log σ_train) of a σ-scheduler's loop, as diffusers' Euler/Heun/LMS/KDPM2 build them.

    σ at each timestep is interpolated linearly in t from the train schedule; a use_*_sigmas option
    then re-spaces σ and maps each σ back to a fractional timestep (sigma_to_t). The final σ = 0 is
    not appended here.
    """
    T = num_train_timesteps or config.num_train_timesteps
    if timesteps is None:
        timesteps = sigma_timesteps(config.timestep_spacing, T, num_inference_steps, config.steps_offset)
    sigmas_train = vp_sigmas(alphas_cumprod)
    log_sigmas = np.log(sigmas_train)
    sigmas = np.interp(timesteps, np.arange(0, len(sigmas_train)), sigmas_train)
    converted = convert_sigmas(config, sigmas, num_inference_steps)
    if converted is not None:
        sigmas, timesteps = converted, sigma_to_t(converted, log_sigmas)
    return timesteps, sigmas, log_sigmas
