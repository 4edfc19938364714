"""The spatial transformer of Stable Diffusion UNets: group norm, project pixels to tokens, a stack of
`BasicTransformerBlock`s (self-attention, cross-attention on the text, GEGLU feed-forward), project back,
add the input.

Example:
    >>> t = Transformer2DModel(8, 40, in_channels=320, cross_attention_dim=768)
    >>> y = t(torch.randn(2, 320, 16, 16), encoder_hidden_states=torch.randn(2, 77, 768))   # (2, 320, 16, 16)
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .activations import GEGLU
from .attention import Attention
from .conv import Conv2d
from .normalization import GroupNorm, LayerNorm


class FeedForward(nn.Module):
    """net.2(net.1(GEGLU(x))) (+ residual, in net.2's epilogue): dim -> 4*dim (gated) -> dim."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim)])

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        gated, dropout, out = self.net
        return ops.linear(dropout(gated(hidden_states)), out.weight, out.bias, residual=residual)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: x += attn1(norm1(x)); x += attn2(norm2(x), text); x += ff(norm3(x)).

    `only_cross_attention` makes attn1 attend to the text as well (the x4 upscaler's first blocks).
    Without `cross_attention_dim` there is no attn2.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None = None, only_cross_attention: bool = False,
                 upcast_attention: bool = False, attention_bias: bool = False, norm_eps: float = 1e-5,
                 dropout: float = 0.0):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        attn = dict(heads=num_attention_heads, dim_head=attention_head_dim, bias=attention_bias,
                    upcast_attention=upcast_attention, dropout=dropout)
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(dim, cross_attention_dim if only_cross_attention else None, **attn)
        self.norm2 = LayerNorm(dim, eps=norm_eps) if cross_attention_dim is not None else None
        self.attn2 = Attention(dim, cross_attention_dim, **attn) if cross_attention_dim is not None else None
        self.norm3 = LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        # every "+ x" runs in the epilogue of the projection before it (attn out-projections, ff.net.2)
        context1 = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = self.attn1(self.norm1(hidden_states), context1, residual=hidden_states)
        if self.attn2 is not None:
            hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states, residual=hidden_states)
        return self.ff(self.norm3(hidden_states), residual=hidden_states)


class Transformer2DModel(nn.Module):
    """Continuous-input 2D transformer: (B, C, H, W) -> tokens (B, HW, inner) -> blocks -> (B, C, H, W) + input.

    proj_in / proj_out are 1x1 convs, or linear layers with `use_linear_projection` (SD 2.x); either way
    they run as `ops.linear` over the channels: proj_in reads the normed map as (B, HW, C) tokens in
    place, proj_out writes its result plus the input straight into an NCHW map (no layout copies).
    """

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int = 320,
                 num_layers: int = 1, cross_attention_dim: int | None = None, norm_num_groups: int = 32,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        projection = nn.Linear if use_linear_projection else (lambda i, o: Conv2d(i, o, kernel_size=1))
        self.proj_in = projection(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim,
                                  only_cross_attention, upcast_attention, dropout=dropout)
            for _ in range(num_layers)
        ])
        self.proj_out = projection(inner_dim, in_channels)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        # A 1x1 conv is a linear layer over the channels: its (O, I, 1, 1) weight viewed as (O, I).
        as_tokens = lambda x: x.flatten(2).transpose(1, 2)  # noqa: E731  (B, C, H, W) -> (B, HW, C) view
        tokens = ops.linear(as_tokens(self.norm(hidden_states)), self.proj_in.weight.flatten(1), self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens, encoder_hidden_states)
        out = ops.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias, residual=as_tokens(hidden_states))
        return out.transpose(1, 2).reshape(hidden_states.shape)  # out is laid out like the input: a view
