"""Linear kernel with fused epilogue (interpreter) vs its float64 twin, held to torch's own error per dtype."""

import pytest
import torch

from fastdiff import ops
from fastdiff.kernels.linear import linear, linear_ref

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (x shape, output columns): odd M, N, K with masked edges; K over several BLOCK_K steps; M over more
# than GROUP_M row tiles of the fp32 config (64 rows), so the grouped tile order wraps; 2-D x
SHAPES = [((2, 37, 24), 40), ((1, 5, 70), 19), ((600, 16), 24), ((2, 77, 64), 160)]


def _to64(t):
    return None if t is None else t.double()


def _check(x, w, b, r, act, assert_parity, poisoned):
    shape = (*x.shape[:-1], w.shape[0] // 2 if act == "geglu" else w.shape[0])
    out = linear(x, w, b, r, act, out=poisoned(x, shape) if r is None else poisoned(r))
    assert tuple(out.shape) == shape
    assert_parity(out, linear_ref(_to64(x), _to64(w), _to64(b), _to64(r), act), ops.linear_torch(x, w, b, r, act))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_shape, n", SHAPES)
@pytest.mark.parametrize("act", [None, "geglu"])
@pytest.mark.parametrize("bias, residual", [(True, True), (False, False)], ids=["bias+residual", "plain"])
def test_matches_twin(dtype, x_shape, n, act, bias, residual, assert_parity, poisoned):
    k = x_shape[-1]
    x = torch.randn(x_shape).to(dtype)
    w = (torch.randn(2 * n if act == "geglu" else n, k) * k**-0.5).to(dtype)
    b = torch.randn(w.shape[0]).to(dtype) if bias else None
    r = torch.randn(*x_shape[:-1], n).to(dtype) if residual else None
    _check(x, w, b, r, act, assert_parity, poisoned)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nchw_layouts(dtype, assert_parity, poisoned):
    """proj_in reads an NCHW map as (B, HW, C) tokens (channel stride HW); proj_out adds the input map,
    seen the same way, and writes the result in its layout, so the output is an NCHW map again."""
    tokens = lambda m: m.flatten(2).transpose(1, 2)  # noqa: E731
    x = tokens(torch.randn(2, 24, 5, 7).to(dtype))
    residual = tokens(torch.randn(2, 40, 5, 7).to(dtype))
    w, b = (torch.randn(40, 24) * 0.2).to(dtype), torch.randn(40).to(dtype)
    assert x.stride()[1:] == (1, 35)
    out = _check(x, w, b, residual, None, assert_parity, poisoned)
    assert out.stride() == residual.stride()
    assert out.transpose(1, 2).reshape(2, 40, 5, 7).is_contiguous()


def test_geglu_halves_are_hidden_then_gate(assert_parity, poisoned):
    """Rows [0, N) of the weight are the hidden half, [N, 2N) the gate: swapping them must change the result."""
    x, w = torch.randn(3, 16), torch.randn(32, 16) * 0.3
    out = _check(x, w, None, None, "geglu", assert_parity, poisoned)
    swapped = linear_ref(x, torch.cat([w[16:], w[:16]]), act="geglu")
    assert (out - swapped).abs().max() > 0.1


def test_unsupported_inputs_are_refused():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="does not support"):
        linear(x, torch.randn(4, 8, dtype=torch.float64))  # mixed dtypes would be a mixed tl.dot
    with pytest.raises(ValueError, match="does not support"):
        linear(x, torch.randn(5, 8), act="geglu")  # odd number of rows cannot split into [h; g]
    with pytest.raises(ValueError, match="does not support"):
        linear(x, torch.randn(4, 8), residual=torch.randn(2, 3, 5))  # residual of another shape
