"""`UNet2DConditionModel`: the text-conditioned UNet of Stable Diffusion 1.x / 2.x (and the x4 upscaler,
inpainting, LCM's guidance-conditioned variant).

Example:
    >>> unet = UNet2DConditionModel.from_pretrained("runwayml/stable-diffusion-v1-5", subfolder="unet")
    >>> eps = unet(latents, t, encoder_hidden_states=text_embeddings).sample
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .activations import fusable_activation, get_activation
from .config_checks import UnsupportedConfigError, per_block, require_default, require_one_of
from .conv import Conv2d
from .embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, batch_timesteps
from .modeling import ModelMixin
from .normalization import GroupNorm
from .unet_2d_blocks import BlockConfig, make_down_block, make_mid_block, make_up_block

# Keys Diffusers accepts that select features fastdiff does not implement: only these defaults are allowed.
_UNIMPLEMENTED_DEFAULTS = {
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "addition_embed_type_num_heads": 64,
    "projection_class_embeddings_input_dim": None,
    "dual_cross_attention": False,
    "attention_type": "default",
    "reverse_transformer_layers_per_block": None,
    # Read only by ResnetDownsampleBlock2D / SimpleCrossAttn* blocks, which fastdiff does not implement.
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "cross_attention_norm": None,
    "mid_block_only_cross_attention": None,
}


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """sample: (batch, channels, height, width), the model's prediction."""

    sample: torch.Tensor


class UNet2DConditionModel(ModelMixin):
    """A 2D UNet conditioned on a timestep, text embeddings (cross-attention) and optionally class labels.

    Config keys, names and defaults are Diffusers'. Diffusers' naming quirk is kept: with
    `num_attention_heads=None` (every SD checkpoint), `attention_head_dim` is the number of heads of
    the cross-attention blocks. Keys for features fastdiff does not implement keep their defaults;
    any other value raises `UnsupportedConfigError` naming the key.

    Example:
        >>> unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        ...     cross_attention_dim=16, attention_head_dim=2, sample_size=16,
        ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        >>> eps = unet(torch.randn(1, 4, 16, 16), 10, torch.randn(1, 7, 16)).sample
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                           "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] | tuple[tuple[int, ...], ...] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self._check_config(dict(self.config))
        self.sample_size = sample_size
        c0 = block_out_channels[0]
        self.conv_in = Conv2d(in_channels, c0, kernel_size=conv_in_kernel, padding=(conv_in_kernel - 1) // 2)

        time_embed_dim, timestep_input_dim = self._set_time_embedding(time_embedding_type, time_embedding_dim, c0,
                                                                      flip_sin_to_cos, freq_shift, act_fn,
                                                                      timestep_post_act, time_cond_proj_dim)
        self.class_embedding = self._class_embedding(class_embed_type, num_class_embeds, act_fn, timestep_input_dim,
                                                     time_embed_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        blocks_time_embed_dim = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        per = self._per_block_settings(dict(self.config))
        common = dict(temb_channels=blocks_time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift, dropout=dropout,
                      use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
        self.down_blocks = self._down_blocks(down_block_types, block_out_channels, per, downsample_padding, common)
        self.mid_block = self._mid_block(mid_block_type, block_out_channels[-1], per, mid_block_scale_factor, common)
        self.up_blocks = self._up_blocks(up_block_types, block_out_channels, per, common)
        self.num_upsamplers = sum(1 for b in self.up_blocks if getattr(b, "upsamplers", None) is not None)

        fused = fusable_activation(act_fn)
        self.conv_norm_out = GroupNorm(norm_num_groups, c0, eps=norm_eps, act=fused)
        self.conv_act = get_activation(act_fn)
        self._act_after_norm_out = fused is None
        self.conv_out = Conv2d(c0, out_channels, kernel_size=conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    def _check_config(cls, config: dict) -> None:
        """Refuse what fastdiff does not implement, naming the key; check per-block lengths."""
        name = cls.__name__
        for key, default in _UNIMPLEMENTED_DEFAULTS.items():
            require_default(name, key, config[key], default)
        require_one_of(name, "class_embed_type", config["class_embed_type"], (None, "timestep", "identity"))
        require_one_of(name, "time_embedding_type", config["time_embedding_type"], ("positional", "fourier"))
        require_one_of(name, "resnet_time_scale_shift", config["resnet_time_scale_shift"], ("default", "scale_shift"))
        if config["norm_num_groups"] is None:
            raise UnsupportedConfigError(f"{name}: config key 'norm_num_groups'=None is not supported "
                                         "(the ResNet blocks need a group count)")
        layers = config["transformer_layers_per_block"]
        if isinstance(layers, (list, tuple)) and any(isinstance(n, (list, tuple)) for n in layers):
            raise UnsupportedConfigError(f"{name}: config key 'transformer_layers_per_block' with per-layer lists "
                                         "(asymmetric UNets) is not supported")
        n = len(config["down_block_types"])
        if len(config["up_block_types"]) != n or len(config["block_out_channels"]) != n:
            raise ValueError(f"{name}: down_block_types, up_block_types and block_out_channels must have the same "
                             f"length, got {config['down_block_types']}, {config['up_block_types']}, "
                             f"{config['block_out_channels']}")

    @classmethod
    def _per_block_settings(cls, config: dict) -> dict[str, list]:
        """Per-down-block lists of every setting that may be given as one value or one per block."""
        n, name = len(config["down_block_types"]), cls.__name__
        # Diffusers' quirk: when num_attention_heads is None, attention_head_dim holds the head count.
        heads = config["num_attention_heads"] or config["attention_head_dim"]
        keys = ("only_cross_attention", "attention_head_dim", "cross_attention_dim", "layers_per_block",
                "transformer_layers_per_block")
        per = {key: per_block(name, key, config[key], n) for key in keys}
        per["num_attention_heads"] = per_block(name, "num_attention_heads", heads, n)
        return per

    def _set_time_embedding(self, kind, time_embedding_dim, c0, flip_sin_to_cos, freq_shift, act_fn, post_act,
                            cond_proj_dim) -> tuple[int, int]:
        """time_proj (timesteps -> features) and time_embedding (features -> time_embed_dim MLP)."""
        if kind == "fourier":
            time_embed_dim = time_embedding_dim or c0 * 2
            if time_embed_dim % 2:
                raise ValueError(f"time_embed_dim must be even for fourier embeddings, got {time_embed_dim}")
            self.time_proj = GaussianFourierProjection(time_embed_dim // 2, log=False, flip_sin_to_cos=flip_sin_to_cos)
            timestep_input_dim = time_embed_dim
        else:
            time_embed_dim = time_embedding_dim or c0 * 4
            self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
            timestep_input_dim = c0
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn,
                                                post_act_fn=post_act, cond_proj_dim=cond_proj_dim)
        return time_embed_dim, timestep_input_dim

    @staticmethod
    def _class_embedding(kind, num_class_embeds, act_fn, timestep_input_dim, time_embed_dim):
        if kind is None and num_class_embeds is not None:
            return nn.Embedding(num_class_embeds, time_embed_dim)  # x4 upscaler: noise level as a class
        if kind == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        if kind == "identity":
            return nn.Identity()
        return None

    @staticmethod
    def _down_blocks(types, channels, per, padding, common) -> nn.ModuleList:
        blocks = nn.ModuleList()
        for i, block_type in enumerate(types):
            out = channels[i]
            cfg = BlockConfig(num_layers=per["layers_per_block"][i], in_channels=channels[max(i - 1, 0)],
                              out_channels=out, add_resample=i < len(types) - 1, downsample_padding=padding,
                              attention_head_dim=_or(per["attention_head_dim"][i], out), **_attention(per, i), **common)
            blocks.append(make_down_block(block_type, cfg))
        return blocks

    @staticmethod
    def _mid_block(block_type, channels, per, scale_factor, common) -> nn.Module | None:
        cfg = BlockConfig(num_layers=1, in_channels=channels, out_channels=channels, output_scale_factor=scale_factor,
                          transformer_layers=per["transformer_layers_per_block"][-1],
                          num_attention_heads=per["num_attention_heads"][-1],
                          cross_attention_dim=per["cross_attention_dim"][-1],
                          attention_head_dim=per["attention_head_dim"][-1], **common)
        return make_mid_block(block_type, cfg)

    @staticmethod
    def _up_blocks(types, channels, per, common) -> nn.ModuleList:
        rev = list(reversed(channels))
        rper = {k: list(reversed(v)) for k, v in per.items()}
        blocks = nn.ModuleList()
        for i, block_type in enumerate(types):
            out = rev[i]
            cfg = BlockConfig(num_layers=rper["layers_per_block"][i] + 1, in_channels=rev[min(i + 1, len(rev) - 1)],
                              out_channels=out, prev_output_channel=rev[max(i - 1, 0)],
                              add_resample=i < len(types) - 1, **_attention(rper, i),
                              # Diffusers indexes attention_head_dim without reversing it here.
                              attention_head_dim=_or(per["attention_head_dim"][i], out), **common)
            blocks.append(make_up_block(block_type, cfg))
        return blocks

    # ---- forward -----------------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        added_cond_kwargs: dict | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple:
        """Predict from `sample` (B, C, H, W) at `timestep` given `encoder_hidden_states` (B, L, D).

        `timestep` may be a python number, a 0-dim tensor or a (B,) tensor; it is broadcast on the
        device. Nothing here reads a tensor value on the host, so with device tensors the call can be
        captured in a CUDA graph. `cross_attention_kwargs={"scale": s}` is accepted for API
        compatibility: it scales LoRA layers, and fastdiff's UNet has none, so it has no effect.
        ControlNet residuals (`down_block_additional_residuals` + `mid_block_additional_residual`) and
        T2I-Adapter residuals (`down_intrablock_additional_residuals`) are added as in Diffusers.
        """
        self._check_forward_arguments(attention_mask, encoder_attention_mask, cross_attention_kwargs, added_cond_kwargs)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self._embed_time(sample, timestep, timestep_cond, class_labels)

        controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        adapter = list(down_intrablock_additional_residuals or ())
        if not controlnet and down_block_additional_residuals is not None:
            adapter = list(down_block_additional_residuals)  # Diffusers' deprecated T2I-Adapter spelling

        # When H or W is not a multiple of 2**num_upsamplers, each upsampler resizes to its skip's size.
        resize = any(d % 2**self.num_upsamplers != 0 for d in sample.shape[-2:])
        sample = self.conv_in(sample)
        sample, skips = self._down(sample, emb, encoder_hidden_states, adapter)
        if controlnet:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb, encoder_hidden_states)
            if adapter and sample.shape == adapter[0].shape:
                sample = sample + adapter.pop(0)
        if controlnet:
            sample = sample + mid_block_additional_residual
        sample = self._up(sample, skips, emb, encoder_hidden_states, resize)

        sample = self.conv_norm_out(sample)
        sample = self.conv_out(self.conv_act(sample) if self._act_after_norm_out else sample)
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)

    @staticmethod
    def _check_forward_arguments(attention_mask, encoder_attention_mask, cross_attention_kwargs, added_cond_kwargs):
        for name, mask in (("attention_mask", attention_mask), ("encoder_attention_mask", encoder_attention_mask)):
            if mask is not None:
                raise NotImplementedError(f"{name} is not supported: fastdiff.ops.attention takes no mask")
        unknown = sorted(set(cross_attention_kwargs or {}) - {"scale"})
        if unknown:
            raise NotImplementedError(f"cross_attention_kwargs keys {unknown} are not supported (only 'scale')")
        if added_cond_kwargs:
            raise NotImplementedError(f"added_cond_kwargs {sorted(added_cond_kwargs)} need addition embeddings, "
                                      "which fastdiff does not implement")

    def _embed_time(self, sample, timestep, timestep_cond, class_labels) -> torch.Tensor:
        """emb = MLP(sinusoid(t) [+ cond_proj(timestep_cond)]) + class embedding (or concatenated with it)."""
        timesteps = batch_timesteps(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when num_class_embeds > 0")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
            class_emb = self.class_embedding(class_labels).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        return self.time_embed_act(emb) if self.time_embed_act is not None else emb

    def _down(self, sample, emb, encoder_hidden_states, adapter: list):
        skips = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                residual = adapter.pop(0) if adapter else None
                sample, res = block(sample, emb, encoder_hidden_states, additional_residuals=residual)
            else:
                sample, res = block(sample, emb)
                if adapter:
                    # Diffusers adds in place, so the block's last skip (the same tensor) gets it too.
                    sample = sample + adapter.pop(0)
                    res = res[:-1] + (sample,)
            skips += res
        return sample, skips

    def _up(self, sample, skips, emb, encoder_hidden_states, resize: bool):
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if resize and i < len(self.up_blocks) - 1 else None
            sample = block(sample, res, emb, encoder_hidden_states, upsample_size=size)
        return sample


def _or(value, default):
    return default if value is None else value


def _attention(per: dict, i: int) -> dict:
    """Block i's transformer settings from the per-block config lists (a down or an up block)."""
    return dict(transformer_layers=per["transformer_layers_per_block"][i],
                num_attention_heads=per["num_attention_heads"][i], cross_attention_dim=per["cross_attention_dim"][i],
                only_cross_attention=per["only_cross_attention"][i])
