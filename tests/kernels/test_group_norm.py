"""GroupNorm(+SiLU) kernel (interpreter) vs its float64 twin, held to torch's own error in each dtype."""

import pytest
import torch

from fastdiff import ops
from fastdiff.kernels.group_norm import group_norm, group_norm_ref

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (shape, groups): channels per group 10 (SD's 320/32), 1, 3, 16 (full tile), 20 (two channel tiles);
# odd spatial sizes, a 1-D and a 3-D spatial layout, spatial > one tile (4096 // BLOCK_C)
CASES = [((2, 20, 9, 7), 2), ((2, 4, 5, 3), 4), ((1, 3, 130), 1), ((1, 32, 33, 17), 2), ((2, 40, 6, 5), 2),
         ((1, 6, 3, 4, 5), 3)]


def _inputs(shape, dtype, channels_last, affine):
    x = (torch.randn(shape) * 3 + 5).to(dtype)  # an offset mean: what cancels in naive sum-of-squares
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    w, b = (torch.randn(2, shape[1], dtype=dtype) if affine else (None, None))
    return x, w, b


def _check(x, groups, w, b, eps, act, assert_parity, poisoned, shift=None):
    out = group_norm(x, groups, w, b, eps, act, shift, out=poisoned(x))
    assert out.stride() == x.stride()
    to64 = lambda t: None if t is None else t.double()  # noqa: E731
    ref64 = group_norm_ref(x.double(), groups, to64(w), to64(b), eps, act, to64(shift))
    assert_parity(out, ref64, ops.group_norm_torch(x, groups, w, b, eps, act, shift))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups", CASES)
@pytest.mark.parametrize("act", [None, "silu"])
def test_matches_twin(dtype, shape, groups, act, assert_parity, poisoned):
    x, w, b = _inputs(shape, dtype, channels_last=False, affine=True)
    _check(x, groups, w, b, 1e-5, act, assert_parity, poisoned)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups", [c for c in CASES if len(c[0]) in (4, 5)])
def test_channels_last(dtype, shape, groups, assert_parity, poisoned):
    x, w, b = _inputs(shape, dtype, channels_last=True, affine=True)
    assert not x.is_contiguous()
    _check(x, groups, w, b, 1e-6, "silu", assert_parity, poisoned)


@pytest.mark.parametrize("eps", [1e-6, 1.0])
def test_no_affine_and_eps(eps, assert_parity, poisoned):
    # eps = 1 is far from negligible, so a dropped or misplaced eps shows
    x, _, _ = _inputs((2, 8, 5, 5), torch.float32, channels_last=False, affine=False)
    _check(x * 0.3, 4, None, None, eps, None, assert_parity, poisoned)


def test_large_spatial_statistics(assert_parity, poisoned):
    """192x192 spatial, mean 100 and std 1 (an SD VAE decoder-like magnitude): merged tile statistics
    must not lose the variance to cancellation."""
    x = torch.randn(1, 2, 192, 192) + 100.0
    _check(x, 1, None, None, 1e-6, None, assert_parity, poisoned)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups", [c for c in CASES if len(c[0]) == 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_time_embedding_shift(dtype, shape, groups, channels_last, assert_parity, poisoned):
    """norm(x + shift[n, c]): a shift as large as x's spread, different per sample and channel, moves
    both the statistics and the normalised values, so a dropped or misindexed shift fails."""
    x, w, b = _inputs(shape, dtype, channels_last, affine=True)
    shift = (torch.randn(shape[:2]) * 3).to(dtype)
    _check(x, groups, w, b, 1e-5, "silu", assert_parity, poisoned, shift)
