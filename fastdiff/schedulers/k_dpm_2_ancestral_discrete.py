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
from .base import (
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    TIMESTEP_SPACINGS,
    SigmaSchedulerMixin,
    check_choice,
    check_num_inference_steps,
    check_sigma_options,
    predict_x0_from_sigma,
    refuse_custom_schedule,
)
from .heun_discrete import interleave
from .fused import FusedLaunch, derivative_columns, draw_noise, f64, fused_table, rows
from .k_dpm_2_discrete import interleave_timesteps, kdpm2_sigmas_and_timesteps, midpoint_timesteps


@dataclass
class KDPM2AncestralDiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class KDPM2AncestralDiscreteScheduler(SigmaSchedulerMixin):
    """DPM-Solver-2 with ancestral noise, in σ (2N-1 model calls for N steps).

    Example:
        >>> scheduler = KDPM2AncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(25)
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     eps = unet(scheduler.scale_model_input(x, t), t).sample
        ...     x = scheduler.step(eps, t, x, generator=g).prev_sample
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 2

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
        name = type(self).__name__
        check_sigma_options(self.config, name)
        # diffusers accepts "sample" and fails at the first step ("not implemented yet"): refused early
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"), name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(allowed=CLASSIC_BETA_SCHEDULES)
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """Whether the next call is stage 1 (host view: the call count's parity)."""
        return self._host_step % 2 == 0

    # ---- schedule ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None, **custom):
        """σ_i, σ_up, σ_down and the midpoints σ_mid (diffusers' interleaved layout), and per-call tables."""
        name = type(self).__name__
        refuse_custom_schedule(name, **custom)
        check_num_inference_steps(num_inference_steps, num_train_timesteps or self.config.num_train_timesteps, name)
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps, log_sigmas = kdpm2_sigmas_and_timesteps(self, num_inference_steps, num_train_timesteps)
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device)
        sigmas_next = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
        sigmas_up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5  # last entry NaN, unused
        sigmas_down = (sigmas_next**2 - sigmas_up**2) ** 0.5
        sigmas_down[-1] = 0.0
        sigmas_mid = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()  # √(σ_i σ_down,i)
        sigmas_mid[-2:] = 0.0  # the last step goes straight to σ = 0
        mid_timesteps = midpoint_timesteps(sigmas_mid, log_sigmas).to(timesteps.dtype)
        layout = {"sigmas": sigmas, "sigmas_interpol": sigmas_mid, "sigmas_up": sigmas_up, "sigmas_down": sigmas_down}
        for key, values in layout.items():  # diffusers' public layout: 2N+2 entries
            setattr(self, key, torch.cat([interleave(values), values[-1:]]).to(device))
        self.timesteps = interleave_timesteps(timesteps, mid_timesteps[:-2]).to(device)
        self._write_stage_tables(sigmas, sigmas_mid, sigmas_up, sigmas_down, device)
        self._reset_step_state()
        self._stashed_sample = None

    def _write_stage_tables(self, sigmas, sigmas_mid, sigmas_up, sigmas_down, device):
        """Per call c: stage 1 of step i = c/2 at even c, stage 2 of step i = (c-1)/2 at odd c."""
        calls = 2 * (len(sigmas) - 1) - 1
        c = torch.arange(calls)
        first = c % 2 == 0
        i = c // 2
        self._first_stage = first.to(device)
        self._sigma_in = torch.where(first, sigmas[i], sigmas_mid[i]).to(device)
        self._dt = torch.where(first, sigmas_mid[i] - sigmas[i], sigmas_down[i] - sigmas[i]).to(device)
        self._noise_scale = torch.where(first, torch.zeros(()), sigmas_up[i]).to(device)  # σ_up at stage 2

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / √(σ_in² + 1) with the call's σ (σ_i at stage 1, σ_mid at stage 2)."""
        self._init_step_index(timestep)
        sigma = self._at(self._sigma_in)
        return sample / (sigma**2 + 1) ** 0.5

    # ---- the update ---------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             variance_noise: torch.Tensor | None = None):
        """Stage 1 (to the midpoint) or stage 2 (from the stashed x_i to σ_down, plus σ_up z)."""
        self._init_step_index(timestep)
        sigma_in, first = self._at(self._sigma_in), self._at(self._first_stage)
        x0 = predict_x0_from_sigma(self.config.prediction_type, model_output, sample, sigma_in)
        derivative = (sample - x0) / sigma_in
        x_i = sample if self._stashed_sample is None else self._stashed_sample
        origin = torch.where(first, sample, x_i)
        prev_sample = origin + derivative * self._at(self._dt)
        if self._host_step % 2 == 1:  # host decision: stage 2 draws (diffusers draws there only)
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                                              device=model_output.device, generator=generator)
            prev_sample = prev_sample + variance_noise * self._at(self._noise_scale)
        self._stashed_sample = origin
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return KDPM2AncestralDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        return set(step_kwargs) <= {"generator", "variance_noise"}

    def _fused_table(self) -> torch.Tensor:
        """Per call: D = (x − x̂_0)/σ_in; S = x at stage 1, the stashed x_i at stage 2 (stashed either way);
        x' = S + dt D + σ_up z (stage 2)."""
        def build():
            first, dt = f64(self._first_stage), self._dt
            derivative = derivative_columns(self.config.prediction_type, self._sigma_in)
            return fused_table(rows(len(dt), dt.device, **derivative, SX=first, SS=1 - first, XS=1, XD=dt,
                                    XZ=self._noise_scale, STASH=1))

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        self._init_step_index(timestep)
        if self._stashed_sample is None:
            self._stashed_sample = torch.zeros_like(sample)  # from here on updated in place
        noise = None
        if self._host_step % 2 == 1:  # host decision: stage 2 draws, as step()
            noise = draw_noise(sample, model_output, generator, variance_noise)
        return FusedLaunch(self._fused_table(), self._step, noise=noise, stash=self._stashed_sample)

