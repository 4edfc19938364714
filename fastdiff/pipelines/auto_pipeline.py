"""Task-first loading: `AutoPipelineForText2Image` / `ForImage2Image` / `ForInpainting` pick the pipeline
class of the requested task for the checkpoint's model family."""

from __future__ import annotations

import os

from .pipeline import DiffusionPipeline, fastdiff_class

TASKS = ("text2image", "image2image", "inpainting")
# model family -> the pipeline class for each task, in the order of TASKS (None: no such task)
AUTO_PIPELINES: dict[str, tuple[str | None, str | None, str | None]] = {
    "stable-diffusion": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
}


def family_of(class_name: str) -> str | None:
    for family, classes in AUTO_PIPELINES.items():
        if class_name in classes:
            return family
    return None


def pipeline_for(task: str, class_name: str) -> type:
    """The class doing `task` for the family of `class_name`, or Diffusers' error text."""
    family = family_of(class_name)
    target = AUTO_PIPELINES[family][TASKS.index(task)] if family is not None else None
    if target is None:
        raise ValueError(f"AutoPipeline can't find a pipeline linked to {class_name} for {family}")
    return fastdiff_class(target, DiffusionPipeline)


class _AutoPipeline:
    task: str

    def __init__(self, *args, **kwargs):
        name = type(self).__name__
        raise EnvironmentError(f"{name} is designed to be instantiated using the `{name}.from_pretrained(...)` or "
                               f"`{name}.from_pipe(pipeline)` methods.")

    @classmethod
    def from_pretrained(cls, pretrained_model_or_path: str | os.PathLike, **kwargs):
        """Read model_index.json's class, then load the folder with this task's class of that family."""
        hub = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs}
        config = DiffusionPipeline.load_config(pretrained_model_or_path, **hub)
        return pipeline_for(cls.task, config["_class_name"]).from_pretrained(pretrained_model_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs):
        """This task's pipeline on the same component objects (nothing is copied)."""
        return pipeline_for(cls.task, type(pipeline).__name__).from_pipe(pipeline, **kwargs)


class AutoPipelineForText2Image(_AutoPipeline):
    """Example: `AutoPipelineForText2Image.from_pretrained("path/to/sd-inpainting")` -> StableDiffusionPipeline."""

    task = "text2image"


class AutoPipelineForImage2Image(_AutoPipeline):
    """Example: `AutoPipelineForImage2Image.from_pipe(text2image_pipe)` shares its modules."""

    task = "image2image"


class AutoPipelineForInpainting(_AutoPipeline):
    """Example: `AutoPipelineForInpainting.from_pretrained("path/to/sd")` -> StableDiffusionInpaintPipeline."""

    task = "inpainting"
