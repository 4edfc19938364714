"""KDPM2 ancestral: k-diffusion's `sample_dpm_2_ancestral`, DPM-Solver-2 (after Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models", 2022) with ancestral noise.

Symbols: x = x_0 + σ ε, d(x, σ) = (x - x̂_0(x, σ)) / σ. The step σ_i -> σ_{i+1} is split as in Euler
ancestral, σ_up = √(σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²), σ_down = √(σ_{i+1}² - σ_up²), and the
deterministic part σ_i -> σ_down is a midpoint step, σ_mid = exp((ln σ_i + ln σ_down) / 2):

    stage 1 (call 2i):    x' = x_i + (σ_mid - σ_i) d(x_i, σ_i)
    stage 2 (call 2i+1):  x_{i+1} = x_i + (σ_down - σ_i) d(x', σ_mid) + σ_up z,   z ~ N(0, I)

Per-call device tables: stage, σ_in (σ_i | σ_mid), dt (σ_mid - σ_i | σ_down - σ_i) and the noise
scale (0 | σ_up). Whether a call draws noise is a host decision (diffusers draws at stage 2 only):
the host call counter's parity, which matches the device index whenever the loop starts on a
step boundary (call 0, or begin_index = t_start * order as pipelines set it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..configuration import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .heun_discrete import interleave
from .k_dpm_2_discrete import KDPM2Mixin, interleave_timesteps, midpoint_timesteps


@dataclass
class KDPM2AncestralDiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class KDPM2AncestralDiscreteScheduler(KDPM2Mixin):
    """DPM-Solver-2 with ancestral noise, in σ (2N-1 model calls for N steps).

    Example:
        >>> scheduler = KDPM2AncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(25)
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     eps = unet(scheduler.scale_model_input(x, t), t).sample
        ...     x = scheduler.step(eps, t, x, generator=g).prev_sample
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._init_schedule()

    def _stage_sigmas(self, sigmas: torch.Tensor, timesteps: torch.Tensor, log_sigmas: np.ndarray, device):
        """σ_up, σ_down and σ_mid = √(σ_i σ_down,i) per step; stage 2 ends at σ_down,i (diffusers' public layout)."""
        sigmas_next = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
        sigmas_up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5  # last entry NaN, unused
        sigmas_down = (sigmas_next**2 - sigmas_up**2) ** 0.5
        sigmas_down[-1] = 0.0
        sigmas_mid = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()
        sigmas_mid[-2:] = 0.0  # the last step goes straight to σ = 0
        mid_timesteps = midpoint_timesteps(sigmas_mid, log_sigmas).to(timesteps.dtype)
        layout = {"sigmas": sigmas, "sigmas_interpol": sigmas_mid, "sigmas_up": sigmas_up, "sigmas_down": sigmas_down}
        for key, values in layout.items():  # diffusers' public layout: 2N+2 entries
            setattr(self, key, torch.cat([interleave(values), values[-1:]]).to(device))
        self.timesteps = interleave_timesteps(timesteps, mid_timesteps[:-2]).to(device)
        return sigmas_mid, sigmas_down, sigmas_up

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             variance_noise: torch.Tensor | None = None):
        """Stage 1 (to the midpoint) or stage 2 (from the stashed x_i to σ_down, plus σ_up z)."""
        self._init_step_index(timestep)
        prev_sample, x0 = self._stage_update(model_output, sample)
        if self._host_step % 2 == 1:  # host decision: stage 2 draws (diffusers draws there only)
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                                              device=model_output.device, generator=generator)
            prev_sample = prev_sample + variance_noise * self._at(self._noise_scale)
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def supports_fused_step(self, **step_kwargs) -> bool:
        return set(step_kwargs) <= {"generator", "variance_noise"}
