"""What every scheduler shares: the mixin, noise schedules, timestep spacing, and the device step index.

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
        """table[step_index + offset] as a 0-dim tensor (gathered on the device, no host sync)."""
        index = self._step if offset == 0 else self._step + offset
        return table.index_select(0, index.view(1)).view(())

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ---- noise schedules (betas) -------------------------------------------------------------------

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


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
               trained_betas=None, rescale_betas_zero_snr: bool = False) -> torch.Tensor:
    """β_1..β_T in float32, computed exactly as diffusers computes them (parity starts here)."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    else:
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES, owner)
        T = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":  # SD: linear in √β
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
        else:
            transform = "cosine" if beta_schedule == "squaredcos_cap_v2" else "laplace"
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
    return np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)


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
    Needs scipy (as diffusers does) for the Beta quantile function."""
    try:
        import scipy.stats
    except ImportError as err:  # pragma: no cover - scipy is installed wherever beta sigmas are tested
        raise ImportError("Make sure to install scipy if you want to use beta sigmas.") from err
    ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each σ: linear interpolation of log σ between the two neighbouring
    training sigmas (`log_sigmas` ascending in t)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)
