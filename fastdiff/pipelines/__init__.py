"""Pipelines: DiffusionPipeline, the shared denoising loop, one file per task."""

from .auto_pipeline import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from .ddpm import DDPMPipeline
from .image_processor import VaeImageProcessor
from .pipeline import DiffusionPipeline
from .safety_checker import StableDiffusionSafetyChecker
from .stable_diffusion import StableDiffusionMixin, StableDiffusionPipeline, StableDiffusionPipelineOutput
from .stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
from .stable_diffusion_inpaint import StableDiffusionInpaintPipeline

__all__ = [
    "AutoPipelineForImage2Image",
    "AutoPipelineForInpainting",
    "AutoPipelineForText2Image",
    "DDPMPipeline",
    "DiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionMixin",
    "StableDiffusionPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionSafetyChecker",
    "VaeImageProcessor",
]
