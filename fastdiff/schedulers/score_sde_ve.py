"""Score SDE (VE): the predictor-corrector sampler of Song et al., "Score-Based Generative Modeling through
Stochastic Differential Equations" (2021), for the variance-exploding SDE.

Symbols (paper): σ(t) = σ_min (σ_max/σ_min)^t, discretised as σ_1 < ... < σ_N; s_θ(x, σ) the score model,
r the signal-to-noise ratio of the corrector, z ~ N(0, I).

    predictor (reverse diffusion, eq. 47):  x_mean = x + (σ_i² - σ_{i-1}²) s_θ,   x = x_mean + √(σ_i² - σ_{i-1}²) z
    corrector (Langevin, Algorithm 5):      ε = 2 (r ‖z‖ / ‖s_θ‖)²,  x_mean = x + ε s_θ,  x = x_mean + √(2ε) z

Graph safety: the discrete σ table lives on the device; the step picks σ_i and σ_{i-1} with
index_select and torch.where (no Python branch on t), and the norms stay device tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .base import SchedulerMixin, SchedulerOutput, broadcast_to_sample, check_num_inference_steps


@dataclass
class SdeVeOutput(BaseOutput):
    prev_sample: torch.Tensor
    prev_sample_mean: torch.Tensor


class ScoreSdeVeScheduler(SchedulerMixin):
    """Predictor-corrector sampling of the VE SDE.

    Example:
        >>> scheduler = ScoreSdeVeScheduler()
        >>> scheduler.set_timesteps(2000); scheduler.set_sigmas(2000)
        >>> for i, t in enumerate(scheduler.timesteps):
        ...     sigma_t = scheduler.sigmas[i] * torch.ones(batch)
        ...     x = scheduler.step_correct(unet(x, sigma_t).sample, x, generator=g).prev_sample
        ...     x, x_mean = scheduler.step_pred(unet(x, sigma_t).sample, t, x, generator=g)
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 2000,
        snr: float = 0.15,
        sigma_min: float = 0.01,
        sigma_max: float = 1348.0,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
    ):
        self.init_noise_sigma = sigma_max
        self.timesteps = None
        self.set_sigmas(num_train_timesteps, sigma_min, sigma_max, sampling_eps)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, sampling_eps: float | None = None,
                      device: str | torch.device | None = None):
        """Continuous times t from 1 down to sampling_eps."""
        check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps, type(self).__name__)
        sampling_eps = sampling_eps if sampling_eps is not None else self.config.sampling_eps
        self.timesteps = torch.linspace(1, sampling_eps, num_inference_steps, device=device)

    def set_sigmas(self, num_inference_steps: int, sigma_min: float | None = None, sigma_max: float | None = None,
                   sampling_eps: float | None = None):
        """σ(t) at the timesteps (`sigmas`, for the model) and N σ log-spaced from σ_min to σ_max (`discrete_sigmas`)."""
        cfg = self.config
        sigma_min = sigma_min if sigma_min is not None else cfg.sigma_min
        sigma_max = sigma_max if sigma_max is not None else cfg.sigma_max
        sampling_eps = sampling_eps if sampling_eps is not None else cfg.sampling_eps
        if self.timesteps is None:
            self.set_timesteps(num_inference_steps, sampling_eps)
        self.sigmas = sigma_min * (sigma_max / sigma_min) ** self.timesteps  # σ(t) = σ_min (σ_max/σ_min)^t
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_inference_steps))
        self.discrete_sigmas = self.discrete_sigmas.to(self.timesteps.device)

    def get_adjacent_sigma(self, timesteps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """σ_{i-1} for discrete indices i (0 at i = 0), on the device."""
        previous = self.discrete_sigmas.index_select(0, (timesteps - 1).clamp(min=0))
        return torch.where(timesteps == 0, torch.zeros_like(t.to(timesteps.device)), previous)

    def step_pred(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                  generator: torch.Generator | None = None, return_dict: bool = True,
                  variance_noise: torch.Tensor | None = None):
        """Reverse-diffusion predictor from t to the next time; `variance_noise` replaces the draw of z."""
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        timestep = timestep * torch.ones(sample.shape[0], device=sample.device)
        index = (timestep * (len(self.timesteps) - 1)).long().to(self.discrete_sigmas.device)  # i = ⌊t (N-1)⌋
        sigma = self.discrete_sigmas.index_select(0, index).to(sample.device)
        adjacent_sigma = self.get_adjacent_sigma(index, timestep).to(sample.device)
        diffusion = broadcast_to_sample((sigma**2 - adjacent_sigma**2) ** 0.5, sample)  # g = √(σ_i² - σ_{i-1}²)
        drift = torch.zeros_like(sample) - diffusion**2 * model_output  # f - g² s_θ, with f = 0 for VE
        if variance_noise is None:
            variance_noise = randn_tensor(sample.shape, layout=sample.layout, generator=generator,
                                          device=sample.device, dtype=sample.dtype)
        prev_sample_mean = sample - drift
        prev_sample = prev_sample_mean + diffusion * variance_noise
        if not return_dict:
            return (prev_sample, prev_sample_mean)
        return SdeVeOutput(prev_sample=prev_sample, prev_sample_mean=prev_sample_mean)

    def step_correct(self, model_output: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None = None,
                     return_dict: bool = True, variance_noise: torch.Tensor | None = None):
        """One Langevin corrector step with step size ε = 2 (r ‖z‖ / ‖s_θ‖)² (batch means of the norms)."""
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        if variance_noise is None:
            variance_noise = randn_tensor(sample.shape, layout=sample.layout, generator=generator).to(sample.device)
        batch = sample.shape[0]
        grad_norm = torch.norm(model_output.reshape(batch, -1), dim=-1).mean()
        noise_norm = torch.norm(variance_noise.reshape(batch, -1), dim=-1).mean()
        step_size = (self.config.snr * noise_norm / grad_norm) ** 2 * 2
        step_size = broadcast_to_sample(step_size * torch.ones(batch, device=sample.device), sample)
        prev_sample_mean = sample + step_size * model_output
        prev_sample = prev_sample_mean + (step_size * 2) ** 0.5 * variance_noise
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor | None,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = x_0 + σ_t z with σ_t = discrete_sigmas[t] (z drawn with torch.randn_like when noise is None)."""
        timesteps = timesteps.to(original_samples.device)
        sigmas = broadcast_to_sample(self.discrete_sigmas.to(original_samples.device).index_select(0, timesteps.flatten()),
                                     original_samples)
        noise = noise if noise is not None else torch.randn_like(original_samples)
        return noise * sigmas + original_samples
