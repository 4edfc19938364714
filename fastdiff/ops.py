"""The backend table: every hot op the models call, with a Triton and a plain-PyTorch implementation.

Model code calls `ops.attention(...)`, `ops.group_norm(..., act="silu")`, ... and never asks which
backend runs. Each op is a `torch.library` custom op (`torch.ops.fastdiff.<name>`) with a fake
implementation, so models trace on the meta device and stay opaque to `torch.compile`.

Backend choice, per call:
  * `use_backend("torch" | "triton")` (process-wide, or as a context manager for a block), else the
    `FASTDIFF_BACKEND` environment variable, else "auto": Triton for CUDA tensors, torch elsewhere.
  * When Triton is chosen, the op's `supported(...)` predicate (device, dtype, shape) must agree;
    otherwise the torch entry runs.
  * Forcing "triton" where Triton cannot run (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)
    is an error, not a silent fallback.
  * Calls that need autograd (training) run the torch entry directly: the kernels are forward-only.

Example:
    >>> with ops.use_backend("torch"):
    ...     y = ops.group_norm(x, 32, weight, bias, 1e-5, act="silu")
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "triton")
_ENV = "FASTDIFF_BACKEND"
_state = threading.local()
_process_backend: str | None = None


# --------------------------------------------------------------------------------------------
# torch entries: the reference semantics every kernel is held to
# --------------------------------------------------------------------------------------------


def attention_torch(q, k, v, heads: int, scale: float | None = None, upcast: bool = False):
    """softmax(q k^T * scale) v over `heads` heads; q (B, Nq, H*D), k and v (B, Nk, H*D) -> (B, Nq, H*D)."""
    b, nq, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in (q, k, v))
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        out = F.scaled_dot_product_attention(qh.float(), kh.float(), vh.float(), scale=scale).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    return out.transpose(1, 2).reshape(b, nq, inner)


def group_norm_torch(x, num_groups: int, weight, bias, eps: float, act: str | None = None, shift=None):
    """GroupNorm of x + shift over (C/G, *spatial) per group, then the optional activation ("silu").
    `shift` (N, C) is added per sample and channel first: a ResNet block's time embedding."""
    if shift is not None:
        x = x + shift.reshape(*shift.shape, *(1,) * (x.dim() - 2))
    y = F.group_norm(x, num_groups, weight, bias, eps)
    return _ACTIVATIONS[act](y)


def layer_norm_torch(x, weight, bias, eps: float):
    """LayerNorm over the last dimension."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def geglu_torch(x):
    """GEGLU (Shazeer 2020): x = [h, g] split on the last dim -> h * GELU(g), exact (erf) GELU."""
    h, g = x.chunk(2, dim=-1)
    return h * F.gelu(g)


def linear_torch(x, weight, bias=None, residual=None, act: str | None = None):
    """act(x W^T + b) + residual. act="geglu": the output's halves [h, g] -> h * GELU(g) (weight (2D, K)).
    The output is contiguous, or laid out like `residual` when it is given (an NCHW map seen as tokens)."""
    y = F.linear(x, weight, bias)
    if act == "geglu":
        y = geglu_torch(y)
    if residual is None:
        return y
    if _needs_autograd(y, residual):
        return y + residual
    if y.stride() == residual.stride():
        return y.add_(residual)  # y is this call's own fresh tensor
    return torch.add(y, residual, out=torch.empty_like(residual))


LINEAR_ACTIVATIONS = (None, "geglu")


def scheduler_step_torch(x, model_output, guidance, table, step, start, noise, history, stash, accumulator,
                         denoised, clamp: bool = False, read_oldest: bool = False):
    """One fused scheduler step (guidance combine + the row of `table` at the device `step`), float32 math.
    The equations, the row layout and the math live in fastdiff/schedulers/fused.py, next to the tables."""
    from .schedulers.fused import scheduler_step_ref  # imported here: fastdiff.schedulers imports ops

    return scheduler_step_ref(x, model_output, guidance, table, step, start, noise, history, stash, accumulator,
                              denoised, clamp, read_oldest)


_ACTIVATIONS: dict[str | None, Callable] = {None: lambda y: y, "silu": F.silu}


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    torch: Callable
    triton: Callable | None = None
    # (args of the call) -> bool: may the Triton entry run on these inputs?
    supported: Callable[..., bool] = lambda *args, **kwargs: False


TABLE: dict[str, Op] = {
    "attention": Op(attention_torch),
    "group_norm": Op(group_norm_torch),
    "layer_norm": Op(layer_norm_torch),
    "geglu": Op(geglu_torch),
    "linear": Op(linear_torch),
    "scheduler_step": Op(scheduler_step_torch),
}


@functools.cache
def _triton_table() -> dict[str, Op]:
    """TABLE with the Triton launchers filled in. Imported on the first call that wants Triton: the
    import is heavy, and `@triton.jit` decides interpreted vs compiled when the kernel module loads."""
    from fastdiff.kernels import attention, geglu, group_norm, layer_norm, linear, scheduler_step

    kernels = {"attention": attention, "group_norm": group_norm, "layer_norm": layer_norm, "geglu": geglu,
               "linear": linear, "scheduler_step": scheduler_step}
    return {name: Op(TABLE[name].torch, getattr(module, name), module.supported) for name, module in kernels.items()}


# --------------------------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------------------------


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not one of {BACKENDS}")
    return name


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_can_run(device: torch.device | str | None = None) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under its interpreter (TRITON_INTERPRET=1).
    Without a device: can it run anywhere in this process?"""
    if not _triton_installed():
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device is None:
        return interpret or torch.cuda.is_available()
    return torch.device(device).type == ("cpu" if interpret else "cuda")


def current_backend() -> str:
    """The requested backend: innermost `use_backend` block, else process-wide, else env, else auto."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if _process_backend is not None:
        return _process_backend
    env = os.environ.get(_ENV)
    if env:
        return _check_backend(env.strip().lower())
    return "auto"


class use_backend:
    """Force a backend for the whole process (`use_backend("torch")`) or for a block (`with ...:`).

    A block is local to its thread and wins over the process-wide choice, which wins over the
    FASTDIFF_BACKEND environment variable.

    Example:
        >>> ops.use_backend("triton")          # process-wide from here on
        >>> with ops.use_backend("torch"):     # only inside the block
        ...     image = pipe(prompt).images[0]
    """

    def __init__(self, name: str):
        global _process_backend
        name = _check_backend(name)
        if name == "triton" and not triton_can_run():
            raise RuntimeError(_CANNOT_RUN.format(what="use_backend('triton')"))
        self.name = name
        # Applied process-wide now (plain call); __enter__ hands it back to the block instead.
        self._previous, _process_backend = _process_backend, name

    def __enter__(self):
        global _process_backend
        if _process_backend == self.name:  # not overridden by another process-wide call meanwhile
            _process_backend = self._previous
        stack = getattr(_state, "stack", None)
        if stack is None:
            stack = _state.stack = []
        stack.append(self.name)
        return self

    def __exit__(self, *exc):
        _state.stack.pop()
        return False


_CANNOT_RUN = (
    "{what} forces Triton, but it cannot run here: Triton runs on CUDA tensors, or on CPU tensors with "
    "TRITON_INTERPRET=1 set before fastdiff's kernels are imported. Use backend 'torch' or 'auto'."
)


def _use_triton(device: torch.device) -> bool:
    backend = current_backend()
    if backend == "triton":
        if not triton_can_run(device):
            raise RuntimeError(_CANNOT_RUN.format(what=f"{_ENV}=triton or use_backend('triton')")
                               + f" (tensors on {device})")
        return True
    return backend == "auto" and device.type == "cuda" and triton_can_run(device)


def implementation(name: str, *args) -> Callable:
    """The function that will run op `name` on these arguments (first argument is a tensor)."""
    if _use_triton(args[0].device):
        op = _triton_table()[name]
        if op.supported(*args):
            return op.triton
    return TABLE[name].torch


def uses_triton(device: torch.device | str) -> bool:
    """Will ops on tensors of this device run Triton kernels (backend choice and availability)?"""
    return _use_triton(torch.device(device))


def _eager(*tensors) -> bool:
    """Plain tensors outside torch.compile call the implementation directly: the custom-op wrapper
    costs 6-9 µs a call, most of a small model's host time per step. Meta and fake tensors, and
    torch.compile, go through the custom op (its fake impl; opaque to the compiler)."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or (type(t) in (torch.Tensor, torch.nn.Parameter) and not t.is_meta) for t in tensors)


def _needs_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------------------------
# custom ops (opaque to torch.compile, fake implementations for the meta device)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("fastdiff::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float, upcast: bool) -> torch.Tensor:
    return implementation("attention", q, k, v, heads, scale, upcast)(q, k, v, heads, scale, upcast)


@_attention_op.register_fake
def _(q, k, v, heads, scale, upcast):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastdiff::group_norm", mutates_args=())
def _group_norm_op(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
    act: str | None, shift: torch.Tensor | None,
) -> torch.Tensor:
    args = (x, num_groups, weight, bias, eps, act, shift)
    return implementation("group_norm", *args)(*args)


@_group_norm_op.register_fake
def _(x, num_groups, weight, bias, eps, act, shift):
    return torch.empty_like(x)


@torch.library.custom_op("fastdiff::layer_norm", mutates_args=())
def _layer_norm_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return implementation("layer_norm", x, weight, bias, eps)(x, weight, bias, eps)


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastdiff::geglu", mutates_args=())
def _geglu_op(x: torch.Tensor) -> torch.Tensor:
    return implementation("geglu", x)(x)


@_geglu_op.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("fastdiff::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
               act: str | None) -> torch.Tensor:
    return implementation("linear", x, weight, bias, residual, act)(x, weight, bias, residual, act)


@_linear_op.register_fake
def _(x, weight, bias, residual, act):
    if residual is not None:
        return torch.empty_like(residual)
    return x.new_empty((*x.shape[:-1], weight.shape[0] // 2 if act == "geglu" else weight.shape[0]))


@torch.library.custom_op("fastdiff::scheduler_step", mutates_args=("history", "stash", "accumulator", "denoised"))
def _scheduler_step_op(
    x: torch.Tensor, model_output: torch.Tensor, guidance: torch.Tensor | None, table: torch.Tensor,
    step: torch.Tensor, start: torch.Tensor | None, noise: torch.Tensor | None, history: torch.Tensor | None,
    stash: torch.Tensor | None, accumulator: torch.Tensor | None, denoised: torch.Tensor | None, clamp: bool,
    read_oldest: bool,
) -> torch.Tensor:
    args = (x, model_output, guidance, table, step, start, noise, history, stash, accumulator, denoised, clamp,
            read_oldest)
    return implementation("scheduler_step", *args)(*args)


@_scheduler_step_op.register_fake
def _(x, model_output, guidance, table, step, start, noise, history, stash, accumulator, denoised, clamp,
      read_oldest):
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, model_output.dtype),
                            memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------
# what model code calls
# --------------------------------------------------------------------------------------------


def attention(q, k, v, heads: int, scale: float | None = None, upcast: bool = False):
    """Multi-head attention on the (B, N, heads*D) layout the projections produce."""
    if scale is None:
        scale = (q.shape[-1] // heads) ** -0.5
    if _needs_autograd(q, k, v):
        return attention_torch(q, k, v, heads, scale, upcast)
    args = (q, k, v, heads, float(scale), bool(upcast))
    return implementation("attention", *args)(*args) if _eager(q, k, v) else _attention_op(*args)


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, act: str | None = None, shift=None):
    """GroupNorm of x (+ shift, (N, C) per sample and channel, added first) with an optional fused
    activation (`act=None` or `"silu"`)."""
    if act not in _ACTIVATIONS:
        raise ValueError(f"act={act!r} is not one of {list(_ACTIVATIONS)}")
    if _needs_autograd(x, weight, bias, shift):
        return group_norm_torch(x, num_groups, weight, bias, eps, act, shift)
    args = (x, num_groups, weight, bias, float(eps), act, shift)
    return implementation("group_norm", *args)(*args) if _eager(x, weight, bias, shift) else _group_norm_op(*args)


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5):
    """LayerNorm over the last dimension."""
    if _needs_autograd(x, weight, bias):
        return layer_norm_torch(x, weight, bias, eps)
    args = (x, weight, bias, float(eps))
    return implementation("layer_norm", *args)(*args) if _eager(x, weight, bias) else _layer_norm_op(*args)


def geglu(x):
    """h * GELU(g) for x = [h, g] split in half on the last dimension."""
    if _needs_autograd(x):
        return geglu_torch(x)
    return implementation("geglu", x)(x) if _eager(x) else _geglu_op(x)


def linear(x, weight, bias=None, residual=None, act: str | None = None):
    """act(x W^T + b) + residual in one kernel (a GEMM with a fused epilogue); x may be a strided view.
    act="geglu" takes weight = [W_h; W_g] (2D, K) and gives h * GELU(g). The output is contiguous, or laid
    out like `residual` (e.g. an NCHW map seen as (B, HW, C) tokens, so the result is that map)."""
    if act not in LINEAR_ACTIVATIONS:
        raise ValueError(f"act={act!r} is not one of {list(LINEAR_ACTIVATIONS)}")
    if _needs_autograd(x, weight, bias, residual):
        return linear_torch(x, weight, bias, residual, act)
    args = (x, weight, bias, residual, act)
    return implementation("linear", *args)(*args) if _eager(x, weight, bias, residual) else _linear_op(*args)


def scheduler_step(x, model_output, table, step, *, guidance=None, start=None, noise=None, history=None, stash=None,
                   accumulator=None, denoised=None, clamp: bool = False, read_oldest: bool = False):
    """One denoising step in one launch: m = u + g (c − u) on the [uncond; cond] `model_output` when `guidance`
    (a 1-element device tensor) is given, then the scheduler update from the row of `table` at the device
    `step` (fastdiff/schedulers/fused.py). Returns x'; updates history / stash / accumulator / denoised in place."""
    return _scheduler_step_op(x, model_output, guidance, table, step, start, noise, history, stash, accumulator,
                              denoised, bool(clamp), bool(read_oldest))
