"""The encoder and decoder of Diffusers' autoencoders (AutoencoderKL, VQModel), and the diagonal Gaussian
posterior AutoencoderKL encodes to.

    Encoder: conv_in -> down blocks (no time embedding) -> mid block (attention) -> norm, SiLU -> conv_out
    Decoder: conv_in -> mid block -> up blocks -> norm, SiLU -> conv_out

Example:
    >>> enc = Encoder(3, 4, ("DownEncoderBlock2D",) * 2, (32, 64), layers_per_block=1, norm_num_groups=8)
    >>> moments = enc(torch.randn(1, 3, 32, 32))                    # (1, 8, 16, 16): mean and log-variance
    >>> z = DiagonalGaussianDistribution(moments).sample(torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..noise import randn_tensor
from ..outputs import BaseOutput
from .config_checks import require_one_of
from .conv import Conv2d
from .normalization import GroupNorm
from .unet_2d_blocks import BlockConfig, make_down_block, make_up_block, unet_mid_block_2d


@dataclass
class DecoderOutput(BaseOutput):
    """sample: the decoded images (B, C, H, W); commit_loss: the VQ commitment loss (VQModel only)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


def _mid_block(channels: int, act_fn: str, groups: int, add_attention: bool) -> nn.Module:
    """A single-head attention mid block without time embedding (eps 1e-6, as the LDM autoencoders)."""
    cfg = BlockConfig(num_layers=1, in_channels=channels, out_channels=channels, temb_channels=None,
                      resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=groups, attention_head_dim=channels)
    return unet_mid_block_2d(cfg, add_attention=add_attention)


class Encoder(nn.Module):
    """Images (B, in, H, W) -> features (B, out or 2*out, H/2^(n-1), W/2^(n-1)); `double_z` for mean + log-variance."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32,
                 act_fn: str = "silu", double_z: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        ch = list(block_out_channels)
        self.conv_in = Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(down_block_types):
            # padding 0: the LDM encoder pads bottom/right by one, then convolves with stride 2.
            cfg = BlockConfig(num_layers=layers_per_block, in_channels=ch[max(i - 1, 0)], out_channels=ch[i],
                              temb_channels=None, add_resample=i < len(ch) - 1, resnet_eps=1e-6,
                              downsample_padding=0, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                              attention_head_dim=ch[i])
            self.down_blocks.append(make_down_block(block_type, cfg))
        self.mid_block = _mid_block(ch[-1], act_fn, norm_num_groups, mid_block_add_attention)
        self.conv_norm_out = GroupNorm(norm_num_groups, ch[-1], eps=1e-6, act="silu")  # conv_act is always SiLU
        self.conv_out = Conv2d(ch[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        return self.conv_out(self.conv_norm_out(self.mid_block(sample)))


class Decoder(nn.Module):
    """Latents (B, in, h, w) -> images (B, out, h*2^(n-1), w*2^(n-1)). `norm_type="group"` only."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, up_block_types=("UpDecoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32,
                 act_fn: str = "silu", norm_type: str = "group", mid_block_add_attention: bool = True):
        super().__init__()
        require_one_of("Decoder", "norm_type", norm_type, ("group",))
        rev = list(reversed(block_out_channels))
        self.conv_in = Conv2d(in_channels, rev[0], kernel_size=3, stride=1, padding=1)
        self.mid_block = _mid_block(rev[0], act_fn, norm_num_groups, mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        for i, block_type in enumerate(up_block_types):
            prev = rev[max(i - 1, 0)]
            cfg = BlockConfig(num_layers=layers_per_block + 1, in_channels=prev, out_channels=rev[i],
                              prev_output_channel=prev, temb_channels=None, add_resample=i < len(rev) - 1,
                              resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                              attention_head_dim=rev[i], resnet_time_scale_shift="group")
            self.up_blocks.append(make_up_block(block_type, cfg))
        self.conv_norm_out = GroupNorm(norm_num_groups, rev[-1], eps=1e-6, act="silu")
        self.conv_out = Conv2d(rev[-1], out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.mid_block(self.conv_in(sample))
        for block in self.up_blocks:
            sample = block(sample)
        return self.conv_out(self.conv_norm_out(sample))


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) from encoder moments (B, 2C, h, w) = [mean, logvar] on channels.

    logvar is clamped to [-30, 20]. `sample(generator)` draws eps with fastdiff.noise.randn_tensor in the
    moments' shape, device and dtype, exactly as Diffusers draws, so one generator gives one sample.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std * eps, eps ~ N(0, I)."""
        eps = randn_tensor(self.mean.shape, generator=generator, device=self.parameters.device,
                           dtype=self.parameters.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other) per sample, summed over (C, h, w); `other` defaults to N(0, I)."""
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum((self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0
                               - self.logvar + other.logvar, dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims=(1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of `sample`: 0.5 * sum(log(2 pi) + logvar + (x - mean)^2 / var)."""
        if self.deterministic:
            return torch.Tensor([0.0])
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var,
                               dim=list(dims))
