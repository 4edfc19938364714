"""Kernel tests run the Triton kernels on the CPU under Triton's interpreter.

`@triton.jit` reads TRITON_INTERPRET (triton.knobs.runtime.interpret) when it decorates a kernel,
i.e. when a `fastdiff.kernels.<family>` module is imported -- not when triton itself is imported.
So it is set here, before these test modules import the kernels, and any kernel module that some
earlier test already imported compiled is reloaded interpreted. Other tests in the same process keep
working: fastdiff's "auto" backend still picks torch for CPU tensors.

The compile test needs compiled (non-interpreted) kernels and runs in a subprocess without it.
"""

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

KERNEL_MODULES = ("attention", "group_norm", "layer_norm", "geglu", "linear", "scheduler_step")
for _name in KERNEL_MODULES:
    _module = sys.modules.get(f"fastdiff.kernels.{_name}")
    if _module is not None:
        importlib.reload(_module)


# The interpreter stores bfloat16 as raw uint16 bits and does no bf16 arithmetic of its own
# (documented: "does not support operations on bfloat16"; triton-lang/triton#11584): tl.dot
# multiplies the bit patterns and fp32 -> bf16 truncates, where the GPU rounds to nearest even
# (cvt.rn.bf16.f32). These two shims make the interpreter do what the GPU does for the only bf16
# operations the kernels use, so bf16 is tested rather than skipped.
def _bf16_to_f32(data):
    return (data.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_rne(data):
    bits = data.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(data), np.uint16(0x7FC0), rounded)


_create_dot = interpreter.InterpreterBuilder.create_dot
_create_fp_trunc = interpreter.InterpreterBuilder.create_fp_trunc


def _create_dot_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
    if a.dtype.scalar == tl.bfloat16:
        a = interpreter.TensorHandle(_bf16_to_f32(a.data), tl.float32)
    if b.dtype.scalar == tl.bfloat16:
        b = interpreter.TensorHandle(_bf16_to_f32(b.data), tl.float32)
    return _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)


def _create_fp_trunc_rne(self, src, dst_type):
    if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
        return interpreter.TensorHandle(_f32_to_bf16_rne(src.data), tl.bfloat16)
    return _create_fp_trunc(self, src, dst_type)


interpreter.InterpreterBuilder.create_dot = _create_dot_bf16
interpreter.InterpreterBuilder.create_fp_trunc = _create_fp_trunc_rne


def _errors(out, ref64, torch_out):
    return (out.double() - ref64).abs().max().item(), (torch_out.double() - ref64).abs().max().item()


@pytest.fixture
def assert_parity():
    """DESIGN.md's dtype-scaled rule: the kernel may be at most twice as far from the float64
    reference as PyTorch's own op in the same dtype, plus one unit of roundoff at 1.0."""

    def check(out, ref64, torch_out):
        assert not out.isnan().any(), "kernel left unwritten (NaN-poisoned) or NaN elements"
        err_kernel, err_torch = _errors(out, ref64, torch_out)
        floor = torch.finfo(out.dtype).eps
        assert err_kernel <= 2 * err_torch + floor, f"kernel err {err_kernel:.3g} > 2 x torch err {err_torch:.3g} + {floor:.3g}"

    return check


@pytest.fixture
def poisoned():
    """A NaN-filled output buffer (like `x`, or of `shape`), so an unwritten element fails the check."""

    def make(x, shape=None):
        if shape is None:
            return torch.full_like(x, float("nan"))  # keeps x's layout (channels_last)
        return torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)

    return make
