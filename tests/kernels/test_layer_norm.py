"""LayerNorm kernel (interpreter) vs its float64 twin, held to torch's own error in each dtype."""

import pytest
import torch

from fastdiff import ops
from fastdiff.kernels.layer_norm import layer_norm, layer_norm_ref

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# last dims: tiny, SD widths 320 / 768 (several rows per program), odd 1000, 5000 (8 warps, one row)
SHAPES = [(3, 77, 8), (2, 9, 320), (77, 768), (3, 1000), (2, 5000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_twin(dtype, shape, assert_parity, poisoned):
    x = (torch.randn(shape) * 2 + 3).to(dtype)
    w, b = torch.randn(2, shape[-1], dtype=dtype)
    out = layer_norm(x, w, b, 1e-5, out=poisoned(x))
    assert_parity(out, layer_norm_ref(x.double(), w.double(), b.double(), 1e-5), ops.layer_norm_torch(x, w, b, 1e-5))


@pytest.mark.parametrize("eps", [1e-6, 1.0])
def test_no_affine_and_eps(eps, assert_parity, poisoned):
    x = torch.randn(5, 40) * 0.5
    out = layer_norm(x, None, None, eps, out=poisoned(x))
    assert_parity(out, layer_norm_ref(x.double(), None, None, eps), ops.layer_norm_torch(x, None, None, eps))
