"""Multi-head attention with Diffusers' parameter names (to_q, to_k, to_v, to_out.0), computed by `ops.attention`.

`Attention` is the token-sequence form used inside transformer blocks (self-attention, or cross-attention
on `encoder_hidden_states`). `SpatialSelfAttention` is the single-layer attention of DDPM UNets and VAEs:
group norm, self-attention over the H*W pixels, residual, and division by `rescale_output_factor`.

Example:
    >>> attn = Attention(query_dim=320, cross_attention_dim=768, heads=8, dim_head=40)
    >>> out = attn(torch.randn(2, 64, 320), encoder_hidden_states=torch.randn(2, 77, 768))   # (2, 64, 320)
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .normalization import GroupNorm


class Attention(nn.Module):
    """out = to_out(softmax(q k^T / sqrt(dim_head)) v), q = to_q(x), k = to_k(c), v = to_v(c), c = context or x."""

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 bias: bool = False, out_bias: bool = True, upcast_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.upcast_attention = upcast_attention
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """`residual` is added to the output, in the out-projection's epilogue (same layout as residual)."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = self.to_q(hidden_states), self.to_k(context), self.to_v(context)
        out = ops.attention(q, k, v, self.heads, self.scale, self.upcast_attention)
        project, dropout = self.to_out
        if dropout.training and dropout.p > 0:  # dropout sits between the projection and the residual
            out = dropout(project(out))
            return out if residual is None else out + residual
        return ops.linear(out, project.weight, project.bias, residual=residual)


class SpatialSelfAttention(Attention):
    """Self-attention over the pixels of a (B, C, H, W) map: (x + attn(group_norm(x))) / rescale_output_factor.

    `norm_num_groups=None` leaves out the group norm (Diffusers' UNetMidBlock2D with scale_shift).
    """

    def __init__(self, channels: int, heads: int = 1, dim_head: int | None = None, norm_num_groups: int | None = 32,
                 eps: float = 1e-5, rescale_output_factor: float = 1.0):
        super().__init__(channels, heads=heads, dim_head=dim_head if dim_head is not None else channels // heads,
                         bias=True)
        self.group_norm = GroupNorm(norm_num_groups, channels, eps=eps) if norm_num_groups is not None else None
        self.rescale_output_factor = rescale_output_factor

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states)
        tokens = hidden_states.flatten(2).transpose(1, 2)  # (B, HW, C) view, no copy
        # + residual in the out-projection, written in the residual's NCHW layout: the reshape is a view
        out = super().forward(tokens, residual=residual.flatten(2).transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return out / self.rescale_output_factor if self.rescale_output_factor != 1 else out
