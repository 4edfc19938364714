"""The fused scheduler step: one launch per denoising step applies classifier-free guidance and the update.

Every scheduler with a fused step writes its update as rows of one coefficient table; `ops.scheduler_step`
(Triton kernel `kernels/scheduler_step.py`, or `scheduler_step_ref` below in plain PyTorch) applies the row
at a device step index, elementwise, in float32:

    m  = u + g (c − u)                          guidance on the [uncond; cond] batch (or m = the model output)
    P  = clamp(PX x + PM m, ±CLIP)              the prediction, x̂_0 or ε̂ (clamped only with `clamp=True`)
    D  = DX x + DP P                            what the scheduler keeps: x̂_0, ε̂ or a derivative (x − x̂_0)/σ
    S  = SX x + SS S_old + SD D + Σ_k SH_k H_k  the stash: UniPC's corrected sample, Heun's/KDPM2's x_i, an anchor
    A' = AA A + AM m                            PNDM's Runge–Kutta accumulator
    x' = XX x + XM m + XD D + Σ_k XH_k H_k + XS S + XA A + XZ z

H_0..H_{L-1} is the history newest first, as it was *before* this step. Writes: x' (a new tensor); when the
row's PUSH flag is set, H <- [D, H_0, ..., H_{L-2}] (in place); when its STASH flag is set, S_old <- S (in
place); A <- A'; D into `denoised` when one is given (LCM's f(x_t, t)). Only the clamp is not linear — dynamic
thresholding (a quantile) and guidance_rescale (a std ratio) are not fused: those configs run step().

Rows. A table is (rows, J, WIDTH): row r of step i is table[i, min(i − start, J − 1)], so multistep solvers
store one row per warm-up state ("steps taken since the loop began", capped) and the kernel picks it from the
device step index and the device start index alone. J = 1 for everything else. Each coefficient step()
computes (in float32, from its tables) is computed by the same expression here; where step() applies several
in turn, they are composed in float64 and rounded once.

Each scheduler with a fused step implements three small methods next to the tables they read:
`supports_fused_step(**step_kwargs)`, `_fused_table(...)` (cached until the next set_timesteps) and
`_fused_launch(model_output, timestep, sample, **step_kwargs)` -> `FusedLaunch` (step index, state buffers,
noise drawn on the host exactly as step() draws it); `SchedulerMixin.fused_step` does the rest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..noise import randn_tensor

MAX_HISTORY = 4  # history slots a row can weigh (LMS's default order is 4)

# (column, width) in row order; SH and XH hold one weight per history slot
LAYOUT = (("PX", 1), ("PM", 1), ("CLIP", 1), ("DX", 1), ("DP", 1), ("SX", 1), ("SS", 1), ("SD", 1),
          ("SH", MAX_HISTORY), ("AA", 1), ("AM", 1), ("XX", 1), ("XM", 1), ("XD", 1), ("XH", MAX_HISTORY),
          ("XS", 1), ("XA", 1), ("XZ", 1), ("PUSH", 1), ("STASH", 1))
COL: dict[str, int] = dict(zip((name for name, _ in LAYOUT), itertools.accumulate((w for _, w in LAYOUT), initial=0)))
WIDTH = sum(w for _, w in LAYOUT)


def rows(n: int, device=None, **columns) -> torch.Tensor:
    """(n, WIDTH) float32 rows from named columns; SH / XH take a list (one column per history slot).

    Each column is a scalar or a length-n tensor (float64 welcome: it is rounded to float32 once here);
    columns not named are 0.
    """
    table = torch.zeros(n, WIDTH, dtype=torch.float64, device=device)
    for name, value in columns.items():
        values = value if name in ("SH", "XH") else [value]
        if len(values) > MAX_HISTORY:
            raise ValueError(f"{name}: at most {MAX_HISTORY} history slots")
        for k, column in enumerate(values):
            table[:, COL[name] + k] = torch.as_tensor(column, dtype=torch.float64, device=device)
    return table.float()


def fused_table(*per_warmup: torch.Tensor) -> torch.Tensor:
    """(rows, J, WIDTH) from J row sets (rows, WIDTH): set j is used after j steps of the loop (the last after more)."""
    return torch.stack(per_warmup, dim=1)


def f64(t) -> torch.Tensor:
    return torch.as_tensor(t).to(torch.float64)


def prediction_weights(kind: str, alpha: torch.Tensor, sigma: torch.Tensor, target: str = "x0"):
    """(w_x, w_m) with x̂_0 (target="x0") or ε̂ (target="eps") = w_x x + w_m m for x = α x_0 + σ ε, composed in
    float64 from α and σ as step() computes them (float32).

    kind: "epsilon" (m = ε), "v_prediction" (m = v = α ε − σ x_0), anything else: m = x_0. The VP form of DDPM,
    DDIM, LCM and the DPM family (α = √ᾱ, σ = √(1 − ᾱ)); the ε̂ weights are those of `_predict_epsilon`.
    """
    alpha, sigma = f64(alpha), f64(sigma)
    zero, one = torch.zeros_like(alpha), torch.ones_like(alpha)
    if target == "x0":  # x̂_0 = (x − σ ε̂)/α,  α x − σ v̂,  m
        return {"epsilon": (1 / alpha, -sigma / alpha), "v_prediction": (alpha, -sigma)}.get(kind, (zero, one))
    # ε̂ = m,  α v̂ + σ x,  (x − α x̂_0)/σ
    return {"epsilon": (zero, one), "v_prediction": (sigma, alpha)}.get(kind, (1 / sigma, -alpha / sigma))


def sigma_prediction_weights(kind: str, sigma: torch.Tensor):
    """(w_x, w_m) with x̂_0 = w_x x + w_m m in the σ form x = x_0 + σ ε (base.predict_x0_from_sigma), from the
    float32 factors that function computes."""
    if kind == "epsilon":  # x − σ ε̂
        return torch.ones_like(f64(sigma)), -f64(sigma)
    if kind == "v_prediction":  # v̂ · (−σ/√(σ²+1)) + x/(σ²+1)
        return 1 / f64(sigma**2 + 1), f64(-sigma / (sigma**2 + 1) ** 0.5)
    return torch.zeros_like(f64(sigma)), torch.ones_like(f64(sigma))


def derivative_columns(kind: str, sigma: torch.Tensor, clamp: bool = False) -> dict:
    """Columns for D = d = (x − x̂_0)/σ in the σ form. Without a clamp straight from (x, m), P = m: for ε
    prediction d = m exactly, rather than x/σ − x̂_0/σ cancelling in float32. With one, through P = x̂_0."""
    w_x, w_m = sigma_prediction_weights(kind, sigma)
    inv_sigma = 1 / f64(sigma)
    if clamp:
        return dict(PX=w_x, PM=w_m, DX=inv_sigma, DP=-inv_sigma)
    return dict(PM=1, DX=(1 - w_x) * inv_sigma, DP=-w_m * inv_sigma)


@dataclass
class FusedLaunch:
    """What one `ops.scheduler_step` launch needs besides (x, model output, guidance): see the module doc."""

    table: torch.Tensor  # (rows, J, WIDTH) float32
    step: torch.Tensor  # int64 0-dim: the step index (row) on the device
    start: torch.Tensor | None = None  # int64 0-dim: where the loop began (J > 1)
    noise: torch.Tensor | None = None
    history: torch.Tensor | None = None  # (L, *sample.shape), newest first, updated in place
    stash: torch.Tensor | None = None  # updated in place
    accumulator: torch.Tensor | None = None  # updated in place
    denoised: torch.Tensor | None = None  # written with D
    clamp: bool = False
    read_oldest: bool = False  # does any row weigh H_{L-1}? (otherwise it is only shifted out)


def draw_noise(sample, model_output, generator, variance_noise, dtype=None) -> torch.Tensor:
    """z of the guided output's shape, drawn as step() draws it (or the caller's pre-drawn `variance_noise`)."""
    if variance_noise is not None:
        return variance_noise
    return randn_tensor(sample.shape, generator=generator, device=model_output.device,
                        dtype=dtype or model_output.dtype)


# ---- the plain-PyTorch twin of the kernel (the torch entry of ops.scheduler_step) ------------------------


def table_row(table: torch.Tensor, step: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    """table[step, min(step − start, J − 1)] gathered on the device (no host sync)."""
    warmup = table.shape[1]
    index = step.view(1) * warmup
    if warmup > 1:
        index = index + torch.clamp(step.view(1) - start.view(1), max=warmup - 1)
    return table.reshape(-1, WIDTH).index_select(0, index).view(WIDTH)


def scheduler_step_ref(x, model_output, guidance, table, step, start, noise, history, stash, accumulator,
                       denoised, clamp: bool, read_oldest: bool) -> torch.Tensor:
    """The fused step in plain PyTorch, float32 arithmetic: the equations of the module docstring."""
    r = table_row(table, step, start)
    c = {name: r[COL[name]] for name in COL}  # 0-dim float32 views, no host reads
    f32 = lambda t: t.to(torch.float32)  # noqa: E731
    xf = f32(x)
    if guidance is not None:
        uncond, cond = f32(model_output).chunk(2)
        m = uncond + f32(guidance).reshape(()) * (cond - uncond)
    else:
        m = f32(model_output)
    p = c["PX"] * xf + c["PM"] * m
    if clamp:
        p = torch.minimum(torch.maximum(p, -c["CLIP"]), c["CLIP"])
    d = c["DX"] * xf + c["DP"] * p
    y = c["XX"] * xf + c["XM"] * m + c["XD"] * d
    old = [] if history is None else [f32(history[k]) for k in range(history.shape[0])]  # copies
    read = len(old) if read_oldest else max(len(old) - 1, 0)
    for k in range(read):
        y = y + r[COL["XH"] + k] * old[k]
    if stash is not None:
        s = c["SX"] * xf + c["SS"] * f32(stash) + c["SD"] * d
        for k in range(read):
            s = s + r[COL["SH"] + k] * old[k]
        y = y + c["XS"] * s
        stash.copy_(torch.where(c["STASH"] != 0, s.to(stash.dtype), stash))
    if accumulator is not None:
        a = f32(accumulator)
        y = y + c["XA"] * a
        accumulator.copy_(c["AA"] * a + c["AM"] * m)
    if noise is not None:
        y = y + c["XZ"] * f32(noise)
    if history is not None:
        pushed = torch.stack([d] + old[:-1]).to(history.dtype)
        history.copy_(torch.where(c["PUSH"] != 0, pushed, history))
    if denoised is not None:
        denoised.copy_(d)
    return y.to(torch.promote_types(x.dtype, model_output.dtype))
