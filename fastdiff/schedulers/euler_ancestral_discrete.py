"""Euler ancestral: the ancestral Euler sampler of k-diffusion (Karras et al., "Elucidating the Design
Space of Diffusion-Based Generative Models", 2022; Crowson's `sample_euler_ancestral`).

Symbols: x = x_0 + σ ε. Going from σ_i to σ_{i+1}, the ancestral split keeps the marginal variance:

    σ_up = √(σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²),   σ_down = √(σ_{i+1}² - σ_up²)
    d = (x_i - x̂_0) / σ_i,   x_{i+1} = x_i + (σ_down - σ_i) d + σ_up z,   z ~ N(0, I)

Device tables (per step i): `sigmas` (σ_i), `_sigma_up`, `_sigma_down`. With ε prediction the step
is x + (σ_down - σ_i) ε̂ + σ_up z: three coefficients read from one row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .base import (
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    TIMESTEP_SPACINGS,
    SigmaSchedulerMixin,
    check_choice,
    check_num_inference_steps,
    predict_x0_from_sigma,
    refuse_custom_schedule,
    sigma_timesteps,
    vp_sigmas,
)
from .euler_discrete import check_integer_timestep
from .fused import FusedLaunch, draw_noise, f64, fused_table, rows, sigma_prediction_weights

logger = logging.getLogger(__name__)


@dataclass
class EulerAncestralDiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class EulerAncestralDiscreteScheduler(SigmaSchedulerMixin):
    """Ancestral Euler sampling in σ (stochastic: one draw per step).

    Example:
        >>> scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(30)
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     eps = unet(scheduler.scale_model_input(x, t), t).sample
        ...     x = scheduler.step(eps, t, x, generator=g).prev_sample
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
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        # diffusers accepts "sample" here and fails at the first step ("not implemented yet"): refused early
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"), name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(rescale_betas_zero_snr, CLASSIC_BETA_SCHEDULES, sigma_space=True)
        self.num_inference_steps = None
        self.is_scale_input_called = False
        sigmas = np.concatenate([vp_sigmas(self.alphas_cumprod)[::-1], [0.0]]).astype(np.float32)
        timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self._set_tables(torch.from_numpy(timesteps), torch.from_numpy(sigmas), None)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **custom):
        """σ at the spaced timesteps (σ_N = 0 appended) and the σ_up / σ_down tables."""
        name, cfg = type(self).__name__, self.config
        refuse_custom_schedule(name, **custom)
        check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps, name)
        self.num_inference_steps = num_inference_steps
        timesteps = sigma_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                                    cfg.steps_offset)
        train = vp_sigmas(self.alphas_cumprod)
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self._set_tables(torch.from_numpy(timesteps), torch.from_numpy(sigmas), device)

    def _set_tables(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device):
        """σ_up, σ_down per step, in float32 as diffusers computes them inside step()."""
        sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        self.timesteps, self.sigmas = timesteps.to(device), sigmas.to(device)
        self._sigma_up, self._sigma_down = sigma_up.to(device), sigma_down.to(device)
        self._reset_step_state()

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             variance_noise: torch.Tensor | None = None):
        """x_{i+1} = x_i + (σ_down - σ_i) d + σ_up z; z from `generator`, or `variance_noise` if given."""
        check_integer_timestep(timestep, "EulerDiscreteScheduler")  # diffusers' message names Euler here too
        if not self.is_scale_input_called:
            logger.warning("The `scale_model_input` function should be called before `step` to ensure correct "
                           "denoising. See `StableDiffusionPipeline` for a usage example.")
        self._init_step_index(timestep)
        sigma = self._at(self.sigmas)
        sample = sample.to(torch.float32)
        x0 = predict_x0_from_sigma(self.config.prediction_type, model_output, sample, sigma)
        derivative = (sample - x0) / sigma
        prev_sample = sample + derivative * (self._at(self._sigma_down) - sigma)
        if variance_noise is None:  # every step draws (the last one too, with σ_up = 0), as diffusers
            variance_noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                          generator=generator)
        prev_sample = (prev_sample + variance_noise * self._at(self._sigma_up)).to(model_output.dtype)
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        return set(step_kwargs) <= {"generator", "variance_noise"}

    def _fused_table(self) -> torch.Tensor:
        """x' = x + r (x − x̂_0) + σ_up z, r = (σ_down − σ)/σ, x̂_0 = w_x x + w_m m:
        XX = 1 + r (1 − w_x), XM = −r w_m."""
        def build():
            sigma = self.sigmas[:-1]
            w_x, w_m = sigma_prediction_weights(self.config.prediction_type, sigma)
            r = f64(self._sigma_down - sigma) / f64(sigma)
            return fused_table(rows(len(sigma), sigma.device, XX=1 + r * (1 - w_x), XM=-r * w_m, XZ=self._sigma_up))

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        check_integer_timestep(timestep, "EulerDiscreteScheduler")
        self._init_step_index(timestep)
        noise = draw_noise(sample, model_output, generator, variance_noise)  # every step draws, as step()
        return FusedLaunch(self._fused_table(), self._step, noise=noise)
