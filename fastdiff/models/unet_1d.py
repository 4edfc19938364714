"""`UNet1DModel`: the waveform UNet of Dance Diffusion (Harmonai), with Diffusers' config and weights.

The time embedding is not added inside the blocks: it is broadcast over the samples and appended
to the input as extra channels, so `in_channels + extra_in_channels` is the first block's width,
and `extra_in_channels` must equal the embedding's width (Fourier: `time_embedding_dim`, default
`2 * block_out_channels[0]`; positional: `block_out_channels[0]`).

    x (B, in, L) ++ temb (B, E, L) -> down blocks (skips) -> mid block -> up blocks (+ skips) -> (B, out, L)

Implemented: the Dance blocks in `unet_1d_blocks`, "fourier" and "positional" time embeddings.
Not implemented (an UnsupportedConfigError names the key): `use_timestep_embedding=True`, `out_block_type`, and the
value-function blocks of diffusers.experimental.rl. `act_fn`, `norm_num_groups`, `layers_per_block`
and `downsample_each_block` are read only by those parts, so with the Dance blocks they change
nothing, in Diffusers as here; they are accepted for config compatibility.

Example:
    >>> unet = UNet1DModel.from_pretrained("harmonai/maestro-150k", subfolder="unet")
    >>> v = unet(torch.randn(1, 2, 65536), torch.tensor(0.5)).sample
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .config_checks import UnsupportedConfigError, require_default, require_one_of
from .embeddings import GaussianFourierProjection, Timesteps, batch_timesteps
from .modeling import ModelMixin
from .unet_1d_blocks import DOWN_BLOCKS, MID_BLOCKS, NOT_IMPLEMENTED, UP_BLOCKS


@dataclass
class UNet1DOutput(BaseOutput):
    """sample: (batch, out_channels, samples)."""

    sample: torch.Tensor


def _fourier(block_out_channels, time_embedding_dim, flip_sin_to_cos, freq_shift):
    dim = time_embedding_dim or 2 * block_out_channels[0]
    if dim % 2:
        raise ValueError(f"time_embedding_dim must be even for the Fourier embedding, got {dim}.")
    return GaussianFourierProjection(dim // 2, log=False, flip_sin_to_cos=flip_sin_to_cos)


def _positional(block_out_channels, time_embedding_dim, flip_sin_to_cos, freq_shift):
    # As in Diffusers, the width is block_out_channels[0]; time_embedding_dim does not apply.
    return Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)


TIME_EMBEDDINGS = {"fourier": _fourier, "positional": _positional}


def _lookup(table: dict, key: str, name):
    """The block class for config value `name` of config key `key`; a clear error otherwise."""
    if name in table:
        return table[name]
    what = "a Diffusers value-function (RL) block fastdiff does not implement" if name in NOT_IMPLEMENTED else "unknown"
    raise UnsupportedConfigError(f"UNet1DModel: config key {key!r}: block type {name!r} is {what}; implemented: {sorted(table)}.")


class UNet1DModel(ModelMixin):
    """Dance Diffusion's 1D UNet; same config, state-dict keys and outputs as Diffusers' `UNet1DModel`.

    Example:
        >>> unet = UNet1DModel(block_out_channels=(32, 32, 64), extra_in_channels=64)
        >>> unet(torch.randn(2, 2, 512), timestep=0.3).sample.shape
        torch.Size([2, 2, 512])
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 65536,
        sample_rate: int | None = None,
        in_channels: int = 2,
        out_channels: int = 2,
        extra_in_channels: int = 0,
        time_embedding_type: str = "fourier",
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = True,
        use_timestep_embedding: bool = False,
        freq_shift: float = 0.0,
        down_block_types: tuple[str, ...] = ("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
        mid_block_type: str = "UNetMidBlock1D",
        out_block_type: str | None = None,
        block_out_channels: tuple[int, ...] = (32, 32, 64),
        act_fn: str | None = None,
        norm_num_groups: int | None = 8,
        layers_per_block: int = 1,
        downsample_each_block: bool = False,
    ):
        super().__init__()
        # The time MLP and the output blocks belong to the value-function (RL) models only.
        require_default("UNet1DModel", "use_timestep_embedding", use_timestep_embedding, False)
        require_default("UNet1DModel", "out_block_type", out_block_type, None)
        require_one_of("UNet1DModel", "time_embedding_type", time_embedding_type, TIME_EMBEDDINGS)
        self.time_proj = TIME_EMBEDDINGS[time_embedding_type](block_out_channels, time_embedding_dim, flip_sin_to_cos, freq_shift)

        # Down: block i maps block_out_channels[i-1] (the input plus time channels for i = 0) to [i].
        widths = [in_channels + extra_in_channels, *block_out_channels]
        self.down_blocks = nn.ModuleList(
            _lookup(DOWN_BLOCKS, "down_block_types", name)(out_channels=widths[i + 1], in_channels=widths[i])
            for i, name in enumerate(down_block_types)
        )
        c = block_out_channels[-1]
        self.mid_block = _lookup(MID_BLOCKS, "mid_block_type", mid_block_type)(mid_channels=c, in_channels=c, out_channels=c)
        # Up: the reverse path, ending at out_channels; each block also takes its skip (same width).
        widths = [*reversed(block_out_channels)][: len(up_block_types)] + [out_channels]
        self.up_blocks = nn.ModuleList(
            _lookup(UP_BLOCKS, "up_block_types", name)(in_channels=widths[i], out_channels=widths[i + 1])
            for i, name in enumerate(up_block_types)
        )

    def _time_embedding(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """(B, E, L): the embedding of each item's t, repeated over the L samples."""
        if not torch.is_tensor(timestep):
            timestep = int(timestep)  # Diffusers' UNet1DModel makes a long tensor of any number: 0.7 -> 0
        t = batch_timesteps(timestep, sample.shape[0], sample.device)  # (B,), one t broadcast on the device
        emb = self.time_proj(t).to(sample.dtype)
        return emb[:, :, None].expand(-1, -1, sample.shape[2])

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, return_dict: bool = True):
        """sample (B, in_channels, L), timestep a number, 0-dim or (B,) tensor -> UNet1DOutput or (sample,)."""
        temb = self._time_embedding(sample, timestep)
        skips = []
        h = sample
        for block in self.down_blocks:
            h, res = block(h, temb)
            skips.extend(res)
        h = self.mid_block(h, temb)
        for block in self.up_blocks:
            h = block(h, (skips.pop(),), temb)  # deepest skip first
        return UNet1DOutput(sample=h) if return_dict else (h,)
