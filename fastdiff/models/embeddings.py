"""Timestep and class embeddings: sinusoidal (DDPM / Transformer) and Gaussian Fourier projections, and the MLP
that maps them to the time-embedding width every ResNet block receives.

Example:
    >>> proj = Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)
    >>> mlp = TimestepEmbedding(320, 1280)
    >>> emb = mlp(proj(torch.tensor([999, 10])))      # (2, 1280)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .activations import get_activation


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = False,
                       downscale_freq_shift: float = 1.0, scale: float = 1.0, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of a 1-D tensor of (possibly fractional) timesteps -> (N, dim), float32.

    With half = dim // 2 and i = 0..half-1:
        freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift))
        emb    = [sin(scale * t * freq), cos(scale * t * freq)]   ([cos, sin] if flip_sin_to_cos)
    An odd `dim` is zero-padded by one column.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * (timesteps[:, None].float() * freqs[None, :])
    first, second = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat([first, second], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps (see `timestep_embedding`)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos,
                                  self.downscale_freq_shift, self.scale)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of the noise level (score SDE): [sin(2*pi*x*w), cos(2*pi*x*w)], w ~ N(0, scale^2).

    `log=True` embeds log(x) instead of x; `flip_sin_to_cos` puts cos first. The frequencies are the
    (frozen) parameter `weight`.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, log: bool = True, flip_sin_to_cos: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            x = torch.log(x)
        x_proj = x[:, None] * self.weight[None, :] * 2 * math.pi
        first, second = (torch.cos(x_proj), torch.sin(x_proj)) if self.flip_sin_to_cos else (torch.sin(x_proj), torch.cos(x_proj))
        return torch.cat([first, second], dim=-1)


class TimestepEmbedding(nn.Module):
    """MLP on a timestep projection: linear_2(act(linear_1(x + cond_proj(condition)))), then an optional post_act."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None,
                 post_act_fn: str | None = None, cond_proj_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        # The guidance-embedding condition (LCM's w embedding) is added before the MLP, without bias.
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        return self.post_act(sample) if self.post_act is not None else sample


def batch_timesteps(timestep, batch: int, device: torch.device, integer_dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A timestep (python number, 0-dim or 1-D tensor) as a 1-D tensor of length `batch` on `device`.

    A python float becomes float64 and an int becomes `integer_dtype`, as in Diffusers. The broadcast is
    an `expand` on the device: no host sync, so the call can be captured in a CUDA graph (when the
    timestep is already a device tensor).
    """
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else integer_dtype
        timestep = torch.tensor([timestep], dtype=dtype, device=device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(device)
    return timestep.expand(batch)
