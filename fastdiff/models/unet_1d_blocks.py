"""Blocks of the Dance Diffusion 1D UNet (Harmonai's audio-diffusion), with Diffusers' parameter names.

Every block is the same pattern, `[down] -> (ResConvBlock -> [SelfAttention1d]) x n -> [up]`, on
(batch, channels, samples) tensors. Down blocks return `(h, (h,))` (the skip for the matching up
block); up blocks first concatenate that skip on the channel axis.

    block               down  attention  up   resnets  mid width
    DownBlock1DNoSkip    -       -       -       3     out   (input is cat(sample, time embedding))
    DownBlock1D          x       -       -       3     out
    AttnDownBlock1D      x       x       -       3     out
    UNetMidBlock1D       x       x       x       6     given
    AttnUpBlock1D        -       x       x       3     out
    UpBlock1D            -       -       x       3     in
    UpBlock1DNoSkip      -       -       -       3     in    (last resnet without norm + GELU)

`temb` is accepted by every block for a uniform call; only DownBlock1DNoSkip reads it.

Example:
    >>> block = AttnDownBlock1D(out_channels=64, in_channels=32)
    >>> h, skips = block(torch.randn(1, 32, 512))    # h: (1, 64, 256)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .normalization import GroupNorm

# Resampling filters (Harmonai's audio-diffusion). "cubic" is Keys' cubic W (a = -0.5) stretched for
# a 2x rate change: W(x/2)/2 at x = ±0.5, ±1.5, ±2.5, ±3.5, taps summing to 1. Dance uses only "cubic".
_KERNELS = {
    "linear": [1 / 8, 3 / 8, 3 / 8, 1 / 8],
    "cubic": [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875],
}


def _depthwise(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The 1D filter as a (C, 1, K) weight: the same filter on every channel, channels kept apart.

    Diffusers writes it as a dense (C, C, K) weight with the filter on the diagonal; a grouped
    convolution is the same function in C times fewer multiply-adds.
    """
    return kernel.to(x.dtype)[None, None, :].expand(x.shape[1], 1, -1)


class Downsample1d(nn.Module):
    """Anti-aliased 2x decimation: reflect-pad by K/2 - 1, filter, keep every other sample (L -> L/2)."""

    def __init__(self, kernel: str = "linear", pad_mode: str = "reflect"):
        super().__init__()
        self.pad_mode = pad_mode
        self.register_buffer("kernel", torch.tensor(_KERNELS[kernel]))  # persistent: it is in checkpoints
        self.pad = len(_KERNELS[kernel]) // 2 - 1

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = F.pad(hidden_states, (self.pad, self.pad), self.pad_mode)
        return F.conv1d(x, _depthwise(self.kernel, x), stride=2, groups=x.shape[1])


class Upsample1d(nn.Module):
    """2x interpolation with the filter scaled by 2 (zero-stuffing halves the energy): L -> 2L.

    With K = 8, pad = 3: reflect-pad by (pad+1)//2 = 2, then a stride-2 transposed convolution
    cropped by 2*pad+1 = 7 on each side gives (L + 4 - 1) * 2 + 8 - 14 = 2L samples.
    """

    def __init__(self, kernel: str = "linear", pad_mode: str = "reflect"):
        super().__init__()
        self.pad_mode = pad_mode
        self.register_buffer("kernel", torch.tensor(_KERNELS[kernel]) * 2)
        self.pad = len(_KERNELS[kernel]) // 2 - 1

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        edge = (self.pad + 1) // 2
        x = F.pad(hidden_states, (edge, edge), self.pad_mode)
        weight = _depthwise(self.kernel, x)
        return F.conv_transpose1d(x, weight, stride=2, padding=2 * self.pad + 1, groups=x.shape[1])


class ResConvBlock(nn.Module):
    """h = GELU(GN(conv_2(GELU(GN(conv_1(x)))))) + skip(x), convs of width 5; skip is a 1x1 conv if C changes.

    `is_last` drops the final GroupNorm + GELU (the network's output layer). GroupNorm has one
    group (LayerNorm over channels and time). GELU is the exact (erf) one, in plain torch: the ops
    table has no GELU entry.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.has_conv_skip = in_channels != out_channels
        if self.has_conv_skip:
            self.conv_skip = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.conv_1 = nn.Conv1d(in_channels, mid_channels, 5, padding=2)
        self.group_norm_1 = GroupNorm(1, mid_channels)
        self.conv_2 = nn.Conv1d(mid_channels, out_channels, 5, padding=2)
        if not is_last:
            self.group_norm_2 = GroupNorm(1, out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.conv_skip(hidden_states) if self.has_conv_skip else hidden_states
        h = F.gelu(self.group_norm_1(self.conv_1(hidden_states)))
        h = self.conv_2(h)
        if not self.is_last:
            h = F.gelu(self.group_norm_2(h))
        return h + residual


class SelfAttention1d(nn.Module):
    """x + proj_attn(softmax(q k^T / sqrt(d)) v) over time, with q, k, v linear maps of GN(x).

    Diffusers scales q and k each by d^(-1/4); the product is the usual 1/sqrt(d), which is
    `ops.attention`'s default scale. Dropout is not applied (inference only).
    """

    def __init__(self, in_channels: int, n_head: int = 1, dropout_rate: float = 0.0):
        super().__init__()
        if n_head < 1 or in_channels % n_head:
            # Dance blocks use n_head = channels // 32: fewer than 32 channels gives no head at all.
            raise ValueError(
                f"SelfAttention1d needs at least one head dividing the channels; got {in_channels} channels and "
                f"{n_head} heads (the 1D attention blocks use channels // 32 heads, so they need >= 32 channels)."
            )
        self.channels = in_channels
        self.num_heads = n_head
        self.group_norm = GroupNorm(1, in_channels)
        self.query = nn.Linear(in_channels, in_channels)
        self.key = nn.Linear(in_channels, in_channels)
        self.value = nn.Linear(in_channels, in_channels)
        self.proj_attn = nn.Linear(in_channels, in_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.group_norm(hidden_states).transpose(1, 2)  # (B, L, C): tokens are time steps
        h = ops.attention(self.query(h), self.key(h), self.value(h), self.num_heads)
        return self.proj_attn(h).transpose(1, 2) + hidden_states


class _ResAttnStack(nn.Module):
    """`[down] -> (resnets[i] -> [attentions[i]]) for i < n -> [up]`; channels in -> mid ... mid -> out."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, num_resnets: int = 3, *,
                 down: bool = False, attention: bool = False, up: bool = False, last_is_last: bool = False):
        super().__init__()
        outs = [mid_channels] * (num_resnets - 1) + [out_channels]
        ins = [in_channels] + outs[:-1]
        last = num_resnets - 1
        self.down = Downsample1d("cubic") if down else None
        self.resnets = nn.ModuleList(
            ResConvBlock(c_in, mid_channels, c_out, is_last=last_is_last and i == last)
            for i, (c_in, c_out) in enumerate(zip(ins, outs))
        )
        # Attention after each resnet, at that resnet's width, channels // 32 heads.
        self.attentions = nn.ModuleList(SelfAttention1d(c, c // 32) for c in outs) if attention else None
        self.up = Upsample1d("cubic") if up else None

    def _run(self, h: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            h = self.down(h)
        for i, resnet in enumerate(self.resnets):
            h = resnet(h)
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.up is not None:
            h = self.up(h)
        return h


class _DownBlock(_ResAttnStack):
    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        h = self._run(hidden_states)
        return h, (h,)


class _UpBlock(_ResAttnStack):
    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1))


class DownBlock1DNoSkip(_DownBlock):
    """First block: no downsampling; its input is the sample with the time embedding appended as channels."""

    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__(in_channels, mid_channels or out_channels, out_channels)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        return super().forward(torch.cat([hidden_states, temb], dim=1))


class DownBlock1D(_DownBlock):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__(in_channels, mid_channels or out_channels, out_channels, down=True)


class AttnDownBlock1D(_DownBlock):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None):
        super().__init__(in_channels, mid_channels or out_channels, out_channels, down=True, attention=True)


class UNetMidBlock1D(_ResAttnStack):
    """Six resnet + attention pairs between a 2x down- and upsampling."""

    def __init__(self, mid_channels: int, in_channels: int, out_channels: int | None = None):
        out_channels = out_channels or in_channels
        super().__init__(in_channels, mid_channels, out_channels, 6, down=True, attention=True, up=True)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(hidden_states)


class AttnUpBlock1D(_UpBlock):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__(2 * in_channels, mid_channels or out_channels, out_channels, attention=True, up=True)


class UpBlock1D(_UpBlock):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__(2 * in_channels, mid_channels or in_channels, out_channels, up=True)


class UpBlock1DNoSkip(_UpBlock):
    """Last block: no upsampling, and the final resnet ends on its convolution (the model's output)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__(2 * in_channels, mid_channels or in_channels, out_channels, last_is_last=True)


DOWN_BLOCKS = {cls.__name__: cls for cls in (DownBlock1DNoSkip, DownBlock1D, AttnDownBlock1D)}
MID_BLOCKS = {cls.__name__: cls for cls in (UNetMidBlock1D,)}
UP_BLOCKS = {cls.__name__: cls for cls in (AttnUpBlock1D, UpBlock1D, UpBlock1DNoSkip)}
# Diffusers' value-function / trajectory blocks (diffusers.experimental.rl), not implemented here.
NOT_IMPLEMENTED = {"DownResnetBlock1D", "UpResnetBlock1D", "MidResTemporalBlock1D", "ValueFunctionMidBlock1D"}
