"""fastdiff.ops (torch backend, the CPU path) against the plain aten calls diffusers makes, at SD1.5's
32x32-latent shapes (256x256 images), float32 and bfloat16. Compare within a group:

    pytest bench/micro/test_ops.py --benchmark-group-by=group

The Triton entries need CUDA (the CPU interpreter is far too slow to time) and are skipped here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdiff import ops

pytestmark = pytest.mark.benchmark
DTYPES = [torch.float32, torch.bfloat16]
C, TOKENS, CONTEXT = 320, 32 * 32, 77  # SD1.5's first level at 32x32 latents, batch 2 (guidance)


def _randn(*shape, dtype):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _sdpa_heads(q, k, v, heads):
    """Diffusers' AttnProcessor2_0 layout dance around F.scaled_dot_product_attention."""
    b, n, inner = q.shape
    split = lambda t: t.view(b, -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, inner)


ATTENTION = {"self": TOKENS, "cross": CONTEXT}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ATTENTION)
@pytest.mark.parametrize("impl", ["fastdiff", "aten"])
def test_attention(benchmark, impl, kind, dtype):
    benchmark.group = f"attention {kind} {dtype}"
    q = _randn(2, TOKENS, C, dtype=dtype)
    k, v = _randn(2, ATTENTION[kind], C, dtype=dtype), _randn(2, ATTENTION[kind], C, dtype=dtype)
    fn = ops.attention if impl == "fastdiff" else _sdpa_heads
    with torch.no_grad(), ops.use_backend("torch"):
        benchmark(fn, q, k, v, 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["fastdiff", "aten"])
def test_group_norm_silu(benchmark, impl, dtype):
    benchmark.group = f"group_norm+silu {dtype}"
    x, w, b = _randn(2, C, 32, 32, dtype=dtype), _randn(C, dtype=dtype), _randn(C, dtype=dtype)
    with torch.no_grad(), ops.use_backend("torch"):
        if impl == "fastdiff":
            benchmark(ops.group_norm, x, 32, w, b, 1e-5, act="silu")
        else:
            benchmark(lambda: F.silu(F.group_norm(x, 32, w, b, 1e-5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["fastdiff", "aten"])
def test_layer_norm(benchmark, impl, dtype):
    benchmark.group = f"layer_norm {dtype}"
    x, w, b = _randn(2, TOKENS, C, dtype=dtype), _randn(C, dtype=dtype), _randn(C, dtype=dtype)
    with torch.no_grad(), ops.use_backend("torch"):
        if impl == "fastdiff":
            benchmark(ops.layer_norm, x, w, b, 1e-5)
        else:
            benchmark(F.layer_norm, x, (C,), w, b, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["fastdiff", "aten"])
def test_geglu(benchmark, impl, dtype):
    benchmark.group = f"geglu {dtype}"
    x = _randn(2, TOKENS, 8 * C, dtype=dtype)  # the feed-forward's projection: 2 x 4C

    def aten_geglu():  # diffusers' GEGLU.forward after the projection
        h, g = x.chunk(2, dim=-1)
        return h * F.gelu(g)

    with torch.no_grad(), ops.use_backend("torch"):
        benchmark(ops.geglu, x) if impl == "fastdiff" else benchmark(aten_geglu)


@pytest.mark.parametrize("op", ["group_norm", "layer_norm", "geglu"])
def test_dispatch_overhead(benchmark, op):
    """The per-call cost of the ops table itself: a 1-element-per-group input, so arithmetic is nil."""
    benchmark.group = "dispatch overhead (tiny inputs)"
    x = torch.randn(1, 8, 2, 2)
    calls = {"group_norm": lambda: ops.group_norm(x, 8, act="silu"), "layer_norm": lambda: ops.layer_norm(x),
             "geglu": lambda: ops.geglu(x)}
    with torch.no_grad(), ops.use_backend("torch"):
        benchmark(calls[op])


def test_dispatch_overhead_aten(benchmark):
    benchmark.group = "dispatch overhead (tiny inputs)"
    x = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        benchmark(lambda: F.silu(F.group_norm(x, 8)))
