"""LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * w + b.

Fused: statistics and affine in one pass over a [BLOCK_R, BLOCK_D] tile of rows held in registers.
Each program normalises BLOCK_R rows (several short rows per program, so D = 320 does not waste a
program on 512 lanes); statistics are exact two-pass in fp32 on the registers (mean, then the mean of
squared deviations), so no cancellation.

Shapes: x (..., D) contiguous with D <= 8192 (one row must fit a tile); out has x's shape, contiguous.
Dtypes: fp16, bf16, fp32 in and out; arithmetic in fp32. Weight and bias optional, shape (D,).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _layer_norm_fwd(
    X,  # input rows (R, D), row stride D
    Y,  # output rows (R, D)
    W,  # weight (D,), read only if HAS_W
    B,  # bias (D,), read only if HAS_B
    R, D,  # rows, row length
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    mask = (rows[:, None] < R) & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y *= tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_D = 8192
BLOCK_DS = (256, 512, 1024, 2048, 4096, 8192)


def block_config(d: int) -> dict:
    """One row per BLOCK_D >= D lanes, as many rows as fill 4096 elements (32 fp32 values per thread)."""
    block_d = max(triton.next_power_of_2(d), BLOCK_DS[0])
    return dict(BLOCK_R=max(1, 4096 // block_d), BLOCK_D=block_d, num_warps=4 if block_d <= 4096 else 8,
                num_stages=1)


def supported(x, weight=None, bias=None, eps=1e-5) -> bool:
    d = x.shape[-1] if x.dim() else 0
    return (
        x.dtype in DTYPES and x.is_contiguous() and 1 <= d <= MAX_D
        and all(t is None or (t.shape == (d,) and t.is_contiguous() and t.device == x.device) for t in (weight, bias))
    )


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5, out=None):
    """LayerNorm of x over its last dimension; `out` (contiguous, x's shape) may be given."""
    if not supported(x, weight, bias, eps):
        raise ValueError(f"layer_norm kernel does not support x{tuple(x.shape)} {x.dtype} strides {x.stride()}")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    d = x.shape[-1]
    rows = x.numel() // d
    cfg = block_config(d)
    _layer_norm_fwd[(triton.cdiv(rows, cfg["BLOCK_R"]),)](
        x, out, weight if weight is not None else x, bias if bias is not None else x, rows, d, eps,
        HAS_W=weight is not None, HAS_B=bias is not None, **cfg,
    )
    return out


def compile_cases():
    """Every BLOCK_D the launcher can pick (D = 320-like widths are covered by the masks)."""
    from fastdiff.kernels.compile_report import TRITON_TYPE, Case

    cases = []
    for i, block_d in enumerate(BLOCK_DS):
        cfg = block_config(block_d)
        dtype = DTYPES[i % len(DTYPES)]
        cases.append(Case(
            kernel=_layer_norm_fwd, name=TRITON_TYPE[dtype], pointers={p: dtype for p in "XYWB"}, floats=["eps"],
            aligned=("D",), constexprs=dict(HAS_W=True, HAS_B=True, BLOCK_R=cfg["BLOCK_R"], BLOCK_D=block_d),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        ))
    return cases


# --------------------------------------------------------------------------------------------
# plain-PyTorch twin
# --------------------------------------------------------------------------------------------


def layer_norm_ref(x, weight=None, bias=None, eps: float = 1e-5):
    """The same function in plain PyTorch, in x's dtype."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y
