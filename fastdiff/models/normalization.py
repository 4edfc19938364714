"""Normalization layers that keep torch's parameter names (`weight`, `bias`) and compute through `fastdiff.ops`.

`GroupNorm` can carry the activation that follows it in Diffusers (norm -> SiLU), so the pair runs as
one fused op: `GroupNorm(32, 320, act="silu")(x) == silu(group_norm(x))`.

Example:
    >>> norm = GroupNorm(32, 320, eps=1e-5, act="silu")
    >>> y = norm(torch.randn(2, 320, 8, 8))
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm whose forward is `ops.group_norm`, optionally fused with the activation after it."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 act: str | None = None):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.act = act

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """`shift` (N, C), added to x first, runs in the same pass (a ResNet block's time embedding)."""
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, act=self.act, shift=shift)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", act={self.act}" if self.act else "")


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension whose forward is `ops.layer_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps)
