"""LMS: the linear multistep sampler of k-diffusion (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", 2022; Crowson's k-diffusion `sample_lms`).

Symbols: x = x_0 + σ ε; the probability-flow ODE dx/dσ = d(x, σ) = (x - x̂_0) / σ. With the last
r derivatives d_{i}, d_{i-1}, ..., d_{i-r+1} (r = min(i+1, order)) at σ_i, σ_{i-1}, ..., the step
integrates their Lagrange interpolant over [σ_i, σ_{i+1}]:

    x_{i+1} = x_i + Σ_k c_{i,k} d_{i-k},   c_{i,k} = ∫_{σ_i}^{σ_{i+1}} Π_{j≠k} (τ - σ_{i-j}) / (σ_{i-k} - σ_{i-j}) dτ.

The integrand is a polynomial of degree r-1, so Gauss–Legendre quadrature with ⌈r/2⌉ or more nodes
is exact: the table c_{i,k} is computed once in set_timesteps without scipy (diffusers calls
scipy.integrate.quad per step and coefficient). The derivatives live in a device tensor of shape
(order, *sample.shape), newest first; step() is x + Σ_k c[i, k] D[k], a row of the table applied.
"""

from __future__ import annotations

import warnings
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
    broadcast_to_sample,
    check_choice,
    check_num_inference_steps,
    check_sigma_options,
    interpolated_sigmas,
    predict_x0_from_sigma,
    refuse_custom_schedule,
)
from .fused import MAX_HISTORY, FusedLaunch, derivative_columns, f64, fused_table, rows


@dataclass
class LMSDiscreteSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def lms_coefficients(sigmas: np.ndarray, order: int) -> np.ndarray:
    """c[i, k] for every step i (rows) and history slot k < order, in float64 (zeros where k >= r_i)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    i = np.arange(len(sigmas) - 1)
    lo, hi = sigmas[i, None], sigmas[i + 1, None]
    nodes, weights = np.polynomial.legendre.leggauss(max(2, order))
    tau = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)  # Gauss–Legendre nodes on [σ_i, σ_{i+1}], (steps, nodes)
    past = sigmas[np.clip(i[:, None] - np.arange(order), 0, None)]  # σ_{i-j}, (steps, order)
    used = np.arange(order) < np.minimum(i + 1, order)[:, None]  # j < r_i
    coefficients = np.zeros((len(i), order))
    with np.errstate(divide="ignore", invalid="ignore"):  # unused slots may divide by zero; masked below
        for k in range(order):
            basis = np.ones_like(tau)  # Lagrange basis ℓ_k(τ) = Π_{j≠k} (τ - σ_{i-j}) / (σ_{i-k} - σ_{i-j})
            for j in range(order):
                if j != k:
                    factor = (tau - past[:, j, None]) / (past[:, k, None] - past[:, j, None])
                    basis *= np.where(used[:, j, None], factor, 1.0)
            coefficients[:, k] = np.where(used[:, k], 0.5 * (hi - lo)[:, 0] * (basis @ weights), 0.0)
    return coefficients


class LMSDiscreteScheduler(SigmaSchedulerMixin):
    """Linear multistep sampling in σ.

    Example:
        >>> scheduler = LMSDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        >>> scheduler.set_timesteps(50)
        >>> x = x * scheduler.init_noise_sigma
        >>> for t in scheduler.timesteps:
        ...     eps = unet(scheduler.scale_model_input(x, t), t).sample
        ...     x = scheduler.step(eps, t, x).prev_sample
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
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
    ):
        name = type(self).__name__
        check_sigma_options(self.config, name)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES, name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(allowed=CLASSIC_BETA_SCHEDULES)
        self.use_karras_sigmas = use_karras_sigmas
        self.is_scale_input_called = False
        self.set_timesteps(num_train_timesteps)

    # ---- schedule ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **custom):
        """Timesteps and σ of the loop (σ_n = 0 appended) and the c[i, k] table for order 4."""
        name = type(self).__name__
        refuse_custom_schedule(name, **custom)
        check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps, name)
        self.num_inference_steps = num_inference_steps
        timesteps, sigmas, _ = interpolated_sigmas(self.config, self.alphas_cumprod, num_inference_steps)
        self._sigmas_host = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(self._sigmas_host).to(device)
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.float32)
        self._coefficient_tables: dict[int, torch.Tensor] = {}
        self._coefficients(4)
        self._derivatives = None  # (order, *shape) device history, newest first
        self._reset_step_state()

    def _coefficients(self, order: int) -> torch.Tensor:
        """The (steps, order) table c[i, k] on the device, built once per order (host math, no device read)."""
        if order not in self._coefficient_tables:
            table = lms_coefficients(self._sigmas_host, order)
            self._coefficient_tables[order] = torch.from_numpy(table.astype(np.float32)).to(self.sigmas.device)
        return self._coefficient_tables[order]

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """c[t, current_order] for a multistep of `order` (diffusers' public helper), in float64."""
        return float(lms_coefficients(self._sigmas_host[: t + 2], order)[t, current_order])

    # ---- the update ---------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, order: int = 4,
             return_dict: bool = True):
        """x_{i+1} = x_i + Σ_k c[i, k] d_{i-k}, d = (x - x̂_0) / σ."""
        if not self.is_scale_input_called:
            warnings.warn("The `scale_model_input` function should be called before `step` to ensure correct "
                          "denoising. See `StableDiffusionPipeline` for a usage example.")
        self._init_step_index(timestep)
        sigma = self._at(self.sigmas)
        x0 = predict_x0_from_sigma(self.config.prediction_type, model_output, sample, sigma)
        derivative = (sample - x0) / sigma
        history = self._push_derivative(derivative, order)
        c = self._at(self._coefficients(order))  # (order,)
        prev_sample = sample + (broadcast_to_sample(c, history) * history[:order]).sum(0)
        self._advance()
        if not return_dict:
            return (prev_sample, x0)
        return LMSDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _push_derivative(self, derivative: torch.Tensor, order: int) -> torch.Tensor:
        """D <- [d, D_0, ..., D_{L-2}] on the device. Slots never written are zeros, so a history shorter
        than the order contributes nothing (diffusers zips the coefficients with the derivatives it has)."""
        history = self._derivative_buffer(order, derivative.shape, derivative.dtype, derivative.device)
        self._derivatives = torch.cat([derivative.unsqueeze(0), history[:-1]])
        return self._derivatives

    def _derivative_buffer(self, order: int, shape, dtype, device) -> torch.Tensor:
        """The history before a push: zeros at first (or for a new shape); a larger order than before adds
        empty older slots."""
        history = self._derivatives
        if history is None or history.shape[1:] != shape:
            history = torch.zeros((order, *shape), dtype=dtype, device=device)
        elif history.shape[0] < order:
            history = torch.cat([history, history.new_zeros((order - history.shape[0], *shape))])
        return history

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, order: int = 4, **step_kwargs) -> bool:
        history = self._derivatives
        return not step_kwargs and 1 <= order and max(order, 0 if history is None else len(history)) <= MAX_HISTORY

    def _fused_table(self, order: int) -> torch.Tensor:
        """Per step: D = (x − x̂_0)/σ pushed; x' = x + c_0 D + Σ_{k≥1} c_k H_{k−1} (the table's row i)."""
        def build():
            sigma = self.sigmas[:-1]
            c = f64(self._coefficients(order))
            return fused_table(rows(len(sigma), sigma.device, **derivative_columns(self.config.prediction_type, sigma),
                                    XX=1, XD=c[:, 0], XH=list(c[:, 1:].T), PUSH=1))

        return self._fused_table_cached(order, build)

    def _fused_launch(self, model_output, timestep, sample, order: int = 4) -> FusedLaunch:
        self._init_step_index(timestep)
        dtype = torch.promote_types(sample.dtype, model_output.dtype)  # the derivative's dtype in step()
        self._derivatives = self._derivative_buffer(order, sample.shape, dtype, sample.device)  # shifted in place
        return FusedLaunch(self._fused_table(order), self._step, history=self._derivatives)
