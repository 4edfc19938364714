"""The ResNet block of every Diffusers UNet and VAE, with the time embedding injected between its two convs.

    h = conv1(act(norm1(x)))                                  (optionally resampled before conv1)
    default:      h = act(norm2(h + proj(act(temb))))           (the add runs inside the norm)
    scale_shift:  h = act(norm2(h) * (1 + scale) + shift),    [scale, shift] = proj(act(temb))
    out = (shortcut(x) + conv2(dropout(h))) / output_scale_factor

norm -> SiLU pairs run as one fused `ops.group_norm(..., act="silu")`.

Example:
    >>> block = ResnetBlock2D(in_channels=64, out_channels=128, temb_channels=256, groups=32)
    >>> y = block(torch.randn(2, 64, 16, 16), torch.randn(2, 256))    # (2, 128, 16, 16)
"""

from __future__ import annotations

import torch
from torch import nn

from .activations import fusable_activation, get_activation
from .config_checks import require_one_of
from .conv import Conv2d
from .normalization import GroupNorm
from .sampling import Downsample2D, Upsample2D

TIME_EMBEDDING_NORMS = ("default", "scale_shift", "group")  # "group": a VAE block without time embedding


class ResnetBlock2D(nn.Module):
    """Pre-norm ResNet block with a time-embedding shift (or scale-and-shift); Diffusers' parameter names."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6, dropout: float = 0.0,
                 non_linearity: str = "swish", time_embedding_norm: str = "default", output_scale_factor: float = 1.0,
                 up: bool = False, down: bool = False, conv_shortcut_bias: bool = True):
        super().__init__()
        require_one_of("ResnetBlock2D", "time_embedding_norm", time_embedding_norm, TIME_EMBEDDING_NORMS)
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        fused = fusable_activation(non_linearity)
        self.nonlinearity = get_activation(non_linearity)

        self.norm1 = GroupNorm(groups, in_channels, eps=eps, act=fused)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = self._time_projection(temb_channels, out_channels, time_embedding_norm)
        # scale_shift modulates between norm2 and the activation, so that pair cannot be fused.
        fused_out = None if time_embedding_norm == "scale_shift" else fused
        self.norm2 = GroupNorm(groups_out or groups, out_channels, eps=eps, act=fused_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self._act_after_norm1 = fused is None  # True when the activation is not fused into the norm
        self._act_after_norm2 = fused_out is None

        self.upsample = Upsample2D(in_channels) if up else None
        self.downsample = Downsample2D(in_channels, use_conv=False) if down and not up else None
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = Conv2d(in_channels, out_channels, kernel_size=1, bias=conv_shortcut_bias)

    @staticmethod
    def _time_projection(temb_channels, out_channels, time_embedding_norm):
        if temb_channels is None or time_embedding_norm == "group":
            return None
        return nn.Linear(temb_channels, out_channels * (2 if time_embedding_norm == "scale_shift" else 1))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            return self.upsample(x)
        return self.downsample(x) if self.downsample is not None else x

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(input_tensor)
        h = self.nonlinearity(h) if self._act_after_norm1 else h
        input_tensor, h = self._resample(input_tensor), self._resample(h)
        h = self.conv1(h)
        h = self._inject_time(h, temb)
        h = self.nonlinearity(h) if self._act_after_norm2 else h
        h = self.conv2(self.dropout(h))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        out = input_tensor + h
        return out / self.output_scale_factor if self.output_scale_factor != 1 else out

    def _inject_time(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """norm2 with the time embedding added before it (default) or applied as scale and shift after it."""
        if self.time_emb_proj is None or temb is None:
            if self.time_embedding_norm == "scale_shift":
                raise ValueError("temb must be given when time_embedding_norm is 'scale_shift'")
            return self.norm2(h)
        temb = self.time_emb_proj(self.nonlinearity(temb))
        if self.time_embedding_norm == "scale_shift":
            scale, shift = temb[:, :, None, None].chunk(2, dim=1)
            return self.norm2(h) * (1 + scale) + shift
        return self.norm2(h, shift=temb)  # norm2(h + temb), the add fused into the norm
