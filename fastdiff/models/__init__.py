"""Models: Diffusers parameter names and configs, computed through fastdiff.ops."""

from .autoencoder_kl import AutoencoderKL, AutoencoderKLOutput
from .config_checks import UnsupportedConfigError
from .modeling import LoadingError, ModelMixin
from .unet_1d import UNet1DModel, UNet1DOutput
from .unet_2d import UNet2DModel, UNet2DOutput
from .unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from .vae import DecoderOutput, DiagonalGaussianDistribution
from .vq_model import VQEncoderOutput, VQModel

__all__ = [
    "AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution", "LoadingError",
    "ModelMixin", "UNet1DModel", "UNet1DOutput", "UNet2DConditionModel", "UNet2DConditionOutput",
    "UNet2DModel", "UNet2DOutput", "UnsupportedConfigError", "VQEncoderOutput", "VQModel",
]
