"""The down, mid and up blocks of Diffusers' UNets and VAEs, chosen by their Diffusers names from tables.

Every block is the same skeleton: `num_layers` x (ResNet block, optional attention), then an optional
resampler. What differs is the attention (none, pixel self-attention, or a text-conditioned
transformer), the resampler (strided conv or a ResNet block that resamples), and whether the block
takes a time embedding and produces skip connections (UNets) or not (VAE encoder/decoder).

    DOWN_BLOCKS["CrossAttnDownBlock2D"](cfg)   ->  DownBlock(cfg, attention="transformer", resample="conv")

Example:
    >>> cfg = BlockConfig(num_layers=2, in_channels=32, out_channels=64, temb_channels=128, resnet_groups=8)
    >>> block = make_down_block("AttnDownBlock2D", cfg)
    >>> h, skips = block(torch.randn(1, 32, 16, 16), temb=torch.randn(1, 128))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .attention import SpatialSelfAttention
from .config_checks import UnsupportedConfigError
from .resnet import ResnetBlock2D
from .sampling import Downsample2D, Upsample2D
from .transformer_2d import Transformer2DModel


@dataclass(frozen=True)
class BlockConfig:
    """What a UNet or VAE passes to one block (the arguments of Diffusers' get_down_block / get_up_block)."""

    num_layers: int
    in_channels: int
    out_channels: int
    temb_channels: int | None
    prev_output_channel: int | None = None  # up blocks: channels coming from the block below
    add_resample: bool = True  # add_downsample / add_upsample
    resnet_eps: float = 1e-6
    resnet_act_fn: str = "swish"
    resnet_groups: int | None = 32
    resnet_time_scale_shift: str = "default"
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    downsample_padding: int = 1
    resample_type: str | None = "conv"  # downsample_type / upsample_type of the Attn* blocks
    attention_head_dim: int | None = None  # pixel attention: channels per head (None: one head)
    num_attention_heads: int = 1  # transformer heads
    cross_attention_dim: int | None = None
    transformer_layers: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False


# ---- pieces shared by all blocks -------------------------------------------------------------------


def _resnet(cfg: BlockConfig, in_channels: int, out_channels: int, **kwargs) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=cfg.temb_channels,
                         eps=cfg.resnet_eps, groups=cfg.resnet_groups, dropout=cfg.dropout,
                         time_embedding_norm=cfg.resnet_time_scale_shift, non_linearity=cfg.resnet_act_fn,
                         output_scale_factor=cfg.output_scale_factor, **kwargs)


def _spatial_attention(cfg: BlockConfig, channels: int, norm_groups: int | None) -> SpatialSelfAttention:
    head_dim = cfg.attention_head_dim if cfg.attention_head_dim is not None else channels
    return SpatialSelfAttention(channels, heads=channels // head_dim, dim_head=head_dim, norm_num_groups=norm_groups,
                                eps=cfg.resnet_eps, rescale_output_factor=cfg.output_scale_factor)


def _transformer(cfg: BlockConfig, channels: int, norm_groups: int | None, only_cross_attention: bool) -> Transformer2DModel:
    heads = cfg.num_attention_heads
    return Transformer2DModel(heads, channels // heads, in_channels=channels, num_layers=cfg.transformer_layers,
                              cross_attention_dim=cfg.cross_attention_dim, norm_num_groups=norm_groups,
                              use_linear_projection=cfg.use_linear_projection,
                              only_cross_attention=only_cross_attention, upcast_attention=cfg.upcast_attention)


def _attention(kind: str | None, cfg: BlockConfig, channels: int, norm_groups: int | None,
               only_cross_attention: bool | None = None) -> nn.Module | None:
    """The attention after each ResNet block: None, "spatial" (pixel self-attention) or "transformer"."""
    if kind is None:
        return None
    if kind == "spatial":
        return _spatial_attention(cfg, channels, norm_groups)
    only_cross = cfg.only_cross_attention if only_cross_attention is None else only_cross_attention
    return _transformer(cfg, channels, norm_groups, only_cross)


def _run_attention(attn: nn.Module | None, h: torch.Tensor, encoder_hidden_states) -> torch.Tensor:
    if attn is None:
        return h
    if isinstance(attn, Transformer2DModel):
        return attn(h, encoder_hidden_states)
    return attn(h)


def _resample(module: nn.Module, h: torch.Tensor, temb, size=None) -> torch.Tensor:
    """Apply a resampler: a ResNet block that resamples takes the time embedding, a conv resampler does not."""
    if isinstance(module, ResnetBlock2D):
        return module(h, temb)
    if isinstance(module, Upsample2D):
        return module(h, size)
    return module(h)


# ---- down blocks -----------------------------------------------------------------------------------


class DownBlock(nn.Module):
    """num_layers x (resnet, attention), then a downsampler; returns the output and every intermediate (skips)."""

    def __init__(self, cfg: BlockConfig, attention: str | None = None, resample: str | None = "conv"):
        super().__init__()
        out = cfg.out_channels
        self.resnets = nn.ModuleList([_resnet(cfg, cfg.in_channels if i == 0 else out, out)
                                      for i in range(cfg.num_layers)])
        attentions = [_attention(attention, cfg, out, cfg.resnet_groups) for _ in range(cfg.num_layers)]
        self.attentions = nn.ModuleList(attentions) if attention is not None else None
        self.downsamplers = None
        if cfg.add_resample and resample == "conv":
            self.downsamplers = nn.ModuleList([Downsample2D(out, use_conv=True, out_channels=out,
                                                            padding=cfg.downsample_padding)])
        elif cfg.add_resample and resample == "resnet":
            self.downsamplers = nn.ModuleList([_resnet(cfg, out, out, down=True)])
        elif cfg.add_resample and resample is not None:
            raise UnsupportedConfigError(f"config key 'downsample_type'={resample!r} is not one of ['conv', 'resnet']")
        self.has_cross_attention = attention == "transformer"

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                additional_residuals: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips = ()
        attentions = self.attentions if self.attentions is not None else [None] * len(self.resnets)
        for i, (resnet, attn) in enumerate(zip(self.resnets, attentions)):
            hidden_states = _run_attention(attn, resnet(hidden_states, temb), encoder_hidden_states)
            if additional_residuals is not None and i == len(self.resnets) - 1:
                hidden_states = hidden_states + additional_residuals  # T2I-Adapter, inside the block
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = _resample(self.downsamplers[0], hidden_states, temb)
            skips += (hidden_states,)
        return hidden_states, skips


class DownEncoderBlock(DownBlock):
    """A VAE encoder level: no time embedding, no skips; returns only the hidden states."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(hidden_states, None)[0]


# ---- mid blocks ------------------------------------------------------------------------------------


class MidBlock(nn.Module):
    """resnet, then num_layers x (attention, resnet), all at the bottom resolution."""

    def __init__(self, cfg: BlockConfig, attention: str | None, attn_groups: int | None = None):
        super().__init__()
        ch = cfg.in_channels
        if cfg.resnet_groups is None:
            cfg = dataclasses.replace(cfg, resnet_groups=min(ch // 4, 32))
        self.resnets = nn.ModuleList([_resnet(cfg, ch, ch) for _ in range(cfg.num_layers + 1)])
        # Diffusers' mid blocks never make attn1 a cross-attention, whatever only_cross_attention says.
        self.attentions = nn.ModuleList([_attention(attention, cfg, ch, attn_groups, only_cross_attention=False)
                                         for _ in range(cfg.num_layers)])
        self.has_cross_attention = attention == "transformer"

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = resnet(_run_attention(attn, hidden_states, encoder_hidden_states), temb)
        return hidden_states


def unet_mid_block_2d(cfg: BlockConfig, add_attention: bool = True, attn_groups: int | None = None) -> MidBlock:
    """Diffusers' UNetMidBlock2D: pixel attention whose group norm defaults to the ResNet groups, but is
    left out under scale_shift unless `attn_groups` is given."""
    groups = cfg.resnet_groups if cfg.resnet_groups is not None else min(cfg.in_channels // 4, 32)
    if attn_groups is None and cfg.resnet_time_scale_shift == "default":
        attn_groups = groups
    return MidBlock(cfg, "spatial" if add_attention else None, attn_groups)


def unet_mid_block_2d_cross_attn(cfg: BlockConfig) -> MidBlock:
    groups = cfg.resnet_groups if cfg.resnet_groups is not None else min(cfg.in_channels // 4, 32)
    return MidBlock(cfg, "transformer", groups)


# ---- up blocks -------------------------------------------------------------------------------------


class UpBlock(nn.Module):
    """num_layers x (concat a skip, resnet, attention), then an upsampler (optionally to a given size)."""

    def __init__(self, cfg: BlockConfig, attention: str | None = None, resample: str | None = "conv"):
        super().__init__()
        out, n = cfg.out_channels, cfg.num_layers
        # Layer i sees the previous output (block below for i = 0) plus the matching skip connection.
        ins = [(cfg.prev_output_channel if i == 0 else out) + (cfg.in_channels if i == n - 1 else out) for i in range(n)]
        self.resnets = nn.ModuleList([_resnet(cfg, c, out) for c in ins])
        attentions = [_attention(attention, cfg, out, cfg.resnet_groups) for _ in range(n)]
        self.attentions = nn.ModuleList(attentions) if attention is not None else None
        self.upsamplers = _upsamplers(cfg, resample)
        self.has_cross_attention = attention == "transformer"

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[torch.Tensor, ...],
                temb: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        attentions = self.attentions if self.attentions is not None else [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            skip, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states = resnet(torch.cat([hidden_states, skip], dim=1), temb)
            hidden_states = _run_attention(attn, hidden_states, encoder_hidden_states)
        if self.upsamplers is not None:
            hidden_states = _resample(self.upsamplers[0], hidden_states, temb, upsample_size)
        return hidden_states


def _upsamplers(cfg: BlockConfig, resample: str | None) -> nn.ModuleList | None:
    out = cfg.out_channels
    if not cfg.add_resample or resample is None:
        return None
    if resample == "conv":
        return nn.ModuleList([Upsample2D(out, use_conv=True, out_channels=out)])
    if resample == "resnet":
        return nn.ModuleList([_resnet(cfg, out, out, up=True)])
    raise UnsupportedConfigError(f"config key 'upsample_type'={resample!r} is not one of ['conv', 'resnet']")


class UpDecoderBlock(nn.Module):
    """A VAE decoder level: num_layers resnets without skips, then an upsampler."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        out = cfg.out_channels
        self.resnets = nn.ModuleList([_resnet(cfg, cfg.in_channels if i == 0 else out, out)
                                      for i in range(cfg.num_layers)])
        self.upsamplers = _upsamplers(cfg, "conv")

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
        return self.upsamplers[0](hidden_states) if self.upsamplers is not None else hidden_states


# ---- the tables ------------------------------------------------------------------------------------

BlockFactory = Callable[[BlockConfig], nn.Module]

DOWN_BLOCKS: dict[str, BlockFactory] = {
    "DownBlock2D": lambda c: DownBlock(c),
    "AttnDownBlock2D": lambda c: DownBlock(c, "spatial", resample=c.resample_type or "conv"),
    "CrossAttnDownBlock2D": lambda c: DownBlock(c, "transformer"),
    "DownEncoderBlock2D": lambda c: DownEncoderBlock(c),
}

UP_BLOCKS: dict[str, BlockFactory] = {
    "UpBlock2D": lambda c: UpBlock(c),
    "AttnUpBlock2D": lambda c: UpBlock(c, "spatial", resample=c.resample_type or "conv"),
    "CrossAttnUpBlock2D": lambda c: UpBlock(c, "transformer"),
    "UpDecoderBlock2D": lambda c: UpDecoderBlock(c),
}

MID_BLOCKS: dict[str, BlockFactory] = {
    "UNetMidBlock2DCrossAttn": unet_mid_block_2d_cross_attn,
    # As a UNet2DConditionModel mid block, Diffusers builds UNetMidBlock2D as a single ResNet block.
    "UNetMidBlock2D": lambda c: unet_mid_block_2d(dataclasses.replace(c, num_layers=0), add_attention=False),
}


def _lookup(table: dict[str, BlockFactory], key: str, block_type: str) -> BlockFactory:
    # Diffusers accepts the old "UNetRes" prefix (UNetResDownBlock2D == DownBlock2D).
    name = block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type
    if name not in table:
        raise UnsupportedConfigError(
            f"config key {key!r}: block type {block_type!r} is not implemented by fastdiff; "
            f"implemented: {sorted(table)}"
        )
    return table[name]


def make_down_block(block_type: str, cfg: BlockConfig) -> nn.Module:
    return _lookup(DOWN_BLOCKS, "down_block_types", block_type)(cfg)


def make_up_block(block_type: str, cfg: BlockConfig) -> nn.Module:
    return _lookup(UP_BLOCKS, "up_block_types", block_type)(cfg)


def make_mid_block(block_type: str | None, cfg: BlockConfig) -> nn.Module | None:
    return None if block_type is None else _lookup(MID_BLOCKS, "mid_block_type", block_type)(cfg)
