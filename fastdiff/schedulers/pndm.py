"""PNDM: Pseudo Numerical Methods for Diffusion Models on Manifolds (Liu, Ren, Lin & Zhao, 2022).

Symbols: ᾱ_t = Π α_s, ε_t the model output at step t (ε, or v converted to ε), x_t the sample.
Every step applies the paper's transfer function φ (eq. 11) from t to t' with a combined ε':

    φ(x_t, ε', t, t') = √(ᾱ_{t'}/ᾱ_t) x_t - (ᾱ_{t'} - ᾱ_t) ε' / (ᾱ_t √(1-ᾱ_{t'}) + √(ᾱ_t (1-ᾱ_t) ᾱ_{t'}))

ε' is a fixed linear combination of the current model output m, the PRK accumulator A and the
history E_0, E_1, E_2 of earlier model outputs (newest first):

    PRK  (4 calls per step, eq. 13):  ε' = e_1, e_2, e_3, then (e_1 + 2 e_2 + 2 e_3 + e_4) / 6
    PLMS (eq. 12):                    ε' = (55 e_t - 59 e_{t-δ} + 37 e_{t-2δ} - 9 e_{t-3δ}) / 24
    PLMS warm-up (skip_prk_steps):    ε' = e_t; then (e_t + e_{t-δ})/2 at t-δ (a Heun step);
                                       then the 2nd and 3rd order Adams–Bashforth weights.

Graph-safe design. diffusers drives PRK/PLMS with a Python `counter` and Python lists. Here the
counter is a device tensor (`step_index`), and set_timesteps writes one table row per call:
the weights of ε' on [m, A, E_0, E_1, E_2], the accumulator update A' = a_0 A + a_1 m, flags for
"push m onto E", "stash x" and "start from the stashed x", and where t_base / t' sit relative to
the timestep passed in. step() gathers its row and applies it with torch.where: the same device
work every call, whatever the phase. As in diffusers (which has no begin index for PNDM), the
counter starts at 0 after set_timesteps.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..configuration import register_to_config
from .base import (
    CLASSIC_BETA_SCHEDULES,
    KARRAS_COMPATIBLES,
    TIMESTEP_SPACINGS,
    SchedulerMixin,
    SchedulerOutput,
    add_noise_with_alphas,
    check_choice,
    check_num_inference_steps,
    refuse_custom_schedule,
)
from .fused import FusedLaunch, f64, fused_table, rows

# PLMS weights on [m, E_0, E_1, E_2] by how many model outputs exist (Adams–Bashforth, orders 1-4)
ADAMS_BASHFORTH = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
                   4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
# PRK: ε' on [m, A] and the accumulator update [a_0, a_1], by position in the 4-call group (RK4)
PRK_COMBINE = [[1, 0], [1, 0], [1, 0], [1 / 6, 1]]
PRK_ACCUMULATE = [[0, 1 / 6], [1, 1 / 3], [1, 1 / 3], [0, 0]]


class PNDMScheduler(SchedulerMixin):
    """Pseudo-numerical (PRK warm-up + PLMS) sampling; Stable Diffusion 1.x's default scheduler.

    Example:
        >>> scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1)
        >>> scheduler.set_timesteps(50)      # 51 calls: the warm-up repeats one timestep
        >>> for t in scheduler.timesteps:
        ...     x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    """

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    pndm_order = 4

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
    ):
        name = type(self).__name__
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"), name)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, name)
        self._set_betas(allowed=CLASSIC_BETA_SCHEDULES)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.prk_timesteps = self.plms_timesteps = self.timesteps = None
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

    @property
    def counter(self) -> int:
        """Calls since set_timesteps (host side; the device copy is `step_index`)."""
        return self._host_step

    # ---- schedule ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **custom):
        """PRK timesteps (unless skip_prk_steps) then PLMS timesteps; writes the per-call table."""
        name, cfg = type(self).__name__, self.config
        refuse_custom_schedule(name, **custom)
        check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps, name)
        if not cfg.skip_prk_steps and num_inference_steps < self.pndm_order:
            raise ValueError(f"{name}: the Runge-Kutta warm-up needs num_inference_steps >= {self.pndm_order}, got "
                             f"{num_inference_steps}; use skip_prk_steps=True for fewer steps.")
        self.num_inference_steps = n = num_inference_steps
        ascending = self._ascending_timesteps(n)
        stride = cfg.num_train_timesteps // n  # δ
        if cfg.skip_prk_steps:
            self.prk_timesteps = np.array([], dtype=np.int64)
            # the first PLMS step is repeated: once forward (Euler), once as its Heun correction
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
            rows = [self._warmup_row(c, stride) for c in range(len(self.plms_timesteps))]
        else:
            # RK4 on the last 4 timesteps: t, t-δ/2, t-δ/2, t-δ per group of 4 calls
            half = np.tile(np.array([0, stride // 2]), self.pndm_order)
            prk = np.array(ascending[-self.pndm_order:]).repeat(2) + half
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
            rows = [self._prk_row(c, stride) for c in range(len(self.prk_timesteps))]
            rows += [self._plms_row(4, stride) for _ in self.plms_timesteps]
        timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._write_tables(rows, self.timesteps.device)
        self._reset_step_state()
        self._step = torch.zeros((), dtype=torch.long, device=self.timesteps.device)
        self._history = None

    def _ascending_timesteps(self, n: int) -> np.ndarray:
        """The n timesteps in ascending order, by timestep_spacing (PNDM's own rounding)."""
        T, cfg = self.config.num_train_timesteps, self.config
        if cfg.timestep_spacing == "linspace":
            return np.linspace(0, T - 1, n).round().astype(np.int64)
        if cfg.timestep_spacing == "leading":
            return (np.arange(0, n) * (T // n)).round().astype(np.int64) + cfg.steps_offset
        return np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1

    # One table row per call: ε' weights on [m, A, E0, E1, E2], accumulator [a0, a1], flags, and
    # t_base = base_abs (if >= 0) else t + base_shift, t' = t - prev_shift.
    @staticmethod
    def _row(weights, accumulate=(0.0, 0.0), push=True, stash=False, from_stash=False,
             base_abs=-1, base_shift=0, prev_shift=0):
        return dict(weights=list(weights) + [0.0] * (5 - len(weights)), accumulate=list(accumulate), push=push,
                    stash=stash, from_stash=from_stash, base_abs=base_abs, base_shift=base_shift,
                    prev_shift=prev_shift)

    def _prk_row(self, c: int, stride: int):
        """Call c of the PRK phase: RK4 stage c % 4, all from the sample stashed at the group's start."""
        r = c % 4
        m_weight, acc_weight = PRK_COMBINE[r]
        return self._row([m_weight, acc_weight], PRK_ACCUMULATE[r], push=r == 0, stash=r == 0, from_stash=r != 0,
                         base_abs=int(self.prk_timesteps[c // 4 * 4]), prev_shift=0 if c % 2 else stride // 2)

    def _plms_row(self, outputs: int, stride: int):
        """A linear multistep call with `outputs` model outputs available (the new one included)."""
        ab = ADAMS_BASHFORTH[outputs]
        return self._row([ab[0], 0.0, *ab[1:]], prev_shift=stride)

    def _warmup_row(self, c: int, stride: int):
        """skip_prk_steps: call 0 steps forward with ε' = m, call 1 redoes it from the stashed x with
        ε' = (m + E_0)/2 (t_base = t + δ, t' = t), then Adams–Bashforth of growing order."""
        if c == 0:
            return self._row([1.0], stash=True, prev_shift=stride)
        if c == 1:
            return self._row([0.5, 0.0, 0.5], push=False, from_stash=True, base_shift=stride)
        return self._plms_row(min(c, 4), stride)

    def _write_tables(self, rows, device):
        def table(key, dtype):
            return torch.tensor([row[key] for row in rows], dtype=dtype, device=device)

        self._weights = table("weights", torch.float32)  # (calls, 5): ε' on [m, A, E0, E1, E2]
        self._accumulate = table("accumulate", torch.float32)  # (calls, 2): A' = a0 A + a1 m
        self._push, self._stash, self._from_stash = (table(k, torch.bool) for k in ("push", "stash", "from_stash"))
        self._base_abs, self._base_shift, self._prev_shift = (
            table(k, torch.long) for k in ("base_abs", "base_shift", "prev_shift"))
        self._alpha_bar = self.alphas_cumprod.to(device)
        self._final_alpha_bar = self.final_alpha_cumprod.to(device)

    # ---- the update ---------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True):
        """One PRK or PLMS call, as the table row at the device counter says."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        E, X, A = self._state(sample)
        w = self._at(self._weights)
        # ε' = w_m m + w_A A + Σ_k w_k E_k  (still v if the model predicts v)
        combined = w[0] * model_output + w[1] * A + w[2] * E[0] + w[3] * E[1] + w[4] * E[2]
        x = torch.where(self._at(self._from_stash), X, sample)
        prev_sample = self._transfer(x, combined, timestep)

        # state for the next call: stash x, accumulate RK4 stages, push m onto the history
        a0, a1 = self._at(self._accumulate)
        self._history = (
            torch.where(self._at(self._push), torch.stack([model_output, E[0], E[1]]), E),
            torch.where(self._at(self._stash), sample, X),
            a0 * A + a1 * model_output,
        )
        self._advance()
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def step_prk(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                 return_dict: bool = True):
        """A Runge-Kutta warm-up call (the table decides; kept for diffusers' API)."""
        return self.step(model_output, timestep, sample, return_dict)

    def step_plms(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                  return_dict: bool = True):
        """A linear multistep call; like diffusers, refused before the 12 PRK calls are done."""
        if not self.config.skip_prk_steps and self._host_step < len(self.prk_timesteps if self.prk_timesteps
                                                                     is not None else []):
            raise ValueError(f"{type(self)} can only be run AFTER scheduler has been run in 'prk' mode for at least "
                             "12 iterations.")
        return self.step(model_output, timestep, sample, return_dict)

    def _state(self, sample):
        """(E, X, A): history (3, *shape), stashed sample, RK4 accumulator; zeros before the first call."""
        if self._history is None or self._history[1].shape != sample.shape:
            zeros = torch.zeros_like(sample)
            self._history = (torch.zeros((3, *sample.shape), dtype=sample.dtype, device=sample.device), zeros, zeros)
        return self._history

    def _transfer(self, x, combined, timestep):
        """φ(x_t, ε', t_base, t') of eq. 11, ᾱ gathered on the device from the timestep passed in."""
        t = torch.as_tensor(timestep, device=self._alpha_bar.device).long()
        base_abs = self._at(self._base_abs)
        t_base = torch.where(base_abs >= 0, base_abs, t + self._at(self._base_shift))
        t_prev = t - self._at(self._prev_shift)
        ab_t = self._alpha_bar.index_select(0, t_base.view(1)).view(())
        ab_prev = torch.where(t_prev >= 0, self._alpha_bar.index_select(0, t_prev.clamp(min=0).view(1)).view(()),
                              self._final_alpha_bar)
        eps = combined
        if self.config.prediction_type == "v_prediction":  # ε = √ᾱ v + √(1-ᾱ) x
            eps = ab_t**0.5 * combined + (1 - ab_t) ** 0.5 * x
        denominator = ab_t * (1 - ab_prev) ** 0.5 + (ab_t * (1 - ab_t) * ab_prev) ** 0.5
        return (ab_prev / ab_t) ** 0.5 * x - (ab_prev - ab_t) * eps / denominator

    # ---- the fused step (fused.py) ----------------------------------------------------------------------

    def supports_fused_step(self, **step_kwargs) -> bool:
        return not step_kwargs

    def _fused_table(self) -> torch.Tensor:
        """Per call c: D = m (pushed onto E when the row pushes), S = the stashed x or x (stashed when the row
        stashes), A' = a_0 A + a_1 m, and x' = φ(S, ε', t_base, t') of eq. 11 with ε' = w·[m, A, E_0, E_1, E_2]
        (for v prediction ε = √ᾱ_t ε' + √(1 − ᾱ_t) S) — φ is linear in S and ε.

        step() reads ᾱ at the timestep it is given while its counter starts at 0, also when a loop starts
        mid-schedule (image-to-image, as diffusers' PNDM); the table takes call c at timesteps[begin + c], the
        timestep every loop over `timesteps[begin_index:]` passes."""
        def build():
            begin = self.begin_index or 0
            calls = len(self.timesteps) - begin
            t = self.timesteps[begin:].long()
            base_abs = self._base_abs[:calls]
            t_base = torch.where(base_abs >= 0, base_abs, t + self._base_shift[:calls])
            t_prev = t - self._prev_shift[:calls]
            ab_t = self._alpha_bar[t_base]
            ab_prev = torch.where(t_prev >= 0, self._alpha_bar[t_prev.clamp(min=0)], self._final_alpha_bar)
            denominator = ab_t * (1 - ab_prev) ** 0.5 + (ab_t * (1 - ab_t) * ab_prev) ** 0.5
            k_eps = -f64(ab_prev - ab_t) / f64(denominator)  # x' = k_x S + k_eps ε
            k_x = f64((ab_prev / ab_t) ** 0.5)
            if self.config.prediction_type == "v_prediction":
                k_x, k_eps = k_x + k_eps * f64((1 - ab_t) ** 0.5), k_eps * f64(ab_t**0.5)
            w = f64(self._weights[:calls]) * k_eps[:, None]  # on [m, A, E_0, E_1, E_2]
            from_stash, (a_0, a_1) = f64(self._from_stash[:calls]), self._accumulate[:calls].unbind(1)
            return fused_table(rows(calls, t.device, PM=1, DP=1, SX=1 - from_stash, SS=from_stash, AA=a_0, AM=a_1,
                                    XS=k_x, XM=w[:, 0], XA=w[:, 1], XH=list(w[:, 2:].T), PUSH=self._push[:calls],
                                    STASH=self._stash[:calls]))

        return self._fused_table_cached(self.begin_index or 0, build)

    def _fused_launch(self, model_output, timestep, sample) -> FusedLaunch:
        """The row is read at the call counter (step() reads ᾱ at the timestep passed in: the same in a loop)."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if self._history is None or self._history[1].shape != sample.shape:  # E, X, A: separate buffers
            self._history = (sample.new_zeros((3, *sample.shape)), torch.zeros_like(sample), torch.zeros_like(sample))
        E, X, A = self._history
        accumulator = None if self.config.skip_prk_steps else A  # without Runge–Kutta calls A stays 0
        return FusedLaunch(self._fused_table(), self._step, history=E, stash=X, accumulator=accumulator,
                           read_oldest=True)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return add_noise_with_alphas(self.alphas_cumprod, original_samples, noise, timesteps)
