"""Resolution changes between UNet levels: strided-conv (or average-pool) downsampling, nearest-neighbour
upsampling with an optional 3x3 conv.

Example:
    >>> down = Downsample2D(64, use_conv=True, padding=1)      # (B, 64, 32, 32) -> (B, 64, 16, 16)
    >>> up = Upsample2D(64, use_conv=True)                      # (B, 64, 16, 16) -> (B, 64, 32, 32)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv2d


class Downsample2D(nn.Module):
    """Halve H and W: 3x3 conv with stride 2 (`use_conv`), else 2x2 average pooling.

    `padding=0` is the VAE's asymmetric convention: pad one zero row/column at the bottom/right only,
    then convolve without padding (as the original LDM code did).
    """

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        if use_conv:
            self.conv = Conv2d(channels, self.out_channels, kernel_size=3, stride=2, padding=padding)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.conv = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Double H and W (or resize to `output_size`) by nearest neighbour, then an optional 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.conv = Conv2d(channels, self.out_channels, kernel_size=3, padding=1) if use_conv else None

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if hidden_states.shape[0] >= 64:
            # The NHWC nearest kernel fails for large batches (diffusers issue #984).
            hidden_states = hidden_states.contiguous()
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        return self.conv(hidden_states) if self.conv is not None else hidden_states
