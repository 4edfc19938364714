"""Models: Diffusers parameter names and configs, computed through fastdiff.ops."""

from .config_checks import UnsupportedConfigError
from .modeling import LoadingError, ModelMixin
from .unet_1d import UNet1DModel, UNet1DOutput
from .unet_2d import UNet2DModel, UNet2DOutput

__all__ = ["LoadingError", "ModelMixin", "UNet1DModel", "UNet1DOutput", "UNet2DModel", "UNet2DOutput", "UnsupportedConfigError"]
