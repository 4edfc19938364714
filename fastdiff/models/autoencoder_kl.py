"""`AutoencoderKL`: the KL-regularised VAE of Stable Diffusion (images <-> latents), with Diffusers' sliced
and tiled encode/decode.

Example:
    >>> vae = AutoencoderKL.from_pretrained("runwayml/stable-diffusion-v1-5", subfolder="vae")
    >>> latents = vae.encode(images).latent_dist.sample(generator) * vae.config.scaling_factor
    >>> images = vae.decode(latents / vae.config.scaling_factor).sample
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .conv import Conv2d
from .modeling import ModelMixin
from .vae import Decoder, DecoderOutput, DiagonalGaussianDistribution, Encoder


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """latent_dist: the posterior (a DiagonalGaussianDistribution) of the encoded images."""

    latent_dist: DiagonalGaussianDistribution


class AutoencoderKL(ModelMixin):
    """VAE with a diagonal Gaussian posterior. Config keys, names and defaults are Diffusers'.

    `enable_slicing()` encodes/decodes one image of the batch at a time. `enable_tiling()` splits
    inputs larger than a tile (`sample_size` pixels, `sample_size / 2^(levels-1)` latents) into tiles
    overlapping by `tile_overlap_factor`, runs each alone, and blends the overlaps linearly.

    Example:
        >>> vae = AutoencoderKL(block_out_channels=(32, 64), norm_num_groups=8, sample_size=32,
        ...                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        >>> recon = vae(torch.randn(1, 3, 32, 32)).sample
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | tuple[int, ...] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        blocks = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
                      norm_num_groups=norm_num_groups, mid_block_add_attention=mid_block_add_attention)
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, double_z=True, **blocks)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, **blocks)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    # ---- switches ----------------------------------------------------------------------------------

    def enable_slicing(self):
        """Encode and decode one image of the batch at a time (less memory, same result)."""
        self.use_slicing = True

    def disable_slicing(self):
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True):
        """Encode and decode large images tile by tile, blending the overlaps (less memory, slightly different)."""
        self.use_tiling = use_tiling

    def disable_tiling(self):
        self.use_tiling = False

    # ---- encode ------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images (B, C, H, W) in [-1, 1] -> posterior over latents (B, latent_channels, H/f, W/f)."""
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled_encode(x)
        return self._encode_tile(x)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Moments of `x` computed tile by tile (tile_sample_min_size pixels) and blended."""
        return self._tiled(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Tiled `encode` regardless of size (Diffusers' deprecated public form)."""
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # ---- decode ------------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None) -> DecoderOutput | tuple:
        """Latents (B, latent_channels, h, w) -> images (B, C, h*f, w*f). `generator` is unused (API parity)."""
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(part) for part in z.split(1)])
        else:
            decoded = self._decode(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self.tiled_decode(z).sample
        return self._decode_tile(z)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z) if self.post_quant_conv is not None else z)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Images decoded tile by tile (tile_latent_min_size latents) and blended."""
        decoded = self._tiled(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    # ---- tiling ------------------------------------------------------------------------------------

    def _tiled(self, x: torch.Tensor, fn, tile_in: int, tile_out: int) -> torch.Tensor:
        """Run `fn` on tiles of `tile_in` starting every tile_in*(1-overlap); blend tile_out*overlap of each
        seam from the tile above / to the left; keep tile_out - blend of each tile; stitch."""
        stride = int(tile_in * (1 - self.tile_overlap_factor))
        blend = int(tile_out * self.tile_overlap_factor)
        keep = tile_out - blend
        rows = [[fn(x[:, :, i:i + tile_in, j:j + tile_in]) for j in range(0, x.shape[3], stride)]
                for i in range(0, x.shape[2], stride)]
        # In place and in this order, as Diffusers: a tile is blended with neighbours already blended.
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    blend_v(rows[i - 1][j], tile, blend)
                if j > 0:
                    blend_h(row[j - 1], tile, blend)
        return torch.cat([torch.cat([t[:, :, :keep, :keep] for t in row], dim=3) for row in rows], dim=2)

    # ---- full pass ---------------------------------------------------------------------------------

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Encode, take the posterior's sample (or mode), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)


def _ramp(n: int, like: torch.Tensor) -> torch.Tensor:
    """Weights y / n for y = 0..n-1: how much of the later tile to keep across a seam of n rows."""
    return torch.arange(n, dtype=torch.float64).div(n).to(device=like.device, dtype=like.dtype)


def blend_v(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the bottom `extent` rows of `a` into the top rows of `b`, in place on `b`."""
    extent = min(a.shape[2], b.shape[2], extent)
    if extent > 0:
        w = _ramp(extent, b)[:, None]
        b[:, :, :extent, :] = a[:, :, -extent:, :] * (1 - w) + b[:, :, :extent, :] * w
    return b


def blend_h(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the right `extent` columns of `a` into the left columns of `b`, in place on `b`."""
    extent = min(a.shape[3], b.shape[3], extent)
    if extent > 0:
        w = _ramp(extent, b)
        b[:, :, :, :extent] = a[:, :, :, -extent:] * (1 - w) + b[:, :, :, :extent] * w
    return b
