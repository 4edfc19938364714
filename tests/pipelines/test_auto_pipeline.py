"""AutoPipelineFor*: family lookup from model_index.json, from_pipe sharing modules, Diffusers' error text."""

import json
import shutil

import pytest

import fastdiff


@pytest.mark.parametrize(
    "auto,expected",
    [
        (fastdiff.AutoPipelineForText2Image, fastdiff.StableDiffusionPipeline),
        (fastdiff.AutoPipelineForImage2Image, fastdiff.StableDiffusionImg2ImgPipeline),
        (fastdiff.AutoPipelineForInpainting, fastdiff.StableDiffusionInpaintPipeline),
    ],
)
def test_sd_folder_resolves_per_task(sd_folder, auto, expected):
    assert type(auto.from_pretrained(sd_folder)) is expected


def test_inpainting_checkpoint_maps_back_to_text_to_image(inpaint_folder):
    assert type(fastdiff.AutoPipelineForText2Image.from_pretrained(inpaint_folder)) is fastdiff.StableDiffusionPipeline


def test_from_pipe_shares_the_same_module_objects(sd_folder):
    text2img = fastdiff.AutoPipelineForText2Image.from_pretrained(sd_folder)
    img2img = fastdiff.AutoPipelineForImage2Image.from_pipe(text2img)
    inpaint = fastdiff.AutoPipelineForInpainting.from_pipe(img2img)
    assert type(img2img) is fastdiff.StableDiffusionImg2ImgPipeline
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(img2img, name) is getattr(text2img, name) is getattr(inpaint, name)


def test_cannot_be_constructed_directly():
    with pytest.raises(EnvironmentError, match="designed to be instantiated"):
        fastdiff.AutoPipelineForText2Image()


def test_unsupported_checkpoints_get_diffusers_error_text(ddpm_folder, tmp_path):
    with pytest.raises(ValueError, match="AutoPipeline can't find a pipeline linked to DDPMPipeline for None"):
        fastdiff.AutoPipelineForText2Image.from_pretrained(ddpm_folder)
    ddpm = fastdiff.DDPMPipeline.from_pretrained(ddpm_folder)
    with pytest.raises(ValueError, match="linked to DDPMPipeline for None"):
        fastdiff.AutoPipelineForImage2Image.from_pipe(ddpm)
