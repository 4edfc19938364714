"""Linear layer with a fused epilogue: y = act(x W^T + b) + residual.

Fused: the GEMM and everything that follows it in a transformer block run in one kernel, so the
projection output never round-trips through memory:
  * bias and residual add (attention out-projection, feed-forward out, proj_out of the spatial
    transformer): x W^T + b + r, written once instead of written, read back, added and written again;
  * GEGLU (Shazeer 2020, the feed-forward's gated projection): W = [W_h; W_g] (2D x K); two fp32
    accumulators h = x W_h^T + b_h and g = x W_g^T + b_g, and only h * GELU(g) (exact, erf) is written,
    so the (..., 2D) projection output never exists.

Layout: x (B, M, K) or (M, K) through strides, so token views of an NCHW map ((B, HW, C) with channel
stride HW, no copy) are read directly; W (N_total, K) through strides; the residual and the output
(B, M, N) through their own strides, so the output can be written in the residual's layout (e.g. an
NCHW map seen as (B, HW, C)). One program per [BLOCK_M, BLOCK_N] output tile, tiles grouped
GROUP_M rows at a time for L2 reuse of W; the batch is the second grid axis.

Dtypes: fp16, bf16, fp32; x, W, b and r share one; fp32 accumulation, one rounding at the store.
fp32 dots use input_precision="ieee" (tf32 would drop 13 mantissa bits against torch).
Limits: x 2-D or 3-D; batch <= 65535; forward only.
"""

import torch
import triton
import triton.language as tl

ACTIVATIONS = {None: 0, "geglu": 1}


@triton.jit
def _dot(a, b, acc):
    # fp32 operands take the exact FMA path; tf32 tensor cores would round inputs to 10 mantissa bits.
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _linear_fwd(
    X,  # input (B, M, K) through strides
    W,  # weight (N_total, K): N rows, or 2N for GEGLU (rows [0, N) hidden, [N, 2N) gate)
    BIAS,  # bias (N_total,), read only if HAS_BIAS
    R,  # residual (B, M, N) through strides, read only if HAS_RESIDUAL
    Y,  # output (B, M, N) through strides
    M, N, K,  # rows per batch, output columns, reduction length
    stride_xb, stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_rb, stride_rm, stride_rn,
    stride_yb, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACT: tl.constexpr,  # 0: none, 1: GEGLU
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped tile order: GROUP_M consecutive row tiles sweep the column tiles together, so the W
    # tiles they share are still in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % (GROUP_M * tiles_n)) % group_size
    tile_n = (pid % (GROUP_M * tiles_n)) // group_size
    batch = tl.program_id(1).to(tl.int64)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_ptrs = X + batch * stride_xb + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = W + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BLOCK_K, BLOCK_N) tile of W^T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        acc = _dot(a, tl.load(w_ptrs, mask=w_mask, other=0.0), acc)
        if ACT == 1:
            gate = _dot(a, tl.load(w_ptrs + N * stride_wn, mask=w_mask, other=0.0), gate)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # epilogue, fp32: + b, GEGLU h * GELU(g) = h * g/2 * (1 + erf(g / sqrt(2))), + r; one rounding
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if ACT == 1:
            gate += tl.load(BIAS + N + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = acc * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        r_ptrs = R + batch * stride_rb + offs_m[:, None] * stride_rm + offs_n[None, :] * stride_rn
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    y_ptrs = Y + batch * stride_yb + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per (path, act). GEGLU keeps two accumulators, so its
# column tile is half as wide; fp32 "ieee" dots run on CUDA cores, whose operands live in registers.
_CONFIGS = {
    ("tensor_core", None): (128, 128, 32, 8, 3),
    ("tensor_core", "geglu"): (128, 64, 32, 8, 3),
    ("fp32", None): (64, 64, 16, 4, 2),
    ("fp32", "geglu"): (64, 32, 16, 4, 2),
}
GROUP_M = 8


def block_config(dtype: torch.dtype, act: str | None) -> dict:
    block_m, block_n, block_k, warps, stages = _CONFIGS["fp32" if dtype == torch.float32 else "tensor_core", act]
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=GROUP_M, num_warps=warps,
                num_stages=stages)


def output_shape(x, weight, act=None) -> tuple[int, ...]:
    n = weight.shape[0] // 2 if act == "geglu" else weight.shape[0]
    return (*x.shape[:-1], n)


def supported(x, weight, bias=None, residual=None, act=None) -> bool:
    if act not in ACTIVATIONS or x.dim() not in (2, 3) or weight.dim() != 2 or x.dtype not in DTYPES:
        return False
    if weight.shape[1] != x.shape[-1] or (act == "geglu" and weight.shape[0] % 2):
        return False
    shape = output_shape(x, weight, act)
    return (
        weight.dtype == x.dtype and weight.device == x.device
        and (bias is None or (bias.shape == (weight.shape[0],) and bias.dtype == x.dtype and bias.device == x.device))
        and (residual is None or (tuple(residual.shape) == shape and residual.dtype == x.dtype
                                  and residual.device == x.device))
        and (x.dim() == 2 or x.shape[0] <= 65535)
        and all(t.numel() < 2**31 for t in (x, weight))
    )


def _as_3d(t):
    """(sizes, strides) of t as (B, M, *) with B = 1 for a 2-D tensor (batch stride 0)."""
    if t.dim() == 2:
        return (1, *t.shape), (0, *t.stride())
    return tuple(t.shape), t.stride()


def linear(x, weight, bias=None, residual=None, act: str | None = None, out=None):
    """act(x W^T + b) + residual; the output is contiguous, or laid out like `residual` when it is given."""
    if not supported(x, weight, bias, residual, act):
        raise ValueError(f"linear kernel does not support x{tuple(x.shape)} {x.dtype}, weight{tuple(weight.shape)} "
                         f"{weight.dtype}, act={act!r}")
    shape = output_shape(x, weight, act)
    if out is None:
        # preserve_format: a dense residual view (an NCHW map as (B, HW, C)) gives its strides to the output
        out = torch.empty_like(residual) if residual is not None else x.new_empty(shape)
    assert tuple(out.shape) == shape and out.dtype == x.dtype
    (batch, m, k), x_strides = _as_3d(x)
    n = shape[-1]
    r_strides = _as_3d(residual)[1] if residual is not None else (0, 0, 0)
    cfg = block_config(x.dtype, act)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), batch)
    _linear_fwd[grid](
        x, weight, bias if bias is not None else weight, residual if residual is not None else out, out,
        m, n, k, *x_strides, *weight.stride(), *r_strides, *_as_3d(out)[1],
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, ACT=ACTIVATIONS[act], **cfg,
    )
    return out


def compile_cases():
    """Every block configuration the launcher can pick, with bias and residual (the widest epilogue)."""
    from fastdiff.kernels.compile_report import TRITON_TYPE, Case

    # Unit strides (the JIT specializes a stride of 1): rows of x / r / y contiguous ("tokens"), or
    # tokens of an NCHW map, whose unit stride is along M (proj_in reads x so, proj_out writes r and y so).
    layouts = {"tokens": dict(stride_xk=1, stride_rn=1, stride_yn=1),
               "nchw x": dict(stride_xm=1, stride_rn=1, stride_yn=1),
               "nchw r, y": dict(stride_xk=1, stride_rm=1, stride_ym=1)}
    variants = [(dtype, act, "tokens") for dtype in DTYPES for act in ACTIVATIONS]
    variants += [(torch.float16, None, "nchw x"), (torch.bfloat16, None, "nchw r, y")]
    cases = []
    for dtype, act, layout in variants:
        cfg = block_config(dtype, act)
        unit = layouts[layout]
        strides = ("stride_xb", "stride_xm", "stride_xk", "stride_wn", "stride_rb", "stride_rm", "stride_rn",
                   "stride_yb", "stride_ym", "stride_yn")
        cases.append(Case(
            kernel=_linear_fwd, name=f"{layout} {TRITON_TYPE[dtype]} act={act}",
            pointers={"X": dtype, "W": dtype, "BIAS": dtype, "R": dtype, "Y": dtype},
            aligned=("K",) + tuple(s for s in strides if s not in unit),
            constexprs=dict(unit, stride_wk=1, HAS_BIAS=True, HAS_RESIDUAL=True, ACT=ACTIVATIONS[act],
                            **{k: v for k, v in cfg.items() if k.isupper()}),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], expect_wgmma=dtype != torch.float32,
        ))
    return cases


# --------------------------------------------------------------------------------------------
# plain-PyTorch twin
# --------------------------------------------------------------------------------------------


def linear_ref(x, weight, bias=None, residual=None, act: str | None = None):
    """The same function in plain PyTorch, in x's dtype (float64 inputs give the exact reference)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    if act == "geglu":
        h, g = y.chunk(2, dim=-1)
        y = h * (0.5 * g * (1.0 + torch.erf(g / 2.0**0.5)))
    return y if residual is None else y + residual
