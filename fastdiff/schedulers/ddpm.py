"""DDPM: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, 2020), ancestral sampling.

Symbols: ᾱ_t = Π α_s (alphas_cumprod), β_t = 1 - ᾱ_t / ᾱ_{t'} for the previous timestep t' of the
(possibly skipping) schedule, x̂_0 the predicted clean sample. One step samples the posterior

    q(x_{t'} | x_t, x̂_0) = N(μ̃, σ²I),  μ̃ = √ᾱ_{t'} β_t / (1-ᾱ_t) · x̂_0 + √α_t (1-ᾱ_{t'}) / (1-ᾱ_t) · x_t,
    β̃_t = (1-ᾱ_{t'}) / (1-ᾱ_t) · β_t   (the "fixed_small" variance; "fixed_large" uses β_t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .base import (
    KARRAS_COMPATIBLES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    AlphaBarSchedulerMixin,
    check_choice,
    check_num_inference_steps,
    spaced_timesteps,
)
from .fused import FusedLaunch, draw_noise, fused_table, prediction_weights, rows

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


@dataclass
class DDPMSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DDPMScheduler(AlphaBarSchedulerMixin):
    """Ancestral DDPM sampling.

    Example:
        >>> scheduler = DDPMScheduler(num_train_timesteps=1000)
        >>> scheduler.set_timesteps(50)
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(x, t).sample, t, x, generator=g).prev_sample
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        check_choice("variance_type", variance_type, VARIANCE_TYPES, name)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES, name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(rescale_betas_zero_snr)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.variance_type = variance_type
        self._set_schedule(np.arange(0, num_train_timesteps)[::-1].copy(), device=None)

    # ---- schedule -------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None):
        """Choose the timesteps of the loop (by `timestep_spacing`, or custom, descending)."""
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            timesteps = np.asarray(timesteps, dtype=np.int64)
            if timesteps.ndim != 1 or len(timesteps) == 0 or np.any(timesteps[1:] >= timesteps[:-1]):
                raise ValueError("`custom_timesteps` must be a non-empty list in descending order.")
            if timesteps[0] >= T or timesteps[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {T}): got {timesteps.tolist()}.")
            self.custom_timesteps = True
        else:
            check_num_inference_steps(num_inference_steps, T, type(self).__name__)
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            timesteps = spaced_timesteps(self.config.timestep_spacing, T, num_inference_steps, self.config.steps_offset)
        self._set_schedule(timesteps, device)

    def _set_schedule(self, timesteps: np.ndarray, device):
        """Device tables indexed by step: ᾱ_t and ᾱ_{t'} (1 after the last step)."""
        prev = np.append(timesteps[1:], -1)
        ab = self.alphas_cumprod
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._alpha_bar = ab[timesteps].to(device)
        self._alpha_bar_prev = torch.where(torch.from_numpy(prev) >= 0, ab[np.maximum(prev, 0)], torch.tensor(1.0)).to(device)
        self._draws_noise = (timesteps > 0).tolist()  # host side: diffusers draws noise only while t > 0
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def previous_timestep(self, timestep) -> torch.Tensor:
        """t' = the timestep after `timestep` in the schedule (-1 after the last), on the device."""
        index = self.index_for_timestep(timestep)
        padded = torch.cat([self.timesteps, self.timesteps.new_full((1,), -1)])
        return padded.index_select(0, (index + 1).view(1))[0]

    # ---- the update -------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             variance_noise: torch.Tensor | None = None):
        """x_t -> x_{t'}: predict x̂_0, take the posterior mean μ̃, add σ·z while t > 0.

        `variance_noise` replaces the draw from `generator` (graph replays pass noise drawn ahead).
        """
        self._step = self.index_for_timestep(timestep)  # DDPM locates every step by its timestep
        draws_noise = self._draws_noise_at(timestep)
        predicted_variance = None
        if model_output.shape[1] == 2 * sample.shape[1] and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        ab_t, ab_prev = self._at(self._alpha_bar), self._at(self._alpha_bar_prev)
        alpha_t = ab_t / ab_prev  # α and β of this (possibly skipping) step
        beta_t = 1 - alpha_t
        x0 = self._predict_x0(model_output, sample, ab_t)
        mean = (ab_prev**0.5 * beta_t / (1 - ab_t)) * x0 + (alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t)) * sample

        if draws_noise:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            mean = mean + self._noise_scale(ab_t, ab_prev, beta_t, predicted_variance) * variance_noise
        if not return_dict:
            return (mean, x0)
        return DDPMSchedulerOutput(prev_sample=mean, pred_original_sample=x0)

    def _draws_noise_at(self, timestep) -> bool:
        """Diffusers adds noise while t > 0. Decided on the host without reading the device: from a
        Python number directly; from a view into `self.timesteps` (what `for t in timesteps` yields)
        by its storage offset; otherwise by counting steps since set_timesteps."""
        if not isinstance(timestep, torch.Tensor):
            return timestep > 0
        ts = self.timesteps
        if timestep.dim() == 0 and timestep.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr():
            self._host_step = (timestep.storage_offset() - ts.storage_offset()) // ts.stride(0)
        index = min(self._host_step, len(self._draws_noise) - 1)
        self._host_step += 1
        return self._draws_noise[index]

    def _predict_x0(self, model_output, sample, ab_t):
        """x̂_0 from the model's parameterisation, then clipped or dynamically thresholded."""
        cfg = self.config
        if cfg.prediction_type == "epsilon":  # x_t = √ᾱ x_0 + √(1-ᾱ) ε
            x0 = (sample - (1 - ab_t) ** 0.5 * model_output) / ab_t**0.5
        elif cfg.prediction_type == "v_prediction":  # v = √ᾱ ε - √(1-ᾱ) x_0
            x0 = ab_t**0.5 * sample - (1 - ab_t) ** 0.5 * model_output
        else:
            x0 = model_output
        return self._clip(x0)

    def _noise_scale(self, ab_t, ab_prev, beta_t, predicted_variance):
        """σ multiplying z ~ N(0, I), by variance type."""
        beta_tilde = ((1 - ab_prev) / (1 - ab_t) * beta_t).clamp(min=1e-20)
        kind = self.variance_type
        if kind == "fixed_small":
            return beta_tilde**0.5
        if kind == "fixed_small_log":  # diffusers applies no extra square root here
            return torch.exp(0.5 * torch.log(beta_tilde))
        if kind == "fixed_large":
            return beta_t**0.5
        if kind == "fixed_large_log":
            return torch.log(beta_t) ** 0.5
        if kind == "learned":
            return predicted_variance**0.5
        frac = (predicted_variance + 1) / 2  # learned_range: interpolate log β̃ and log β
        return torch.exp(0.5 * (frac * torch.log(beta_t) + (1 - frac) * torch.log(beta_tilde)))

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Not with dynamic thresholding (a quantile) or a learned variance (read from the model output)."""
        learned = self.variance_type in ("learned", "learned_range")
        return not (self.config.thresholding or learned) and set(step_kwargs) <= {"generator", "variance_noise"}

    def _fused_table(self) -> torch.Tensor:
        """Per step: D = x̂_0 = clamp(PX x + PM m), x' = μ̃ + σ z = XD D + XX x + XZ z (the class docstring)."""
        def build():
            ab_t, ab_prev = self._alpha_bar, self._alpha_bar_prev
            alpha_t = ab_t / ab_prev
            beta_t = 1 - alpha_t
            w_x, w_m = prediction_weights(self.config.prediction_type, ab_t**0.5, (1 - ab_t) ** 0.5)
            return fused_table(rows(
                len(ab_t), ab_t.device, PX=w_x, PM=w_m, CLIP=self.config.clip_sample_range, DP=1,
                XD=ab_prev**0.5 * beta_t / (1 - ab_t), XX=alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t),
                XZ=self._noise_scale(ab_t, ab_prev, beta_t, None)))

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        self._step = self.index_for_timestep(timestep)
        noise = draw_noise(sample, model_output, generator, variance_noise) if self._draws_noise_at(timestep) else None
        return FusedLaunch(self._fused_table(), self._step, noise=noise, clamp=self.config.clip_sample)

    def _fused_finish(self):
        """DDPM locates each step by its timestep; the host counter moved in `_draws_noise_at`."""
