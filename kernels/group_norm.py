"""GroupNorm with an optional fused activation: y = act((u - mean_g) / sqrt(var_g + eps) * w_c + b_c),
u = x + shift_{n,c}.

Fused: statistics, normalisation, affine and activation in one kernel; GroupNorm and GroupNorm+SiLU
(every ResNet block of the UNet and VAE) are the same kernel with the `ACT` constexpr. The optional
per-(sample, channel) shift is the time embedding a ResNet block adds before norm2 (h + temb): added
as x is loaded, so h + temb is never written and read back.

Layout: x (N, C, *spatial) in NCHW (contiguous) or channels_last, any number of spatial dims that
flatten to one stride. The kernel addresses x[n, c, s] = X + n*stride_n + c*stride_c + s*stride_s,
so one code path covers both (stride_s == 1 for NCHW, stride_c == 1 for channels_last) and the output
keeps x's layout. One program per (sample, group) walks the group's (C/G) x S elements in
[BLOCK_C, BLOCK_S] tiles twice: pass 1 for the statistics, pass 2 to normalise and store.

Statistics: fp32, of x shifted by the group's first element, chunked two-level Welford (Chan et al.
1979): each tile gives an exact two-pass (count, mean, M2), tiles are merged with
    mean = mean_a + delta * n_b / n,   M2 = M2_a + M2_b + delta^2 * n_a * n_b / n,  delta = mean_b - mean_a,
which stays accurate for large H*W where sum(x^2) - sum(x)^2/n would cancel. var = M2 / n (biased, as torch).

Dtypes: fp16, bf16, fp32 in and out; all arithmetic in fp32. Weight and bias optional (per channel).
Limits: one program per (n, g), so small N*G leaves SMs idle on large images (a split-S reduction
would fix it); x must have a flattenable spatial layout (NCHW-contiguous or channels_last).
"""

import math

import torch
import triton
import triton.language as tl

ACTIVATIONS = {None: 0, "silu": 1}


@triton.jit
def _tile_offsets(c0, s0, C_G, S, stride_c, stride_s, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Offsets (relative to the group's first element) and validity of one [BLOCK_C, BLOCK_S] tile."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    offs_s = s0 + tl.arange(0, BLOCK_S)
    mask = (offs_c[:, None] < C_G) & (offs_s[None, :] < S)
    return offs_c[:, None] * stride_c + offs_s[None, :] * stride_s, mask


@triton.jit
def _channel_shift(SHIFT, c0, C_G, BLOCK_C: tl.constexpr):
    """The shift of channels [c0, c0 + BLOCK_C) of the group, fp32 (0 past the group's end)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    return tl.load(SHIFT + offs_c, mask=offs_c < C_G, other=0.0).to(tl.float32)


@triton.jit
def _group_norm_fwd(
    X,  # input (N, C, S) through strides
    Y,  # output, same strides as X
    W,  # weight (C,), read only if HAS_W
    B,  # bias (C,), read only if HAS_B
    SHIFT,  # shift (N, C) contiguous, added to x before everything else, read only if HAS_SHIFT
    stride_n, stride_c, stride_s,  # element strides of x (and y)
    C_G, S,  # channels per group, spatial size
    eps,
    G: tl.constexpr,  # number of groups
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,  # 0: none, 1: SiLU
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    n = tl.program_id(0) // G
    g = tl.program_id(0) % G
    base = n * stride_n + g * C_G * stride_c
    X += base
    Y += base
    SHIFT += (n * G + g) * C_G  # this group's first channel of sample n

    # Statistics of u - k, k = the group's first element: shifted values are O(std), so tile sums
    # do not round at the scale of the mean (mean 100, std 1 would lose ~5 bits), and x - k is exact.
    k = tl.load(X).to(tl.float32)
    if HAS_SHIFT:
        k += tl.load(SHIFT).to(tl.float32)

    # pass 1: per-tile exact (count, mean, M2) of x - k, merged across tiles with Chan's formula
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for c0 in range(0, C_G, BLOCK_C):
        for s0 in range(0, S, BLOCK_S):
            offs, mask = _tile_offsets(c0, s0, C_G, S, stride_c, stride_s, BLOCK_C, BLOCK_S)
            x = tl.load(X + offs, mask=mask).to(tl.float32)
            if HAS_SHIFT:
                x += _channel_shift(SHIFT, c0, C_G, BLOCK_C)[:, None]
            x = tl.where(mask, x - k, 0.0)
            n_b = tl.sum(mask.to(tl.float32), axis=None)
            mean_b = tl.sum(x, axis=None) / n_b
            m2_b = tl.sum(tl.where(mask, (x - mean_b) * (x - mean_b), 0.0), axis=None)
            delta = mean_b - mean
            total = count + n_b
            mean += delta * (n_b / total)
            m2 += m2_b + delta * delta * (count * n_b / total)
            count = total
    rstd = 1.0 / tl.sqrt(m2 / count + eps)

    # pass 2: normalise, affine, activation, store in x's dtype and layout
    for c0 in range(0, C_G, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C_G
        # fold the statistics and the affine into one per-channel scale and shift: y = (x - k) * a + shift
        a = tl.full([BLOCK_C], 1.0, tl.float32) * rstd
        if HAS_W:
            a *= tl.load(W + g * C_G + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        shift = -mean * a
        if HAS_B:
            shift += tl.load(B + g * C_G + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        for s0 in range(0, S, BLOCK_S):
            offs, mask = _tile_offsets(c0, s0, C_G, S, stride_c, stride_s, BLOCK_C, BLOCK_S)
            x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                x += _channel_shift(SHIFT, c0, C_G, BLOCK_C)[:, None]
            y = (x - k) * a[:, None] + shift[:, None]
            if ACT == 1:
                y = y * tl.sigmoid(y)  # SiLU
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TILE = 4096  # elements per [BLOCK_C, BLOCK_S] tile: 16 fp32 values per thread at 8 warps
BLOCK_CS = (1, 2, 4, 8, 16)


def block_config(channels_per_group: int) -> dict:
    """Tile shape: all of a small group's channels, up to 16, times as much of S as fills TILE."""
    block_c = min(triton.next_power_of_2(channels_per_group), BLOCK_CS[-1])
    return dict(BLOCK_C=block_c, BLOCK_S=TILE // block_c, num_warps=8, num_stages=1)


def _spatial_stride(x) -> int | None:
    """The one stride that walks the flattened spatial dims, or None if they do not flatten."""
    sizes, strides = x.shape[2:], x.stride()[2:]
    if not sizes:
        return 1
    for i in range(len(sizes) - 1):
        if sizes[i] > 1 and strides[i] != strides[i + 1] * sizes[i + 1]:
            return None
    return strides[-1]


def supported(x, num_groups, weight=None, bias=None, eps=1e-5, act=None, shift=None) -> bool:
    return (
        x.dim() >= 2 and x.dtype in DTYPES and x.shape[1] % num_groups == 0 and act in ACTIVATIONS
        and _spatial_stride(x) is not None and x.numel() < 2**31
        and all(t is None or (t.shape == (x.shape[1],) and t.device == x.device) for t in (weight, bias))
        and (shift is None or (shift.shape == x.shape[:2] and shift.is_contiguous() and shift.device == x.device))
    )


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, act: str | None = None, shift=None,
               out=None):
    """GroupNorm(+activation) of x (N, C, *spatial) + shift (N, C); the output keeps x's memory layout.
    `out` may be given."""
    if not supported(x, num_groups, weight, bias, eps, act, shift):
        raise ValueError(f"group_norm kernel does not support x{tuple(x.shape)} {x.dtype} strides {x.stride()}, "
                         f"groups={num_groups}, act={act!r}")
    if out is None:
        out = torch.empty_like(x)  # preserve_format: same strides as x for NCHW and channels_last
    assert out.shape == x.shape and out.stride() == x.stride() and out.dtype == x.dtype
    n, c = x.shape[:2]
    cfg = block_config(c // num_groups)
    _group_norm_fwd[(n * num_groups,)](
        x, out, weight if weight is not None else x, bias if bias is not None else x,
        shift if shift is not None else x,
        x.stride(0), x.stride(1), _spatial_stride(x), c // num_groups, math.prod(x.shape[2:]), eps,
        G=num_groups, HAS_W=weight is not None, HAS_B=bias is not None, HAS_SHIFT=shift is not None,
        ACT=ACTIVATIONS[act], **cfg,
    )
    return out


def compile_cases():
    """Every tile shape the launcher can pick, for NCHW (stride_s == 1) and channels_last (stride_c == 1)."""
    from fastdiff.kernels.compile_report import TRITON_TYPE, Case

    cases = []
    for block_c in BLOCK_CS:
        cfg = block_config(block_c)
        for layout, dtype, act in (("nchw", torch.float16, "silu"), ("nhwc", torch.bfloat16, None)):
            unit = {"stride_s": 1} if layout == "nchw" else {"stride_c": 1}
            cases.append(Case(
                kernel=_group_norm_fwd, name=f"{layout} {TRITON_TYPE[dtype]} act={act}",
                pointers={"X": dtype, "Y": dtype, "W": dtype, "B": dtype, "SHIFT": dtype}, floats=["eps"],
                aligned=("stride_n", "stride_c", "stride_s"),
                # the SiLU case is a ResNet's norm2, which carries the time-embedding shift
                constexprs=dict(unit, G=32, HAS_W=True, HAS_B=True, HAS_SHIFT=act is not None,
                                ACT=ACTIVATIONS[act], BLOCK_C=cfg["BLOCK_C"], BLOCK_S=cfg["BLOCK_S"]),
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            ))
    return cases


# --------------------------------------------------------------------------------------------
# plain-PyTorch twin
# --------------------------------------------------------------------------------------------


def group_norm_ref(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, act: str | None = None,
                   shift=None):
    """The same function in plain PyTorch: two-pass statistics per (sample, group), in x's dtype."""
    n, c = x.shape[:2]
    if shift is not None:
        x = x + shift.to(x.dtype).reshape(n, c, *(1,) * (x.dim() - 2))
    xg = x.reshape(n, num_groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.to(x.dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(x.dtype).reshape(shape)
    return y * torch.sigmoid(y) if act == "silu" else y
