"""GEGLU kernel (interpreter) vs its float64 twin, held to torch's own error in each dtype."""

import pytest
import torch

from fastdiff import ops
from fastdiff.kernels.geglu import geglu, geglu_ref

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (..., 2D): narrow tile (D <= 128) with odd D, wide tile with D not a multiple of 512, SD's 1280
SHAPES = [(3, 7, 80), (33, 2 * 37), (2, 600), (2, 5, 2 * 1280)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_twin(dtype, shape, assert_parity, poisoned):
    x = (torch.randn(shape) * 2).to(dtype)
    out = geglu(x, out=poisoned(x, (*shape[:-1], shape[-1] // 2)))
    assert_parity(out, geglu_ref(x.double()), ops.geglu_torch(x))
