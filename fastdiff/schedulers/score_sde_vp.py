"""Score SDE (VP): the reverse-diffusion predictor of Song et al., "Score-Based Generative Modeling through
Stochastic Differential Equations" (2021), for the variance-preserving SDE.

Symbols (paper, eq. 11 and 29): β(t) = β_min + t (β_max - β_min), dx = -½ β(t) x dt + √β(t) dw. The
marginal is N(m(t) x_0, std(t)² I) with ln m(t) = -¼ t² (β_max - β_min) - ½ t β_min and
std(t) = √(1 - m(t)²). With the model's ε̂, the score is s = -ε̂ / std(t), and one Euler–Maruyama
step of the reverse SDE with dt = -1/N is

    x_mean = x + (-½ β(t) x - β(t) s) dt,    x = x_mean + √β(t) √(-dt) z,   z ~ N(0, I).

All of it is elementwise device arithmetic on t; there is no state between steps.
"""

from __future__ import annotations

import math

import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from .base import SchedulerMixin, broadcast_to_sample, check_num_inference_steps


class ScoreSdeVpScheduler(SchedulerMixin):
    """Reverse-diffusion sampling of the VP SDE (deprecated in diffusers).

    Example:
        >>> scheduler = ScoreSdeVpScheduler()
        >>> scheduler.set_timesteps(1000)
        >>> for t in scheduler.timesteps:
        ...     t_batch = t * torch.ones(batch)
        ...     x, x_mean = scheduler.step_pred(model(x, t_batch), x, t_batch, generator=g)
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 2000, beta_min: float = 0.1, beta_max: float = 20,
                 sampling_eps: float = 1e-3):
        self.sigmas = None
        self.discrete_sigmas = None
        self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """Continuous times t from 1 down to sampling_eps."""
        check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps, type(self).__name__)
        self.timesteps = torch.linspace(1, self.config.sampling_eps, num_inference_steps, device=device)

    def step_pred(self, score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None,
                  variance_noise: torch.Tensor | None = None):
        """(x, x_mean) after one reverse step at time t; `variance_noise` replaces the draw of z."""
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        beta_min, beta_max = self.config.beta_min, self.config.beta_max
        log_mean_coeff = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
        std = broadcast_to_sample(torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff)), score)
        score = -score / std  # s = -ε̂ / std(t)
        dt = -1.0 / len(self.timesteps)
        beta_t = broadcast_to_sample(beta_min + t * (beta_max - beta_min), x)
        diffusion = torch.sqrt(beta_t)
        drift = -0.5 * beta_t * x - diffusion**2 * score
        x_mean = x + drift * dt
        if variance_noise is None:
            variance_noise = randn_tensor(x.shape, layout=x.layout, generator=generator, device=x.device, dtype=x.dtype)
        x = x_mean + diffusion * math.sqrt(-dt) * variance_noise
        return x, x_mean

    def __len__(self):
        return self.config.num_train_timesteps
