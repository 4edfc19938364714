"""Parity harness: a model built by diffusers with random weights, saved, loaded into fastdiff, and compared.

Every parameter is perturbed with seeded noise before saving, so layers that diffusers zero-initialises
(or initialises to one) cannot hide a wrong computation.
"""

from __future__ import annotations

import torch

FP32_TOL = 1e-5  # max |fastdiff - diffusers| relative to max |diffusers output|, float32
# Low precision against the float32 result, same measure. bfloat16 keeps 8 mantissa bits (unit roundoff
# 2^-9, 8x float16's), and diffusers itself lands at 1.5-2.5e-2 on these random-weight configs in
# bfloat16 (about 2e-3 in float16), so bfloat16 gets a tolerance scaled accordingly.
LOW_TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add seeded N(0, scale^2) noise to every parameter (and floating buffer), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.add_(scale * torch.randn(t.shape, generator=g, dtype=t.dtype))
    return model.eval()


def reference_model(diffusers_cls, config: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb_(diffusers_cls(**config), seed)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, computed in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = FP32_TOL, what: str = "output"):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: max abs difference is {err:.3g} x max |expected| (tolerance {tol:g})"


def assert_low_precision(actual: torch.Tensor, expected: torch.Tensor, reference: torch.Tensor | None = None):
    """`actual` (float16/bfloat16) is finite and within LOW_TOL of the float32 `expected`, or, when diffusers'
    own result in the same dtype (`reference`) is given, no more than 1.5x as far from it as diffusers is."""
    assert actual.dtype in LOW_TOL, actual.dtype
    limit = LOW_TOL[actual.dtype]
    if reference is not None:
        limit = max(limit, 1.5 * rel_err(reference, expected))
    assert_close(actual.float(), expected, tol=limit, what=f"{actual.dtype} output")


def assert_same_state_dict(a: dict, b: dict):
    """Same keys, shapes, dtypes and bits."""
    assert sorted(a) == sorted(b), f"keys differ: {sorted(set(a) ^ set(b))[:10]}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), f"{k} differs"


def cast_inputs(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def saved_reference(diffusers_cls, config: dict, folder, seed: int = 0):
    """`reference_model`, written to `folder` by diffusers' save_pretrained (for fastdiff to load)."""
    ref = reference_model(diffusers_cls, config, seed)
    ref.save_pretrained(folder)
    return ref


def load_back_into_diffusers(model, ref, folder):
    """fastdiff's save_pretrained to `folder`, read back by diffusers: it and the fastdiff model hold the
    reference's exact state dict. Returns the diffusers model."""
    model.save_pretrained(folder)
    back = type(ref).from_pretrained(folder).eval()
    assert_same_state_dict(back.state_dict(), ref.state_dict())
    assert_same_state_dict(model.state_dict(), ref.state_dict())
    return back
