"""Models: Diffusers parameter names and configs, computed through fastdiff.ops."""

from .modeling import LoadingError, ModelMixin

__all__ = ["LoadingError", "ModelMixin"]
