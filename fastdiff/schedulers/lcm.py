"""LCM: Latent Consistency Models, few-step inference with a consistency-distilled model (Luo et al., 2023).

Symbols: ᾱ_t (alphas_cumprod), x̂_0 the predicted clean sample, t' the next timestep of the schedule. The
consistency function of the distilled model is parameterised with the boundary condition f(x, 0) = x:

    f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0,   c_skip = σ_d² / ((s t)² + σ_d²),  c_out = s t / √((s t)² + σ_d²)

(σ_d = 0.5, s = timestep_scaling). Multistep consistency sampling then re-noises the denoised sample to t':

    x_{t'} = √ᾱ_{t'} f(x_t, t) + √(1 − ᾱ_{t'}) z,   and the last step returns f(x_t, t) itself.

set_timesteps stores per step √ᾱ_t, √(1 − ᾱ_t), c_skip, c_out and the re-noising weights (√ᾱ_{t'}, √(1 − ᾱ_{t'}))
— (1, 0) on the last step — so step() is the x̂_0 conversion, the optional clip/threshold stage, and two
fused multiply-adds.
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
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    AlphaBarSchedulerMixin,
    check_choice,
)
from .fused import FusedLaunch, draw_noise, fused_table, prediction_weights, rows

logger = logging.getLogger(__name__)

LCM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SIGMA_DATA = 0.5  # σ_d of the consistency-model boundary condition


@dataclass
class LCMSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    denoised: torch.Tensor | None = None


class LCMScheduler(AlphaBarSchedulerMixin):
    """Multistep latent-consistency sampling (1-8 steps typically), with img2img `strength` and custom timesteps.

    Example:
        >>> scheduler = LCMScheduler.from_pretrained("path/to/lcm", subfolder="scheduler")
        >>> scheduler.set_timesteps(4)
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(x, t, timestep_cond=w).sample, t, x, generator=g).prev_sample
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: np.ndarray | list[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, LCM_BETA_SCHEDULES, name)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES, name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)  # recorded; LCM does not use it
        self._set_betas(rescale_betas_zero_snr)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self._reset_step_state()

    # ---- schedule -------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      original_inference_steps: int | None = None, timesteps: list[int] | None = None,
                      strength: float = 1.0):
        """Pick the loop's timesteps from the distillation schedule of `original_inference_steps` points
        (k·c − 1, c = T // original_steps), truncated by img2img `strength`, or take custom ones."""
        T = self.config.num_train_timesteps
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        original_steps = original_inference_steps if original_inference_steps is not None else \
            self.config.original_inference_steps
        if original_steps > T:
            raise ValueError(f"`original_steps`: {original_steps} cannot be larger than `self.config.train_timesteps`:"
                             f" {T} as the unet model trained with this scheduler can only handle maximal {T} timesteps.")
        c = T // original_steps
        origin = np.asarray(list(range(1, int(original_steps * strength) + 1))) * c - 1  # the distillation grid
        if timesteps is not None:
            timesteps = self._custom_timesteps(timesteps, origin, original_steps, strength)
        else:
            timesteps = self._spaced_timesteps(num_inference_steps, origin, original_steps, strength)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.long)
        self._set_tables(timesteps, device)

    def _spaced_timesteps(self, n, origin, original_steps, strength) -> np.ndarray:
        """n points evenly spaced (floor of index) along the reversed distillation grid."""
        T = self.config.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{type(self).__name__}: num_inference_steps must be a positive int, got {n!r}.")
        if n > T:
            raise ValueError(f"`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`: {T} as "
                             f"the unet model trained with this scheduler can only handle maximal {T} timesteps.")
        if len(origin) // n < 1:
            raise ValueError(f"The combination of `original_steps x strength`: {original_steps} x {strength} is smaller "
                             f"than `num_inference_steps`: {n}. Make sure to either reduce `num_inference_steps` to a "
                             f"value smaller than {int(original_steps * strength)} or increase `strength` to a value "
                             f"higher than {float(n / original_steps)}.")
        if n > original_steps:
            raise ValueError(f"`num_inference_steps`: {n} cannot be larger than `original_inference_steps`: "
                             f"{original_steps} because the final timestep schedule will be a subset of the "
                             f"`original_inference_steps`-sized initial timestep schedule.")
        self.num_inference_steps = n
        self.custom_timesteps = False
        origin = origin[::-1].copy()
        return origin[np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)]

    def _custom_timesteps(self, timesteps, origin, original_steps, strength) -> np.ndarray:
        """Custom descending timesteps (warnings as diffusers when they leave the distillation grid)."""
        T = self.config.num_train_timesteps
        timesteps = list(timesteps)
        if len(timesteps) == 0:
            raise ValueError("`custom_timesteps` must be a non-empty list in descending order.")
        if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
            raise ValueError("`custom_timesteps` must be in descending order.")
        if timesteps[0] >= T:
            raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {T}.")
        if strength == 1.0 and timesteps[0] != T - 1:
            logger.warning(f"The first timestep on the custom timestep schedule is {timesteps[0]}, not "
                           f"`self.config.num_train_timesteps - 1`: {T - 1}. You may get unexpected results.")
        off_grid = [t for t in timesteps[1:] if t not in set(origin)]
        if off_grid:
            logger.warning(f"The custom timestep schedule contains the following timesteps which are not on the "
                           f"original training/distillation timestep schedule: {off_grid}.")
        if len(timesteps) > original_steps:
            logger.warning(f"The number of timesteps in the custom timestep schedule is {len(timesteps)}, which exceeds "
                           f"the length of the timestep schedule used for training: {original_steps}.")
        timesteps = np.array(timesteps, dtype=np.int64)
        self.num_inference_steps = len(timesteps)
        self.custom_timesteps = True
        t_start = max(self.num_inference_steps - min(int(self.num_inference_steps * strength), self.num_inference_steps), 0)
        return timesteps[t_start * self.order:]

    def _set_tables(self, timesteps: np.ndarray, device):
        """Per-step device tables: √ᾱ_t, √(1-ᾱ_t), c_skip, c_out, and the re-noising weights to t'."""
        ab = self.alphas_cumprod
        t = torch.from_numpy(timesteps).long()
        prev = torch.cat([t[1:], t[-1:]])  # diffusers re-noises the last step to its own t (then drops it)
        ab_t, ab_prev = ab[t], ab[prev]
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
        # diffusers decides "last step" by num_inference_steps, which custom timesteps with strength < 1 exceed
        last = torch.arange(len(t)) == self.num_inference_steps - 1
        renoise_x = torch.where(last, torch.ones(()), ab_prev.sqrt())
        renoise_z = torch.where(last, torch.zeros(()), (1 - ab_prev).sqrt())
        self._draws_noise = (~last).tolist()  # host side: the final step draws no noise
        table = torch.stack([ab_t.sqrt(), (1 - ab_t).sqrt(), c_skip, c_out, renoise_x, renoise_z], dim=1)
        self._coefficients = table.to(device)  # columns: √ᾱ_t, √(1-ᾱ_t), c_skip, c_out, a_prev, b_prev
        self._reset_step_state()

    def get_scalings_for_boundary_condition_discrete(self, timestep):
        """(c_skip, c_out) at `timestep`: c_skip = σ_d²/((s t)² + σ_d²), c_out = s t/√((s t)² + σ_d²)."""
        self.sigma_data = SIGMA_DATA
        scaled = timestep * self.config.timestep_scaling
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    # ---- the update -----------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True, variance_noise: torch.Tensor | None = None):
        """x_t -> (x_{t'}, f(x_t, t)). `variance_noise` replaces the draw from `generator` (graph replays)."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler")
        self._init_step_index(timestep)
        row = self._at_row()
        sqrt_ab, sqrt_one_minus_ab, c_skip, c_out, renoise_x, renoise_z = row.unbind()
        x0 = self._predict_x0(model_output, sample, sqrt_ab, sqrt_one_minus_ab)
        denoised = c_out * x0 + c_skip * sample  # f(x_t, t)
        prev = renoise_x * denoised
        if self._draws_noise[min(self._host_step, len(self._draws_noise) - 1)]:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=denoised.dtype)
            prev = prev + renoise_z * variance_noise
        self._advance()
        return LCMSchedulerOutput(prev_sample=prev, denoised=denoised) if return_dict else (prev, denoised)

    def _at_row(self) -> torch.Tensor:
        return self._coefficients.index_select(0, self._step.view(1)).view(-1)

    def _predict_x0(self, model_output, sample, sqrt_ab, sqrt_one_minus_ab):
        """x̂_0 from ε, v or x_0 (x_t = √ᾱ x_0 + √(1-ᾱ) ε), then the threshold / clip stage."""
        cfg = self.config
        if cfg.prediction_type == "epsilon":
            x0 = (sample - sqrt_one_minus_ab * model_output) / sqrt_ab
        elif cfg.prediction_type == "v_prediction":
            x0 = sqrt_ab * sample - sqrt_one_minus_ab * model_output
        else:
            x0 = model_output
        return self._clip(x0)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Not with dynamic thresholding (a quantile)."""
        return not self.config.thresholding and set(step_kwargs) <= {"generator", "variance_noise"}

    def _fused_table(self) -> torch.Tensor:
        """Per step: P = clamp(x̂_0), D = f(x_t, t) = c_out P + c_skip x (written as `denoised`),
        x' = a_prev D + b_prev z."""
        def build():
            sqrt_ab, sqrt_one_minus_ab, c_skip, c_out, renoise_x, renoise_z = self._coefficients.unbind(1)
            w_x, w_m = prediction_weights(self.config.prediction_type, sqrt_ab, sqrt_one_minus_ab)
            return fused_table(rows(len(sqrt_ab), sqrt_ab.device, PX=w_x, PM=w_m, CLIP=self.config.clip_sample_range,
                                    DX=c_skip, DP=c_out, XD=renoise_x, XZ=renoise_z))

        return self._fused_table_cached((), build)

    def _fused_launch(self, model_output, timestep, sample, generator=None, variance_noise=None) -> FusedLaunch:
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        self._init_step_index(timestep)
        dtype = torch.promote_types(sample.dtype, model_output.dtype)  # f(x_t, t)'s dtype in step()
        noise = None
        if self._draws_noise[min(self._host_step, len(self._draws_noise) - 1)]:
            noise = draw_noise(sample, model_output, generator, variance_noise, dtype=dtype)
        denoised = torch.empty(sample.shape, dtype=dtype, device=sample.device)
        return FusedLaunch(self._fused_table(), self._step, noise=noise, denoised=denoised,
                           clamp=self.config.clip_sample)

    def previous_timestep(self, timestep) -> torch.Tensor:
        """t' = the timestep after `timestep` in the schedule (-1 after the last), on the device."""
        index = self.index_for_timestep(timestep)
        padded = torch.cat([self.timesteps, self.timesteps.new_full((1,), -1)])
        return padded.index_select(0, (index + 1).view(1))[0]
