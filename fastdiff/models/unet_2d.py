"""`UNet2DModel`: the unconditional (or class-conditional) UNet of DDPM / DDIM checkpoints.

Example:
    >>> unet = UNet2DModel.from_pretrained("google/ddpm-cifar10-32")
    >>> eps = unet(noisy_images, timestep=999).sample
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .config_checks import UnsupportedConfigError, require_one_of
from .conv import Conv2d
from .embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, batch_timesteps
from .modeling import ModelMixin
from .normalization import GroupNorm
from .unet_2d_blocks import BlockConfig, make_down_block, make_up_block, unet_mid_block_2d


@dataclass
class UNet2DOutput(BaseOutput):
    """sample: (batch, channels, height, width), the model's prediction."""

    sample: torch.Tensor


class UNet2DModel(ModelMixin):
    """A 2D UNet: time embedding -> conv_in -> down blocks -> mid block -> up blocks (with skips) -> norm, SiLU, conv_out.

    Config keys, names and defaults are Diffusers'. `time_embedding_type` may be "positional" (DDPM),
    "fourier" (score SDE) or "learned"; `class_embed_type` None (with `num_class_embeds`), "timestep"
    or "identity".

    Example:
        >>> unet = UNet2DModel(sample_size=32, block_out_channels=(32, 64), norm_num_groups=8,
        ...                    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        ...                    up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        >>> out = unet(torch.randn(1, 3, 32, 32), 10).sample
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        if len(down_block_types) != len(up_block_types) or len(block_out_channels) != len(down_block_types):
            raise ValueError(f"{name}: down_block_types, up_block_types and block_out_channels must have the same "
                             f"length, got {down_block_types}, {up_block_types}, {block_out_channels}")
        require_one_of(name, "time_embedding_type", time_embedding_type, ("positional", "fourier", "learned"))
        require_one_of(name, "mid_block_type", mid_block_type, ("UNetMidBlock2D", None))
        require_one_of(name, "resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"))
        require_one_of(name, "class_embed_type", class_embed_type, (None, "timestep", "identity"))
        self.sample_size = sample_size
        c0 = block_out_channels[0]
        time_embed_dim = time_embedding_dim or c0 * 4

        self.conv_in = Conv2d(in_channels, c0, kernel_size=3, padding=(1, 1))
        self.time_proj, timestep_input_dim = self._time_projection(time_embedding_type, c0, flip_sin_to_cos,
                                                                   freq_shift, num_train_timesteps)
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)
        self.class_embedding = self._class_embedding(class_embed_type, num_class_embeds, timestep_input_dim,
                                                     time_embed_dim)
        block = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                     resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout)
        self.down_blocks = self._down_blocks(down_block_types, block_out_channels, layers_per_block, attention_head_dim,
                                             downsample_padding, downsample_type, block)
        self.mid_block = None
        if mid_block_type is not None:
            c = block_out_channels[-1]
            cfg = BlockConfig(num_layers=1, in_channels=c, out_channels=c, output_scale_factor=mid_block_scale_factor,
                              attention_head_dim=attention_head_dim if attention_head_dim is not None else c, **block)
            self.mid_block = unet_mid_block_2d(cfg, add_attention=add_attention, attn_groups=attn_norm_num_groups)
        self.up_blocks = self._up_blocks(up_block_types, block_out_channels, layers_per_block, attention_head_dim,
                                         upsample_type, block)
        groups_out = norm_num_groups if norm_num_groups is not None else min(c0 // 4, 32)
        self.conv_norm_out = GroupNorm(groups_out, c0, eps=norm_eps, act="silu")  # conv_act is always SiLU here
        self.conv_out = Conv2d(c0, out_channels, kernel_size=3, padding=1)

    @staticmethod
    def _time_projection(kind, c0, flip_sin_to_cos, freq_shift, num_train_timesteps):
        """(module mapping timesteps to features, feature width) for each time_embedding_type."""
        if kind == "fourier":
            return GaussianFourierProjection(embedding_size=c0, scale=16), 2 * c0
        if kind == "learned":
            if num_train_timesteps is None:
                raise ValueError("time_embedding_type='learned' needs num_train_timesteps")
            return nn.Embedding(num_train_timesteps, c0), c0
        return Timesteps(c0, flip_sin_to_cos, freq_shift), c0

    @staticmethod
    def _class_embedding(kind, num_class_embeds, timestep_input_dim, time_embed_dim):
        if kind is None and num_class_embeds is not None:
            return nn.Embedding(num_class_embeds, time_embed_dim)
        if kind == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim)
        if kind == "identity":
            return nn.Identity()
        return None

    @staticmethod
    def _down_blocks(types, channels, layers, head_dim, padding, downsample_type, block):
        blocks = nn.ModuleList()
        for i, block_type in enumerate(types):
            cfg = BlockConfig(num_layers=layers, in_channels=channels[max(i - 1, 0)], out_channels=channels[i],
                              add_resample=i < len(types) - 1, downsample_padding=padding,
                              resample_type=downsample_type,
                              attention_head_dim=head_dim if head_dim is not None else channels[i], **block)
            blocks.append(make_down_block(block_type, cfg))
        return blocks

    @staticmethod
    def _up_blocks(types, channels, layers, head_dim, upsample_type, block):
        rev = list(reversed(channels))
        blocks = nn.ModuleList()
        for i, block_type in enumerate(types):
            cfg = BlockConfig(num_layers=layers + 1, in_channels=rev[min(i + 1, len(rev) - 1)], out_channels=rev[i],
                              prev_output_channel=rev[max(i - 1, 0)], add_resample=i < len(types) - 1,
                              resample_type=upsample_type,
                              attention_head_dim=head_dim if head_dim is not None else rev[i], **block)
            blocks.append(make_up_block(block_type, cfg))
        return blocks

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None, return_dict: bool = True) -> UNet2DOutput | tuple:
        """Predict from `sample` (B, C, H, W) at `timestep` (number, 0-dim or (B,) tensor)."""
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        # Diffusers turns a python timestep into an integer tensor here (even a float).
        timesteps = batch_timesteps(timestep if torch.is_tensor(timestep) else int(timestep),
                                    sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        emb = self._add_class_embedding(emb, class_labels)

        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            sample, res = block(sample, emb)
            skips += res
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            sample, skips = block(sample, skips[-n:], emb), skips[:-n]
        sample = self.conv_out(self.conv_norm_out(sample))

        if self.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape(sample.shape[0], *([1] * (sample.ndim - 1)))  # output scaled by 1/sigma
        return UNet2DOutput(sample=sample) if return_dict else (sample,)

    def _add_class_embedding(self, emb: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("class_labels were given, but this model has no class embedding "
                                 "(set num_class_embeds or class_embed_type)")
            return emb
        if class_labels is None:
            raise ValueError("class_labels should be provided when doing class conditioning")
        if self.config.class_embed_type == "timestep":
            # Diffusers feeds the float32 projection to the MLP as is, which fails in half precision.
            class_labels = self.time_proj(class_labels).to(dtype=emb.dtype)
        return emb + self.class_embedding(class_labels).to(dtype=self.dtype)
