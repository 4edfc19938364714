"""Flash attention kernel (interpreter) vs its float64 twin, held to torch's own error in each dtype."""

import pytest
import torch

from fastdiff import ops
from fastdiff.kernels.attention import attention, attention_ref

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (head_dim, heads, n_q, n_k): every padded head-dim size, odd lengths, 77-token cross attention
SHAPES = [(8, 2, 130, 77), (40, 2, 77, 77), (64, 1, 65, 129), (80, 1, 33, 70), (160, 1, 47, 77), (256, 1, 17, 40)]


def _qkv(b, n_q, n_k, heads, d, dtype, fused):
    """q, k, v as the models hand them over; `fused` slices them out of one (B, N, 3*H*D) projection."""
    inner = heads * d
    if fused:  # self attention through a fused QKV projection: three strided views, no copies
        qkv = torch.randn(b, n_q, 3 * inner, dtype=dtype)
        return qkv[..., :inner], qkv[..., inner : 2 * inner], qkv[..., 2 * inner :]
    return torch.randn(b, n_q, inner, dtype=dtype), *torch.randn(2, b, n_k, inner, dtype=dtype)


def _check(q, k, v, heads, scale, upcast, assert_parity, poisoned):
    out = attention(q, k, v, heads, scale, upcast, out=poisoned(q, (q.shape[0], q.shape[1], q.shape[2])))
    ref64 = attention_ref(q.double(), k.double(), v.double(), heads, scale)
    d = q.shape[-1] // heads
    assert_parity(out, ref64, ops.attention_torch(q, k, v, heads, d**-0.5 if scale is None else scale, upcast))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d, heads, n_q, n_k", SHAPES)
def test_matches_twin(dtype, d, heads, n_q, n_k, assert_parity, poisoned):
    _check(*_qkv(2, n_q, n_k, heads, d, dtype, fused=False), heads, None, False, assert_parity, poisoned)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_qkv_views_and_scale(dtype, assert_parity, poisoned):
    q, k, v = _qkv(2, 77, 77, 2, 40, dtype, fused=True)
    assert not q.is_contiguous()
    _check(q, k, v, 2, 0.3, False, assert_parity, poisoned)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [40, 160])
def test_upcast(dtype, d, assert_parity, poisoned):
    # large logits: the regime upcast_attention exists for
    q, k, v = _qkv(1, 33, 77, 1, d, dtype, fused=False)
    _check(q * 4, k * 4, v, 1, None, True, assert_parity, poisoned)


def test_long_queries(assert_parity, poisoned):
    """9216 query tokens (SDXL 96x96 latents) over 77 keys; 4096/9216 self attention is too slow for
    the interpreter and uses the same block configurations (tests/kernels/test_compile.py)."""
    _check(*_qkv(1, 9216, 77, 1, 40, torch.float16, fused=False), 1, None, False, assert_parity, poisoned)

