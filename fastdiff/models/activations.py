"""Activation functions by Diffusers' names, which of them `ops.group_norm` can fuse, and the GEGLU projection.

Example:
    >>> act = get_activation("silu")
    >>> fusable_activation("swish")
    'silu'
"""

from __future__ import annotations

from torch import nn

from .. import ops
from .config_checks import UnsupportedConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}

# Activations that ops.group_norm applies in the same pass (its `act=` argument).
_FUSABLE = {"swish": "silu", "silu": "silu"}


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for a Diffusers `act_fn` name (case-insensitive)."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise UnsupportedConfigError(f"activation function {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def fusable_activation(name: str) -> str | None:
    """The `act=` value for ops.group_norm that computes this activation, or None if it cannot be fused."""
    get_activation(name)  # validates the name
    return _FUSABLE.get(name.lower())


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): [h, g] = proj(x); out = h * GELU(g), one `ops.linear` (the
    gate in the GEMM's epilogue: the 2x-wide projection output is never materialised)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states):
        return ops.linear(hidden_states, self.proj.weight, self.proj.bias, act="geglu")
