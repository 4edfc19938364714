"""DDIM: Denoising Diffusion Implicit Models (Song, Meng & Ermon, 2021), the generalised (η) sampler.

Symbols (paper, eq. 12): ᾱ_t = Π α_s (alphas_cumprod; the paper's α_t), t' = t - T/n the previous
timestep (ᾱ_{t'} = 1, or ᾱ_0, once t' < 0), x̂_0 and ε̂ the model's estimates of x_0 and ε:

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ_t²) ε̂ + σ_t z,
    σ_t = η √((1-ᾱ_{t'}) / (1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t'})          (eq. 16; η = 0 is deterministic DDIM).

The update is a pure function of t, so its device tables are indexed by the timestep value itself:
ᾱ_t, ᾱ_{t'} and σ_t²(η=1) for every t in [0, T). step() gathers one row with the t it is given.
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
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    AlphaBarSchedulerMixin,
    check_choice,
    check_num_inference_steps,
    refuse_custom_schedule,
    spaced_timesteps,
)
from .fused import FusedLaunch, draw_noise, f64, fused_table, prediction_weights, rows


@dataclass
class DDIMSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DDIMScheduler(AlphaBarSchedulerMixin):
    """DDIM sampling (deterministic at eta=0).

    Example:
        >>> scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        >>> scheduler.set_timesteps(50)
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
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
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES, name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(rescale_betas_zero_snr, CLASSIC_BETA_SCHEDULES)
        # ᾱ after the last step: 1 (a clean sample) or ᾱ_0, as the checkpoint was trained
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **custom):
        """The n timesteps of the loop, spaced by `timestep_spacing`; builds the per-timestep tables.

        DDIM takes no custom `timesteps=` / `sigmas=` (as in diffusers): passing one is a ValueError.
        """
        refuse_custom_schedule(type(self).__name__, **custom)
        T = self.config.num_train_timesteps
        check_num_inference_steps(num_inference_steps, T, type(self).__name__)
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config.timestep_spacing, T, num_inference_steps, self.config.steps_offset)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._build_tables(T // num_inference_steps, self.timesteps.device)
        self._reset_step_state()

    def _build_tables(self, stride: int, device):
        """ᾱ_t, ᾱ_{t'} (t' = t - stride) and σ_t²(η=1) for every t in [0, T), on the device."""
        ab = self.alphas_cumprod
        t_prev = torch.arange(len(ab)) - stride
        ab_prev = torch.where(t_prev >= 0, ab[t_prev.clamp(min=0)], self.final_alpha_cumprod)
        variance = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)  # σ_t² at η = 1 (eq. 16)
        self._alpha_bar = ab.to(device)
        self._alpha_bar_prev = ab_prev.to(device)
        self._variance = variance.to(device)

    # ---- the update -------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """x_t -> x_{t'} by eq. 12; adds σ_t z when eta > 0 (z from `generator`, or `variance_noise`)."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        t = torch.as_tensor(timestep, device=self._alpha_bar.device).long().view(1)
        ab_t, ab_prev, variance = (table.index_select(0, t).view(()) for table in
                                   (self._alpha_bar, self._alpha_bar_prev, self._variance))

        x0, eps = self._predict(model_output, sample, ab_t)
        # ---- stage: clip or dynamically threshold x̂_0 (separate from the linear update) ----
        x0 = self._clip(x0)
        if use_clipped_model_output:  # ε̂ consistent with the clipped x̂_0
            eps = (sample - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5

        std_dev_t = eta * variance**0.5  # σ_t
        prev_sample = ab_prev**0.5 * x0 + (1 - ab_prev - std_dev_t**2) ** 0.5 * eps
        if eta > 0:  # host decision on a Python float
            if variance_noise is not None and generator is not None:
                raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                                 "`generator` or `variance_noise` stays `None`.")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise
        if not return_dict:
            return (prev_sample, x0)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _predict(self, model_output, sample, ab_t):
        """(x̂_0, ε̂) from the model's parameterisation, x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - (1 - ab_t) ** 0.5 * model_output) / ab_t**0.5, model_output
        if kind == "sample":
            return model_output, (sample - ab_t**0.5 * model_output) / (1 - ab_t) ** 0.5
        # v = √ᾱ ε - √(1-ᾱ) x_0
        return (ab_t**0.5 * sample - (1 - ab_t) ** 0.5 * model_output,
                ab_t**0.5 * model_output + (1 - ab_t) ** 0.5 * sample)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        """Not with dynamic thresholding (a quantile)."""
        options = {"eta", "use_clipped_model_output", "generator", "variance_noise"}
        return not self.config.thresholding and set(step_kwargs) <= options

    def _fused_table(self, eta: float = 0.0, use_clipped_model_output: bool = False) -> torch.Tensor:
        """Per timestep t (as the tables): D = x̂_0 = clamp(PX x + PM m), ε̂ = e_x x + e_m m (or, with
        use_clipped_model_output, (x − √ᾱ_t D)/√(1−ᾱ_t)); x' = √ᾱ_{t'} D + k ε̂ + σ_t z, k = √(1 − ᾱ_{t'} − σ_t²)."""
        def build():
            ab, ab_prev = self._alpha_bar, self._alpha_bar_prev
            kind = self.config.prediction_type
            w_x, w_m = prediction_weights(kind, ab**0.5, (1 - ab) ** 0.5)
            std_dev = eta * self._variance**0.5
            k = f64((1 - ab_prev - std_dev**2) ** 0.5)
            if use_clipped_model_output:  # ε̂ = x/√(1−ᾱ) − √ᾱ/√(1−ᾱ) D
                e_x, e_d, e_m = 1 / f64((1 - ab) ** 0.5), -f64(ab**0.5) / f64((1 - ab) ** 0.5), 0.0
            else:
                (e_x, e_m), e_d = prediction_weights(kind, ab**0.5, (1 - ab) ** 0.5, target="eps"), 0.0
            return fused_table(rows(len(ab), ab.device, PX=w_x, PM=w_m, CLIP=self.config.clip_sample_range, DP=1,
                                    XX=k * e_x, XM=k * e_m, XD=f64(ab_prev**0.5) + k * e_d, XZ=std_dev))

        return self._fused_table_cached((float(eta), bool(use_clipped_model_output)), build)

    def _fused_launch(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
                      generator=None, variance_noise=None) -> FusedLaunch:
        """The row is read at the timestep itself (DDIM's tables are indexed by t)."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        table = self._fused_table(eta, use_clipped_model_output)
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                                 "`generator` or `variance_noise` stays `None`.")
            noise = draw_noise(sample, model_output, generator, variance_noise)
        t = torch.as_tensor(timestep, device=table.device).long().reshape(())
        return FusedLaunch(table, t, noise=noise, clamp=self.config.clip_sample)

    def _fused_finish(self):
        """DDIM keeps no step index: the next call brings its own timestep."""
