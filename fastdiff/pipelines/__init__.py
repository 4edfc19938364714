"""Pipelines: DiffusionPipeline, the shared denoising loop, one file per task."""

from .pipeline import DiffusionPipeline

__all__ = ["DiffusionPipeline"]
