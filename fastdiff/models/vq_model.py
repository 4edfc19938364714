"""`VQModel`: the vector-quantised autoencoder of latent diffusion (LDM) and LDM super-resolution.

Example:
    >>> vq = VQModel.from_pretrained("CompVis/ldm-super-resolution-4x-openimages", subfolder="vqvae")
    >>> images = vq.decode(latents).sample          # latents are quantised to the codebook first
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..configuration import register_to_config
from ..outputs import BaseOutput
from .config_checks import require_one_of
from .conv import Conv2d
from .modeling import ModelMixin
from .vae import Decoder, DecoderOutput, Encoder


@dataclass
class VQEncoderOutput(BaseOutput):
    """latents: the encoded (not yet quantised) latents (B, vq_embed_dim, h, w)."""

    latents: torch.Tensor


class VectorQuantizer(nn.Module):
    """Replace each latent vector by its nearest codebook entry (Euclidean), with the VQ-VAE losses.

    loss = ||sg(z_q) - z||^2 + beta ||z_q - sg(z)||^2 (legacy) or beta ||sg(z_q) - z||^2 + ||z_q - sg(z)||^2,
    and the straight-through output z + sg(z_q - z). Index remapping is not implemented.
    """

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float, legacy: bool = True):
        super().__init__()
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, vq_embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of (N, D) `z_flat`.

        Distances are computed in float32 for half inputs (torch.cdist has no CPU half kernel); in
        float32 this is exactly Diffusers' computation.
        """
        weight = self.embedding.weight
        if z_flat.dtype in (torch.float16, torch.bfloat16):
            z_flat, weight = z_flat.float(), weight.float()
        return torch.argmin(torch.cdist(z_flat, weight), dim=1)

    def forward(self, z: torch.Tensor):
        """(B, D, h, w) -> (z_q (B, D, h, w), loss, (None, None, indices (B*h*w,)))."""
        z = z.permute(0, 2, 3, 1).contiguous()
        indices = self.nearest(z.view(-1, self.vq_embed_dim))
        z_q = self.embedding(indices).view(z.shape)
        commit, codebook = torch.mean((z_q.detach() - z) ** 2), torch.mean((z_q - z.detach()) ** 2)
        loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
        z_q = z + (z_q - z).detach()  # straight-through gradient; the same rounding as Diffusers
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
        """Codebook vectors for `indices`; with `shape` (B, h, w, D) returned as (B, D, h, w)."""
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(ModelMixin):
    """VQ autoencoder: encoder -> quant_conv -> (quantize) -> post_quant_conv -> decoder.

    Config keys, names and defaults are Diffusers'; `norm_type="spatial"` (MoVQ) is not implemented.

    Example:
        >>> vq = VQModel(block_out_channels=(32, 64), norm_num_groups=8, num_vq_embeddings=16,
        ...              down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        >>> recon = vq(torch.randn(1, 3, 32, 32)).sample
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
        latent_channels: int = 3,
        sample_size: int | tuple[int, ...] = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = False,
        force_upcast: bool = False,
    ):
        super().__init__()
        require_one_of(type(self).__name__, "norm_type", norm_type, ("group",))
        blocks = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block, act_fn=act_fn,
                      norm_num_groups=norm_num_groups, mid_block_add_attention=mid_block_add_attention)
        vq_embed_dim = vq_embed_dim if vq_embed_dim is not None else latent_channels
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, double_z=False, **blocks)
        self.quant_conv = Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25)
        self.post_quant_conv = Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, norm_type=norm_type, **blocks)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput | tuple:
        """Images -> unquantised latents (B, vq_embed_dim, h, w)."""
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True,
               shape: tuple[int, ...] | None = None) -> DecoderOutput | tuple:
        """Latents -> images. Quantises `h` first unless `force_not_quantize`; then, with
        `lookup_from_codebook`, `h` holds codebook indices looked up in the given `shape`."""
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        else:
            quant = self.quantize.get_codebook_entry(h, shape) if self.config.lookup_from_codebook else h
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        dec = self.decoder(self.post_quant_conv(quant))
        return DecoderOutput(sample=dec, commit_loss=commit_loss) if return_dict else (dec, commit_loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Encode, quantise, decode."""
        dec = self.decode(self.encode(sample).latents)
        return dec if return_dict else (dec.sample, dec.commit_loss)
