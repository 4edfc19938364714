"""Karras VE: the stochastic sampler (Algorithm 2) of Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models" (2022), for variance-exploding models.

Symbols (paper): σ_i the noise levels, S_churn, S_min, S_max, S_noise the churn parameters. One step:

    γ_i = min(S_churn / N, √2 - 1) if S_min ≤ σ_i ≤ S_max else 0,   σ̂ = σ_i (1 + γ_i)
    x̂ = x_i + √(σ̂² - σ_i²) ε,  ε ~ N(0, S_noise² I)                          (add_noise_to_input)
    d = (x̂ - x̂_0) / σ̂,  x_{i+1} = x̂ + (σ_{i+1} - σ̂) d                        (step)
    d' = (x_{i+1} - x̂_0') / σ_{i+1},  x_{i+1} = x̂ + (σ_{i+1} - σ̂)(d + d')/2   (step_correct, if σ_{i+1} ≠ 0)

with x̂_0 = x̂ + σ̂ D (the pipeline passes D = σ̂/2 · F, as diffusers' KarrasVe pipeline does).
As in diffusers, `schedule[t]` holds σ_max² (σ_min²/σ_max²)^{t/(N-1)}, which the pipeline uses as σ.

Graph safety: σ may be a device tensor; γ is then chosen with torch.where on the device, and the
noise draw (every call, as diffusers) needs no host decision. Python-float σ stays host arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .base import SchedulerMixin, refuse_custom_schedule


@dataclass
class KarrasVeOutput(BaseOutput):
    prev_sample: torch.Tensor
    derivative: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class KarrasVeScheduler(SchedulerMixin):
    """Stochastic sampling for VE models (deprecated in diffusers; kept for its pipeline).

    Example:
        >>> scheduler = KarrasVeScheduler()
        >>> scheduler.set_timesteps(50)
        >>> for t in range(49, -1, -1):
        ...     sigma = scheduler.schedule[t]
        ...     sample_hat, sigma_hat = scheduler.add_noise_to_input(sample, sigma, generator=g)
        ...     out = scheduler.step(sigma_hat / 2 * unet((sample_hat + 1) / 2, sigma_hat / 2).sample,
        ...                          sigma_hat, scheduler.schedule[t - 1] if t > 0 else 0, sample_hat)
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        s_noise: float = 1.007,
        s_churn: float = 80,
        s_min: float = 0.05,
        s_max: float = 50,
    ):
        self.init_noise_sigma = sigma_max
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.schedule: torch.Tensor | None = None

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **custom):
        """t = N-1..0 and schedule[t] = σ_max² (σ_min²/σ_max²)^{t/(N-1)} on the device."""
        name = type(self).__name__
        refuse_custom_schedule(name, **custom)
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:  # diffusers: NaN schedule at N=1
            raise ValueError(f"{name}: num_inference_steps must be an int >= 2 (the schedule divides by N-1), got {n!r}.")
        self.num_inference_steps = num_inference_steps
        cfg = self.config
        timesteps = torch.from_numpy(np.arange(0, num_inference_steps)[::-1].copy())
        exponent = timesteps / (num_inference_steps - 1)  # float32, as diffusers
        self.timesteps = timesteps.to(device)
        schedule = cfg.sigma_max**2 * (cfg.sigma_min**2 / cfg.sigma_max**2) ** exponent
        self.schedule = schedule.to(dtype=torch.float32, device=device)

    def add_noise_to_input(self, sample: torch.Tensor, sigma, generator: torch.Generator | None = None,
                           variance_noise: torch.Tensor | None = None):
        """(x̂, σ̂): churn the sample up to σ̂ = σ(1 + γ). `variance_noise` replaces the N(0, I) draw."""
        cfg = self.config
        gamma_max = min(cfg.s_churn / self.num_inference_steps, 2**0.5 - 1)
        if isinstance(sigma, torch.Tensor):  # decided on the device
            gamma = torch.where((cfg.s_min <= sigma) & (sigma <= cfg.s_max), gamma_max, 0.0)
        else:
            gamma = gamma_max if cfg.s_min <= sigma <= cfg.s_max else 0
        if variance_noise is None:
            variance_noise = randn_tensor(sample.shape, generator=generator).to(sample.device)
        eps = cfg.s_noise * variance_noise
        sigma_hat = sigma + gamma * sigma
        sample_hat = sample + (sigma_hat**2 - sigma**2) ** 0.5 * eps
        return sample_hat, sigma_hat

    def step(self, model_output: torch.Tensor, sigma_hat, sigma_prev, sample_hat: torch.Tensor,
             return_dict: bool = True):
        """Euler step x̂ -> x_{i+1} (the paper's lines 7-8)."""
        x0 = sample_hat + sigma_hat * model_output
        derivative = (sample_hat - x0) / sigma_hat
        sample_prev = sample_hat + (sigma_prev - sigma_hat) * derivative
        if not return_dict:
            return (sample_prev, derivative)
        return KarrasVeOutput(prev_sample=sample_prev, derivative=derivative, pred_original_sample=x0)

    def step_correct(self, model_output: torch.Tensor, sigma_hat, sigma_prev, sample_hat: torch.Tensor,
                     sample_prev: torch.Tensor, derivative: torch.Tensor, return_dict: bool = True):
        """Second-order correction (the paper's lines 9-11): average d and d' over the same step."""
        x0 = sample_prev + sigma_prev * model_output
        derivative_corr = (sample_prev - x0) / sigma_prev
        sample_prev = sample_hat + (sigma_prev - sigma_hat) * (0.5 * derivative + 0.5 * derivative_corr)
        if not return_dict:
            return (sample_prev, derivative)
        return KarrasVeOutput(prev_sample=sample_prev, derivative=derivative, pred_original_sample=x0)

    def add_noise(self, original_samples, noise, timesteps):
        raise NotImplementedError()
