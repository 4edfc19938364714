"""Multi-head attention forward, flash style: softmax(q k^T * scale) v without materialising scores.

Fused: per (batch, head, block of BLOCK_M queries) one program streams the keys and values in blocks
of BLOCK_N, keeps a running row max m, row sum l and fp32 accumulator (online softmax,
Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022) and writes the normalised rows once.

Layout: q (B, Nq, H*D), k and v (B, Nk, H*D), out (B, Nq, H*D) -- what the projections produce.
Head h lives in columns [h*D, (h+1)*D). The kernel reads batch and token strides, so q, k, v may be
views (e.g. slices of a fused QKV output (B, N, 3*H*D)); only the last dimension must be contiguous.
One launch per call, no transposes or copies around it.

Shapes: any Nq, Nk >= 1 (the last key block is masked); head dims 8..256. D is padded to a power of
two (>= 16, the smallest tl.dot K) with masked loads, so 40, 80 and 160 run natively.
Dtypes: fp16, bf16, fp32 in; out in the input dtype. Scores, softmax and the accumulator are fp32.
fp32 dots use input_precision="ieee" (tf32 would drop 13 mantissa bits against torch).

upcast (Diffusers' `upcast_attention`): q.k^T is already exact-product, fp32-accumulated here, so the
only low-precision step left is P @ V, where P is rounded to the value dtype to hit the fp16/bf16
tensor cores. upcast=True keeps P in fp32 and upcasts V, i.e. P @ V runs as an fp32 (ieee) dot --
slower (no tensor cores for that product), but it matches attention computed entirely in fp32.

Limits: B*H <= 65535 (second grid axis); q, k, v, out share one dtype and one head dim; no masks,
no dropout, forward only.
"""

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc):
    # fp32 operands take the exact FMA path; tf32 tensor cores would round inputs to 10 mantissa bits.
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _attn_blocks(
    acc, l_i, m_i, q,      # running state: acc (BLOCK_M, D_PAD) fp32, row sum l, row max m; q tile
    k_ptrs,                # K^T tile pointers (D_PAD, BLOCK_N) at key 0
    v_ptrs,                # V tile pointers (BLOCK_N, D_PAD) at key 0
    stride_kn, stride_vn,  # token strides of k and v
    start, end, N_K,       # key range [start, end) of this call, total key count
    qk_scale,              # softmax scale * log2(e): logits in base 2, so exp(x) becomes exp2
    d_ok,                  # (D_PAD,) mask of real head-dim columns
    BLOCK_N: tl.constexpr,
    MASK_N: tl.constexpr,  # the last, partial key block: mask keys >= N_K
    UPCAST: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(start, end, BLOCK_N):
        n_ok = (start_n + offs_n) < N_K
        k_mask = d_ok[:, None] & n_ok[None, :] if MASK_N else d_ok[:, None]
        k = tl.load(k_ptrs + start_n * stride_kn, mask=k_mask, other=0.0)
        s = _dot(q, k, tl.zeros([q.shape[0], BLOCK_N], tl.float32)) * qk_scale
        if MASK_N:
            s = tl.where(n_ok[None, :], s, float("-inf"))
        # online softmax: m' = max(m, rowmax s); rescale the old sum and accumulator by 2^(m - m')
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_mask = n_ok[:, None] & d_ok[None, :] if MASK_N else d_ok[None, :]
        v = tl.load(v_ptrs + start_n * stride_vn, mask=v_mask, other=0.0)
        if UPCAST:
            acc = _dot(p, v.to(tl.float32), acc * alpha[:, None])
        else:
            acc = _dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q,  # query (B, Nq, H*D), last dim contiguous
    K,  # keys (B, Nk, H*D)
    V,  # values (B, Nk, H*D)
    O,  # output (B, Nq, H*D)
    stride_qb, stride_qn,  # batch and token strides of q (elements)
    stride_kb, stride_kn,
    stride_vb, stride_vn,
    stride_ob, stride_on,
    N_Q, N_K,  # query and key lengths
    qk_scale,  # softmax scale * log2(e)
    H: tl.constexpr,  # heads
    HEAD_DIM: tl.constexpr,  # D
    D_PAD: tl.constexpr,  # D rounded up to a power of two >= 16
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    col = (tl.program_id(1) % H) * HEAD_DIM  # first column of this head
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < N_Q

    q_ptrs = Q + b * stride_qb + offs_m[:, None] * stride_qn + col + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_ptrs = K + b * stride_kb + offs_n[None, :] * stride_kn + col + offs_d[:, None]
    v_ptrs = V + b * stride_vb + offs_n[:, None] * stride_vn + col + offs_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    # full key blocks without a key mask, then the partial tail block (if any) with one
    n_full = (N_K // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, n_full, N_K,
                                 qk_scale, d_ok, BLOCK_N, False, UPCAST)
    acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, n_full, N_K, N_K,
                                 qk_scale, d_ok, BLOCK_N, True, UPCAST)

    o_ptrs = O + b * stride_ob + offs_m[:, None] * stride_on + col + offs_d[None, :]
    tl.store(o_ptrs, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

HEAD_DIMS = range(8, 257)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per dot path and padded head dim. Chosen with the compile
# report (compile_report.py): no spills on sm_80/sm_90, wgmma on sm_90 for the 16-bit paths. Tensor-core
# tiles want BLOCK_M a multiple of 64 (one wgmma per 4-warp group); fp32 (ieee) dots run on FMA units
# and hold whole K-slices of both operands in registers, so their tiles shrink as D grows.
_CONFIGS = {
    "tensor_core": {16: (128, 64, 4, 3), 32: (128, 64, 4, 3), 64: (128, 64, 8, 3), 128: (128, 32, 8, 3),
                    256: (64, 32, 8, 2)},
    "upcast": {16: (64, 32, 4, 3), 32: (64, 32, 4, 3), 64: (64, 32, 4, 3), 128: (64, 32, 8, 3), 256: (64, 32, 8, 1)},
    "fp32": {16: (32, 32, 8, 3), 32: (32, 32, 8, 3), 64: (32, 32, 8, 3), 128: (32, 16, 8, 3), 256: (16, 16, 8, 2)},
}


def block_config(d_pad: int, dtype: torch.dtype, upcast: bool) -> dict:
    """Launch parameters for a padded head dim; upcast only changes 16-bit inputs (P @ V goes fp32)."""
    path = "fp32" if dtype == torch.float32 else "upcast" if upcast else "tensor_core"
    block_m, block_n, warps, stages = _CONFIGS[path][d_pad]
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)


def d_pad_of(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def supported(q, k, v, heads, scale=None, upcast=False) -> bool:
    """Shapes and dtypes the kernel covers; anything else runs the torch entry."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or q.shape[-1] % heads:
        return False
    b, _, inner = q.shape
    return (
        q.dtype in DTYPES and q.dtype == k.dtype == v.dtype
        and k.shape == v.shape and k.shape[0] == b and k.shape[-1] == inner and k.shape[1] >= 1
        and inner // heads in HEAD_DIMS and b * heads <= 65535
        and all(t.stride(-1) == 1 for t in (q, k, v))
        and q.device == k.device == v.device
    )


def attention(q, k, v, heads: int, scale: float | None = None, upcast: bool = False, out=None):
    """softmax(q k^T * scale) v per head on the (B, N, H*D) layout; `out` (B, Nq, H*D) may be given."""
    if not supported(q, k, v, heads, scale, upcast):
        raise ValueError(f"attention kernel does not support q{tuple(q.shape)} {q.dtype}, k{tuple(k.shape)}, "
                         f"heads={heads}, strides {q.stride()}")
    b, n_q, inner = q.shape
    d = inner // heads
    scale = d**-0.5 if scale is None else scale
    if out is None:
        out = torch.empty((b, n_q, inner), dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(-1) == 1
    cfg = block_config(d_pad_of(d), q.dtype, upcast)
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), b * heads)
    _attn_fwd[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        n_q, k.shape[1], scale * math.log2(math.e),
        H=heads, HEAD_DIM=d, D_PAD=d_pad_of(d), UPCAST=upcast, **cfg,
    )
    return out


def compile_cases():
    """Every block configuration the launcher can pick, as compile-report cases (see compile_report.py)."""
    from fastdiff.kernels.compile_report import TRITON_TYPE, Case

    cases = []
    variants = [(torch.float16, False), (torch.float16, True), (torch.float32, False)]
    for d in (8, 32, 40, 80, 160):  # one awkward head dim per padded size 16, 32, 64, 128, 256
        # bf16 picks fp16's block configuration; compile it at SD's smallest and largest head dims
        for dtype, upcast in variants + ([(torch.bfloat16, False)] if d in (40, 160) else []):
            cfg = block_config(d_pad_of(d), dtype, upcast)
            pointers = {name: dtype for name in ("Q", "K", "V", "O")}
            strides = [f"stride_{t}{dim}" for t in "qkvo" for dim in "bn"]  # multiples of 16 in real models
            constexprs = dict(H=8, HEAD_DIM=d, D_PAD=d_pad_of(d), UPCAST=upcast,
                              BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])
            cases.append(Case(
                kernel=_attn_fwd, name=f"D={d} {TRITON_TYPE[dtype]}{' upcast' if upcast else ''}",
                pointers=pointers, floats=["qk_scale"], aligned=tuple(strides), constexprs=constexprs,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                expect_wgmma=dtype != torch.float32,
            ))
    return cases


# --------------------------------------------------------------------------------------------
# plain-PyTorch twin
# --------------------------------------------------------------------------------------------


def attention_ref(q, k, v, heads: int, scale: float | None = None, upcast: bool = False):
    """The same function in plain PyTorch: per head, softmax(q k^T * scale) v (fp32 when upcast)."""
    b, n_q, inner = q.shape
    d = inner // heads
    scale = d**-0.5 if scale is None else scale
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    qh, kh, vh = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    p = torch.softmax((qh @ kh.transpose(-1, -2)) * scale, dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, n_q, inner).to(dtype)
