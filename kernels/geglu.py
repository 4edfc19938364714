"""GEGLU (Shazeer 2020, "GLU Variants Improve Transformer"): x = [h, g] -> h * GELU(g).

Fused: the split, the exact GELU(g) = g/2 * (1 + erf(g / sqrt(2))) and the product in one pass, so
the (..., 2D) projection output is read once and only the (..., D) result is written -- no h, g or
GELU(g) temporaries.

Shapes: x (..., 2D) contiguous; out (..., D) contiguous. Each program covers a [BLOCK_R, BLOCK_D]
tile of (rows, output columns).
Dtypes: fp16, bf16, fp32 in and out; GELU and the product in fp32 with one final rounding (torch
rounds GELU(g) to the input dtype before the product, so the kernel is slightly more accurate).
"""

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _geglu_fwd(
    X,  # input rows (R, 2D): hidden h in columns [0, D), gate g in [D, 2D)
    Y,  # output rows (R, D)
    R, D,  # rows, output row length
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < R) & (cols[None, :] < D)
    rows = rows.to(tl.int64)[:, None]
    h = tl.load(X + rows * (2 * D) + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(X + rows * (2 * D) + D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    gelu = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))  # 1/sqrt(2)
    tl.store(Y + rows * D + cols[None, :], (h * gelu).to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TILES = {"narrow": (32, 128), "wide": (8, 512)}  # (BLOCK_R, BLOCK_D): 4096 elements, 32 per thread


def block_config(d: int) -> dict:
    block_r, block_d = TILES["narrow" if d <= 128 else "wide"]
    return dict(BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4, num_stages=1)


def supported(x) -> bool:
    return x.dim() >= 1 and x.dtype in DTYPES and x.is_contiguous() and x.shape[-1] % 2 == 0 and x.shape[-1] > 0


def geglu(x, out=None):
    """h * GELU(g) for x = [h, g] split in half on the last dim; `out` (contiguous, (..., D)) may be given."""
    if not supported(x):
        raise ValueError(f"geglu kernel does not support x{tuple(x.shape)} {x.dtype} strides {x.stride()}")
    d = x.shape[-1] // 2
    if out is None:
        out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    assert out.shape == (*x.shape[:-1], d) and out.dtype == x.dtype and out.is_contiguous()
    rows = math.prod(x.shape[:-1])
    cfg = block_config(d)
    grid = (triton.cdiv(rows, cfg["BLOCK_R"]), triton.cdiv(d, cfg["BLOCK_D"]))
    _geglu_fwd[grid](x, out, rows, d, **cfg)
    return out


def compile_cases():
    from fastdiff.kernels.compile_report import TRITON_TYPE, Case

    cases = []
    for d, dtype in ((64, torch.float32), (1280, torch.float16)):
        cfg = block_config(d)
        cases.append(Case(
            kernel=_geglu_fwd, name=TRITON_TYPE[dtype], pointers={"X": dtype, "Y": dtype}, aligned=("D",),
            constexprs=dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"]),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        ))
    return cases


# --------------------------------------------------------------------------------------------
# plain-PyTorch twin
# --------------------------------------------------------------------------------------------


def geglu_ref(x):
    """The same function in plain PyTorch, in x's dtype."""
    h, g = x.chunk(2, dim=-1)
    return h * (0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0))))
