"""Euler: Algorithm 2 of Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models" (2022), first-order, with optional stochastic churn.

Symbols: x = x_0 + σ ε; the model sees x / √(σ² + 1). One step from σ_i to σ_{i+1}:

    γ_i = min(S_churn / N, √2 - 1) if S_tmin ≤ σ_i ≤ S_tmax else 0,   σ̂ = σ_i (1 + γ_i)
    x̂ = x_i + √(σ̂² - σ_i²) · S_noise · z                              (only when γ_i > 0)
    d = (x̂ - x̂_0) / σ̂,   x_{i+1} = x̂ + (σ_{i+1} - σ̂) d

Device tables: `sigmas` (σ_0..σ_N, σ_N = 0 or σ_min) and `timesteps`; without churn and with ε
prediction a step is x + (σ_{i+1} - σ_i) ε̂, read from two adjacent entries of `sigmas`.
"""

from __future__ import annotations

import logging
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
    TIMESTEP_SPACINGS,
    SigmaSchedulerMixin,
    broadcast_to_sample,
    check_choice,
    check_num_inference_steps,
    check_sigma_options,
    convert_sigmas,
    predict_x0_from_sigma,
    sigma_timesteps,
    sigma_to_t,
    step_indices_for,
    vp_sigmas,
)
from .fused import FusedLaunch, draw_noise, f64, fused_table, rows, sigma_prediction_weights

logger = logging.getLogger(__name__)


@dataclass
class EulerDiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def check_integer_timestep(timestep, owner: str):
    """diffusers refuses loop indices (from enumerate) passed where a schedule timestep belongs."""
    if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
        raise ValueError(f"Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `{owner}.step()` "
                         "is not supported. Make sure to pass one of the `scheduler.timesteps` as a timestep.")


class EulerDiscreteScheduler(SigmaSchedulerMixin):
    """Euler sampling in σ (Karras et al. 2022, Algorithm 2).

    Example:
        >>> scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        >>> scheduler.set_timesteps(30)
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
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
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ):
        name = type(self).__name__
        check_sigma_options(self.config, name)
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample", "original_sample"), name)
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"), name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"), name)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), name)
        self._set_betas(rescale_betas_zero_snr, CLASSIC_BETA_SCHEDULES, sigma_space=True)
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas
        self.num_inference_steps = None
        self.is_scale_input_called = False
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy()).float()
        self._set_tables(timesteps, torch.cat([sigmas, sigmas.new_zeros(1)]), None)

    # ---- schedule ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None, sigmas: list[float] | None = None):
        """σ_0 > ... > σ_N of the loop: by spacing, or from custom `timesteps` or custom `sigmas`."""
        self._check_schedule_arguments(num_inference_steps, timesteps, sigmas)
        cfg = self.config
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        self.num_inference_steps = num_inference_steps
        log_sigmas = np.log(vp_sigmas(self.alphas_cumprod))
        if sigmas is not None:  # σ given (σ_N included): t from σ
            sigmas = np.array(sigmas).astype(np.float32)
            timesteps = sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            timesteps, sigmas = self._spaced_sigmas(num_inference_steps, timesteps, log_sigmas)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32)
        if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
            timesteps = 0.25 * sigmas[:-1].log()  # c_noise(σ) = ¼ ln σ (Karras et al. 2022, Table 1)
        else:
            timesteps = torch.from_numpy(np.asarray(timesteps).astype(np.float32))
        self._set_tables(timesteps, sigmas, device)

    def _check_schedule_arguments(self, num_inference_steps, timesteps, sigmas):
        cfg = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` should be set.")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas.")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if timesteps is not None and cfg[key]:
                raise ValueError(f"Cannot set `timesteps` with `config.{key} = True`.")
        if timesteps is not None and cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
            raise ValueError("Cannot set `timesteps` with `config.timestep_type = 'continuous'` and "
                             "`config.prediction_type = 'v_prediction'`.")
        if num_inference_steps is not None:
            check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps, type(self).__name__)
        elif len(timesteps if timesteps is not None else sigmas[1:]) == 0:
            raise ValueError("Custom `timesteps` / `sigmas` must hold at least one step.")

    def _spaced_sigmas(self, n: int, timesteps, log_sigmas):
        """(timesteps, σ with σ_N appended) from the spacing or custom timesteps, then use_*_sigmas."""
        cfg = self.config
        if timesteps is not None:
            timesteps = np.array(timesteps).astype(np.float32)
        else:
            timesteps = sigma_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset)
        train = vp_sigmas(self.alphas_cumprod)
        if cfg.interpolation_type == "linear":  # σ(t) linear in t between train timesteps
            sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        else:  # log_linear: n + 1 σ evenly spaced in log σ (diffusers' quirk: one more than the steps)
            sigmas = torch.linspace(np.log(train[-1]), np.log(train[0]), n + 1).exp().numpy()
        converted = convert_sigmas(cfg, sigmas, n)
        if converted is not None:
            sigmas, timesteps = converted, sigma_to_t(converted, log_sigmas)
        ab_0 = self.alphas_cumprod[0]
        sigma_last = float(((1 - ab_0) / ab_0) ** 0.5) if cfg.final_sigmas_type == "sigma_min" else 0.0
        return timesteps, np.concatenate([sigmas, [sigma_last]]).astype(np.float32)

    def _set_tables(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device):
        """Host tensors in, device tables out; a host copy of σ stays for host decisions (churn noise)."""
        self._sigmas_host = sigmas.numpy()
        self.timesteps, self.sigmas = timesteps.to(device), sigmas.to(device)
        self._reset_step_state()

    # ---- the update ---------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True,
             variance_noise: torch.Tensor | None = None):
        """One Euler step σ_i -> σ_{i+1}, with churn noise when s_churn > 0 and σ_i is in [s_tmin, s_tmax]."""
        check_integer_timestep(timestep, type(self).__name__)
        if not self.is_scale_input_called:
            logger.warning("The `scale_model_input` function should be called before `step` to ensure correct "
                           "denoising. See `StableDiffusionPipeline` for a usage example.")
        self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma, sigma_next = self._at(self.sigmas), self._at(self.sigmas, 1)

        gamma_max = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1)
        gamma = torch.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma_max, 0.0)  # on the device
        sigma_hat = sigma * (gamma + 1)
        if self._draws_churn_noise(gamma_max, s_tmin, s_tmax):
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                                              device=model_output.device, generator=generator)
            sample = sample + variance_noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        # ε prediction is taken at σ̂; diffusers' v prediction keeps σ
        kind = self.config.prediction_type
        x0 = predict_x0_from_sigma(kind, model_output, sample, sigma_hat if kind == "epsilon" else sigma)
        derivative = (sample - x0) / sigma_hat
        prev_sample = (sample + derivative * (sigma_next - sigma_hat)).to(model_output.dtype)
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _draws_churn_noise(self, gamma_max: float, s_tmin: float, s_tmax: float) -> bool:
        """Host decision (diffusers draws only when γ > 0): σ_i read from the host copy at the host counter,
        which tracks the device index whenever the loop starts at step 0 or at set_begin_index."""
        if gamma_max <= 0:
            return False
        sigma = self._sigmas_host[min(self._host_step, len(self._sigmas_host) - 1)]
        return bool(s_tmin <= sigma <= s_tmax)

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        return set(step_kwargs) <= {"s_churn", "s_tmin", "s_tmax", "s_noise", "generator", "variance_noise"}

    def _fused_table(self, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0) -> torch.Tensor:
        """x̂ = x + k z (churn), x' = x̂ + r (x̂ − x̂_0), r = (σ_{i+1} − σ̂)/σ̂, x̂_0 = w_x x̂ + w_m m:
        XX = 1 + r (1 − w_x), XM = −r w_m, XZ = k XX."""
        def build():
            sigma, sigma_next = self.sigmas[:-1], self.sigmas[1:]
            gamma_max = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1)
            gamma = torch.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma_max, 0.0)
            sigma_hat = sigma * (gamma + 1)
            kind = self.config.prediction_type
            w_x, w_m = sigma_prediction_weights(kind, sigma_hat if kind == "epsilon" else sigma)
            r = f64(sigma_next - sigma_hat) / f64(sigma_hat)
            k = s_noise * f64((sigma_hat**2 - sigma**2) ** 0.5)
            xx = 1 + r * (1 - w_x)
            return fused_table(rows(len(sigma), sigma.device, XX=xx, XM=-r * w_m, XZ=k * xx))

        return self._fused_table_cached((s_churn, s_tmin, s_tmax, s_noise), build)

    def _fused_launch(self, model_output, timestep, sample, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                      s_noise=1.0, generator=None, variance_noise=None) -> FusedLaunch:
        check_integer_timestep(timestep, type(self).__name__)
        self._init_step_index(timestep)
        gamma_max = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1)
        noise = None
        if self._draws_churn_noise(gamma_max, s_tmin, s_tmax):
            noise = draw_noise(sample, model_output, generator, variance_noise)
        return FusedLaunch(self._fused_table(s_churn, s_tmin, s_tmax, s_noise), self._step, noise=noise)

    # ---- training-time helpers -------------------------------------------------------------------

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ ε - √(1-ᾱ) x_0, ᾱ taken at the *step index* of each timestep (diffusers' indexing)."""
        check_integer_timestep(timesteps, type(self).__name__ + ".get_velocity")
        index = step_indices_for(timesteps, self.timesteps.to(sample.device))
        ab = self.alphas_cumprod.to(sample).index_select(0, index)
        return broadcast_to_sample(ab**0.5, sample) * noise - broadcast_to_sample((1 - ab) ** 0.5, sample) * sample
