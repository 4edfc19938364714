"""KDPM2: the second-order "DPM-Solver-2" sampler of k-diffusion (`sample_dpm_2`), after Algorithm 2 of
Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (2022), with the
midpoint taken in log σ.

Symbols: x = x_0 + σ ε, d(x, σ) = (x - x̂_0(x, σ)) / σ, σ_mid = exp((ln σ_i + ln σ_{i+1}) / 2). Each step
σ_i -> σ_{i+1} takes two model calls (the last step, to σ = 0, only the first):

    stage 1 (call 2i):    x' = x_i + (σ_mid - σ_i) d(x_i, σ_i)
    stage 2 (call 2i+1):  x_{i+1} = x_i + (σ_{i+1} - σ_i) d(x', σ_mid)

Both stages are one formula over per-call device tables (stage from the call index, not a Python flag):

    x_next = [x  |  x_i] + dt · (x - x̂_0(x, σ_in)) / σ_in,    σ_in = [σ_i | σ_mid],   dt = [σ_mid - σ_i | σ_{i+1} - σ_i]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .base import (
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    TIMESTEP_SPACINGS,
    SchedulerMixin,
    SigmaSchedulerMixin,
    check_choice,
    check_num_inference_steps,
    check_sigma_options,
    interpolated_sigmas,
    predict_x0_from_sigma,
    refuse_custom_schedule,
)
from .heun_discrete import interleave
from .fused import FusedLaunch, derivative_columns, draw_noise, f64, fused_table, rows


@dataclass
class KDPM2DiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def kdpm2_sigmas_and_timesteps(scheduler: SchedulerMixin, num_inference_steps: int, num_train_timesteps):
    """(σ_0..σ_N with σ_N = 0, their timesteps, log σ_train) as diffusers' KDPM2 schedulers build them."""
    cfg = scheduler.config
    timesteps, sigmas, log_sigmas = interpolated_sigmas(cfg, scheduler.alphas_cumprod, num_inference_steps,
                                                        num_train_timesteps)
    if cfg.use_karras_sigmas:  # KDPM2 rounds Karras timesteps (only those)
        timesteps = timesteps.round()
    sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    return sigmas, torch.from_numpy(np.asarray(timesteps)), log_sigmas


def midpoint_timesteps(sigmas_mid: torch.Tensor, log_sigmas: np.ndarray) -> torch.Tensor:
    """sigma_to_t of the σ midpoints, all in float32: diffusers evaluates this one on float32 torch
    tensors, so t = (1-w) low + w high is rounded to float32 (the shared float64 version differs by an ulp)."""
    log_sigma = np.log(np.maximum(sigmas_mid.numpy(), np.float32(1e-10)))
    log_train = log_sigmas.astype(np.float32)
    low = np.cumsum(log_sigma - log_train[:, None] >= 0, axis=0).argmax(axis=0).clip(max=len(log_train) - 2)
    w = np.clip((log_train[low] - log_sigma) / (log_train[low] - log_train[low + 1]), 0, 1)
    return torch.from_numpy((1 - w) * low.astype(np.float32) + w * (low + 1).astype(np.float32))


def interleave_timesteps(timesteps: torch.Tensor, mid_timesteps: torch.Tensor) -> torch.Tensor:
    """[t_0, t_mid_1, t_1, t_mid_2, t_2, ...]: stage 2 of step i is evaluated at the midpoint's timestep."""
    return torch.cat([timesteps[:1], torch.stack((mid_timesteps, timesteps[1:]), dim=-1).flatten()])


class KDPM2Mixin(SigmaSchedulerMixin):
    """What KDPM2 and KDPM2 ancestral share: construction, the schedule's σ_i, the per-call stage tables
    (stage, σ_in, dt; σ_up for the ancestral sampler) and the two-stage update

        x_next = [x  |  x_i] + dt · (x - x̂_0(x, σ_in)) / σ_in.

    Each class's `_stage_sigmas` gives, per step i, the midpoint σ_mid,i and the end σ_target,i of stage 2
    (and sets diffusers' public interleaved tables).
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 2
    _noise_scale = None  # the ancestral sampler's per-call σ_up table

    def _init_schedule(self):
        """Construction: the config checks, β/ᾱ, and the schedule over all training timesteps, as diffusers."""
        cfg, name = self.config, type(self).__name__
        check_sigma_options(cfg, name)
        # diffusers accepts "sample" and fails at the first step ("not implemented yet"): refused early
        check_choice("prediction_type", cfg.prediction_type, ("epsilon", "v_prediction"), name)
        check_choice("timestep_spacing", cfg.timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(allowed=CLASSIC_BETA_SCHEDULES)
        self.set_timesteps(cfg.num_train_timesteps, None, cfg.num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """Whether the next call is stage 1 (host view: the call count's parity)."""
        return self._host_step % 2 == 0

    @property
    def _input_sigmas(self) -> torch.Tensor:
        return self._sigma_in  # σ_i at stage 1, σ_mid at stage 2

    # ---- schedule ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None, **custom):
        """σ_i and the stage-2 σ (diffusers' interleaved layout), and the per-call stage tables."""
        name = type(self).__name__
        refuse_custom_schedule(name, **custom)
        check_num_inference_steps(num_inference_steps, num_train_timesteps or self.config.num_train_timesteps, name)
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps, log_sigmas = kdpm2_sigmas_and_timesteps(self, num_inference_steps, num_train_timesteps)
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device)
        sigma_mid, sigma_target, sigma_up = self._stage_sigmas(sigmas, timesteps, log_sigmas, device)
        self._write_stage_tables(sigmas, sigma_mid, sigma_target, sigma_up, device)
        self._reset_step_state()
        self._stashed_sample = None

    def _write_stage_tables(self, sigmas, sigma_mid, sigma_target, sigma_up, device):
        """Per call c: stage 1 of step i = c/2 at even c (σ_i -> σ_mid,i), stage 2 of step i = (c-1)/2 at odd c
        (from x_i to σ_target,i, read at σ_mid,i; plus σ_up,i z when `sigma_up` is given)."""
        calls = 2 * (len(sigmas) - 1) - 1
        c = torch.arange(calls)
        first = c % 2 == 0
        i = c // 2
        self._first_stage = first.to(device)
        self._sigma_in = torch.where(first, sigmas[i], sigma_mid[i]).to(device)  # σ the model output is read at
        self._dt = torch.where(first, sigma_mid[i] - sigmas[i], sigma_target[i] - sigmas[i]).to(device)
        if sigma_up is not None:
            self._noise_scale = torch.where(first, torch.zeros(()), sigma_up[i]).to(device)  # σ_up at stage 2

    # ---- the update ---------------------------------------------------------------------------------

    def _stage_update(self, model_output: torch.Tensor, sample: torch.Tensor):
        """(x_next, x̂_0) of this call by its row: stage 1 from x, stage 2 from the stashed x_i."""
        sigma_in, first = self._at(self._sigma_in), self._at(self._first_stage)
        x0 = predict_x0_from_sigma(self.config.prediction_type, model_output, sample, sigma_in)
        derivative = (sample - x0) / sigma_in
        x_i = sample if self._stashed_sample is None else self._stashed_sample
        origin = torch.where(first, sample, x_i)
        self._stashed_sample = origin
        return origin + derivative * self._at(self._dt), x0

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def _fused_table(self) -> torch.Tensor:
        """Per call: D = (x − x̂_0)/σ_in; S = x at stage 1, the stashed x_i at stage 2 (stashed either way);
        x' = S + dt D (+ σ_up z at stage 2 of the ancestral sampler)."""
        def build():
            first, dt = f64(self._first_stage), self._dt
            derivative = derivative_columns(self.config.prediction_type, self._sigma_in)
            noise = {} if self._noise_scale is None else {"XZ": self._noise_scale}
            return fused_table(rows(len(dt), dt.device, **derivative, SX=first, SS=1 - first, XS=1, XD=dt,
                                    **noise, STASH=1))

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        self._init_step_index(timestep)
        if self._stashed_sample is None:
            self._stashed_sample = torch.zeros_like(sample)  # from here on updated in place
        noise = None
        if self._noise_scale is not None and self._host_step % 2 == 1:  # host decision: stage 2 draws, as step()
            noise = draw_noise(sample, model_output, generator, variance_noise)
        return FusedLaunch(self._fused_table(), self._step, noise=noise, stash=self._stashed_sample)


class KDPM2DiscreteScheduler(KDPM2Mixin):
    """DPM-Solver-2 in σ (2N-1 model calls for N steps).

    Example:
        >>> scheduler = KDPM2DiscreteScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(25)
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
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
        """σ_mid,i = exp(½ (ln σ_i + ln σ_{i+1})); stage 2 ends at σ_{i+1}."""
        # entry j is the midpoint of σ_{j-1}, σ_j; entry 0 is unused (NaN/0 from the wrap-around)
        sigmas_mid = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
        mid_timesteps = midpoint_timesteps(sigmas_mid, log_sigmas).to(timesteps.dtype)
        self.sigmas = torch.cat([interleave(sigmas), sigmas[-1:]]).to(device)  # diffusers' layout, 2N+2 entries
        self.sigmas_interpol = torch.cat([interleave(sigmas_mid), sigmas_mid[-1:]]).to(device)
        self.timesteps = interleave_timesteps(timesteps, mid_timesteps[1:-1]).to(device)
        return sigmas_mid[1:], sigmas[1:], None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True):
        """Stage 1 (to the midpoint) or stage 2 (the full step from the stashed x_i), by the call's row."""
        self._init_step_index(timestep)
        prev_sample, x0 = self._stage_update(model_output, sample)
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return KDPM2DiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def supports_fused_step(self, **step_kwargs) -> bool:
        return not step_kwargs
