"""Heun: Algorithm 1 of Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models" (2022), the deterministic second-order sampler.

Symbols: x = x_0 + σ ε, d(x, σ) = (x - x̂_0(x, σ)) / σ. Each step σ_i -> σ_{i+1} takes two model calls:

    stage 1 (call 2i):   d_i = d(x_i, σ_i),          x' = x_i + (σ_{i+1} - σ_i) d_i       (Euler)
    stage 2 (call 2i+1): d' = d(x', σ_{i+1}),        x_{i+1} = x_i + (σ_{i+1} - σ_i) (d_i + d')/2

The last step (σ_{i+1} = 0) is stage 1 only. diffusers lists every σ twice so that the loop makes
2N-1 calls; its stage is "first" when no `dt` is stored. Here the stage is a device table indexed by
the call (`_first_stage`: even calls), and so are σ_in (the σ the model output is read at) and dt.
The state between the stages (d_i and x_i) lives in device tensors; both stages run the same code:

    D = d  (stage 1)  |  (d_i + d)/2  (stage 2),   x_{n+1} = [x  |  x_i] + dt · D
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .base import (
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    SigmaSchedulerMixin,
    check_choice,
    check_num_inference_steps,
    check_sigma_options,
    interpolated_sigmas,
    predict_x0_from_sigma,
    refuse_custom_schedule,
)
from .fused import FusedLaunch, derivative_columns, f64, fused_table, rows


@dataclass
class HeunDiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def interleave(values: torch.Tensor) -> torch.Tensor:
    """[v_0, v_1, v_1, v_2, v_2, ..., v_n, v_n]: every entry after the first twice (one per stage)."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2)])


class HeunDiscreteScheduler(SigmaSchedulerMixin):
    """Heun's second-order sampling in σ (2N-1 model calls for N steps).

    Example:
        >>> scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(25)     # 49 timesteps: each σ after the first is visited twice
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
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
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
    ):
        name = type(self).__name__
        check_sigma_options(self.config, name)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES, name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(allowed=CLASSIC_BETA_SCHEDULES + ("exp",))
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """Whether the next call is stage 1 (host view: the call count's parity)."""
        return self._host_step % 2 == 0

    # ---- schedule ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      num_train_timesteps: int | None = None, timesteps: list[int] | None = None, **custom):
        """σ_0..σ_{N-1}, 0 by spacing (or from custom timesteps), interleaved for the two stages.

        Custom `sigmas=` are refused with a ValueError, as diffusers' Heun does not take them.
        """
        refuse_custom_schedule(type(self).__name__, **custom)
        self._check_schedule_arguments(num_inference_steps, num_train_timesteps, timesteps)
        n = num_inference_steps or len(timesteps)
        self.num_inference_steps = n
        custom = None if timesteps is None else np.array(timesteps, dtype=np.float32)
        timesteps, sigmas, _ = interpolated_sigmas(self.config, self.alphas_cumprod, n, num_train_timesteps, custom)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.sigmas = interleave(sigmas)[:-1].to(device)  # 2N entries: σ_0, σ_1, σ_1, ..., σ_{N-1}, σ_{N-1}, 0
        self.timesteps = interleave(torch.from_numpy(np.asarray(timesteps))).to(device, torch.float32)
        self._write_stage_tables(sigmas, device)
        self._reset_step_state()
        self._state = None  # (d_i, x_i) between the stages

    def _check_schedule_arguments(self, num_inference_steps, num_train_timesteps, timesteps):
        cfg, name = self.config, type(self).__name__
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if timesteps is not None and cfg[key]:
                raise ValueError(f"Cannot set `timesteps` with `config.{key} = True`.")
        if num_inference_steps is not None:
            check_num_inference_steps(num_inference_steps, num_train_timesteps or cfg.num_train_timesteps, name)
        elif len(timesteps) == 0:
            raise ValueError("Custom `timesteps` must hold at least one step.")

    def _write_stage_tables(self, sigmas: torch.Tensor, device):
        """Per call c (2N-1 calls): stage, σ_in and dt. Call 2i is stage 1 of step i, call 2i+1 stage 2."""
        dt = sigmas[1:] - sigmas[:-1]  # σ_{i+1} - σ_i, float32 as diffusers
        calls = 2 * (len(sigmas) - 1) - 1
        step = (torch.arange(calls) + 1) // 2  # the step a call belongs to, counted at stage 2 as the next σ
        first = torch.arange(calls) % 2 == 0
        self._first_stage = first.to(device)
        # stage 1 reads the model at σ_i, stage 2 at σ_{i+1}; both use dt of step i
        self._sigma_in = sigmas[step].to(device)
        self._dt = dt[torch.where(first, step, step - 1)].to(device)

    # ---- the update ---------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True):
        """Stage 1 (Euler predictor) or stage 2 (trapezoidal corrector), as the call's table row says."""
        self._init_step_index(timestep)
        sigma_in, first = self._at(self._sigma_in), self._at(self._first_stage)
        x0 = predict_x0_from_sigma(self.config.prediction_type, model_output, sample, sigma_in)
        # ---- stage: clip x̂_0 ----
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        derivative = (sample - x0) / sigma_in
        d_first, x_first = self._state if self._state is not None else (derivative, sample)

        slope = torch.where(first, derivative, (d_first + derivative) / 2)
        origin = torch.where(first, sample, x_first)
        prev_sample = origin + slope * self._at(self._dt)

        self._state = (torch.where(first, derivative, d_first), torch.where(first, sample, x_first))
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return HeunDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        return not step_kwargs

    def _fused_table(self) -> torch.Tensor:
        """Per call: P = clamp(x̂_0), D = (x − P)/σ_in. The state (d_i, x_i) is the history slot H_0 and the stash.
        Stage 1: H_0 <- D, S = x (stashed), x' = S + dt D.  Stage 2: S = x_i (kept), x' = S + dt/2 D + dt/2 H_0."""
        def build():
            first, dt = f64(self._first_stage), f64(self._dt)
            cfg = self.config
            derivative = derivative_columns(cfg.prediction_type, self._sigma_in, clamp=cfg.clip_sample)
            return fused_table(rows(
                len(dt), dt.device, **derivative, CLIP=cfg.clip_sample_range,
                SX=first, SS=1 - first, XS=1, XD=torch.where(first > 0, dt, dt / 2),
                XH=[torch.where(first > 0, 0.0, dt / 2)], PUSH=first, STASH=first))

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample) -> FusedLaunch:
        self._init_step_index(timestep)
        if self._state is None:  # from here on updated in place
            dtype = torch.promote_types(sample.dtype, model_output.dtype)
            self._state = (torch.zeros_like(sample, dtype=dtype), torch.zeros_like(sample, dtype=dtype))
        d_first, x_first = self._state
        return FusedLaunch(self._fused_table(), self._step, history=d_first.unsqueeze(0), stash=x_first,
                           clamp=self.config.clip_sample, read_oldest=True)
