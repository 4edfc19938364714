"""Bad input to the SD pipelines: a clear ValueError/TypeError, raised before any model runs."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

import fastdiff


class ModelRan(AssertionError):
    pass


@pytest.fixture(scope="module")
def pipes(sd_folder, inpaint_folder):
    t2i = fastdiff.StableDiffusionPipeline.from_pretrained(sd_folder)
    pipes = {"t2i": t2i, "i2i": fastdiff.StableDiffusionImg2ImgPipeline(**t2i.components),
             "inpaint": fastdiff.StableDiffusionInpaintPipeline.from_pretrained(inpaint_folder)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture
def no_model_runs(pipes, monkeypatch):
    """Any UNet, text encoder or VAE call fails the test: checks must come first."""
    def refuse(*args, **kwargs):
        raise ModelRan("a model ran before the bad input was refused")

    for pipe in pipes.values():
        monkeypatch.setattr(pipe.unet, "forward", refuse)
        monkeypatch.setattr(pipe.text_encoder, "forward", refuse)
        monkeypatch.setattr(pipe.vae, "encode", refuse)
        monkeypatch.setattr(pipe.vae, "decode", refuse)
    return pipes


IMAGE = PIL.Image.new("RGB", (16, 16), "red")
MASK = PIL.Image.new("L", (16, 16), 255)
T2I_CASES = [
    (dict(prompt="a cat", height=12, width=16), ValueError, "divisible by 8"),
    (dict(prompt="a cat", height=0, width=16), ValueError, "divisible by 8"),
    (dict(prompt="a cat", height=-16, width=16), ValueError, "divisible by 8"),
    (dict(prompt="a cat", prompt_embeds=torch.zeros(1, 12, 16)), ValueError, "Cannot forward both `prompt` and `prompt_embeds`"),
    (dict(), ValueError, "Provide either `prompt` or `prompt_embeds`"),
    (dict(prompt=[]), ValueError, "non-empty list"),
    (dict(prompt=3), ValueError, "has to be of type `str` or `list`"),
    (dict(prompt="a cat", negative_prompt=["a dog"]), TypeError, "same type to `prompt`"),
    (dict(prompt=["a cat", "a dog"], negative_prompt=["x"]), ValueError, "has batch size 1"),
    (dict(prompt="a cat", num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(prompt="a cat", guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(prompt="a cat", guidance_scale=math.inf), ValueError, "guidance_scale"),
    (dict(prompt="a cat", generator=[torch.Generator()] * 3), ValueError, "list of generators of length 3"),
    (dict(prompt="a cat", latents=torch.zeros(1, 4, 4, 4)), ValueError, "`latents` must have shape \\(1, 4, 8, 8\\)"),
    (dict(prompt="a cat", callback_on_step_end_tensor_inputs=["noise"]), ValueError, "callback_on_step_end_tensor_inputs"),
    (dict(prompt="a cat", num_inference_step=4), TypeError, "'num_inference_step'.*did you mean 'num_inference_steps'"),
    (dict(prompt="a cat", guidence_scale=4), TypeError, "did you mean 'guidance_scale'"),
]


@pytest.mark.parametrize("kwargs,error,match", T2I_CASES)
def test_text_to_image_refuses(no_model_runs, kwargs, error, match):
    with pytest.raises(error, match=match):
        no_model_runs["t2i"](**{"height": 16, "width": 16, **kwargs})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(strength=1.5), "strength should in \\[0.0, 1.0\\]"),
        (dict(strength=-0.1), "strength should in \\[0.0, 1.0\\]"),
        (dict(strength=0.05, num_inference_steps=10), "number of pipeline steps is 0"),
        (dict(image=None), "`image` must be given"),
        (dict(prompt="a cat", image=[IMAGE, IMAGE, IMAGE], num_images_per_prompt=2), "Cannot duplicate `image` of batch size 3"),
        (dict(image="photo.png"), "image must be a PIL image"),
    ],
)
def test_image_to_image_refuses(no_model_runs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        no_model_runs["i2i"](**{"prompt": "a cat", "image": IMAGE, **kwargs})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mask_image=[MASK, MASK, MASK]), "Cannot duplicate `mask_image` of batch size 3"),
        (dict(mask_image=None), "needs both `image` and `mask_image`"),
        (dict(strength=0.01, num_inference_steps=5), "number of pipeline steps is 0"),
        (dict(padding_mask_crop=2, output_type="np"), "output type should be PIL"),
        (dict(padding_mask_crop=2, image=np.zeros((16, 16, 3), np.float32)), "image should be a PIL image"),
        (dict(height=20), "divisible by"),
        (dict(latents=torch.zeros(2, 4, 8, 8)), "`latents` must have shape"),
    ],
)
def test_inpainting_refuses(no_model_runs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        no_model_runs["inpaint"](**{"prompt": "a cat", "image": IMAGE, "mask_image": MASK, "height": 16, "width": 16,
                                    **kwargs})


def test_the_guard_itself_catches_a_model_call(no_model_runs):
    with pytest.raises(ModelRan):
        no_model_runs["t2i"]("a cat", height=16, width=16, num_inference_steps=1)


def test_rgba_and_grayscale_images_are_not_taken_as_latents(pipes):
    pipe = pipes["i2i"]
    for image in (PIL.Image.new("RGBA", (16, 16), (255, 0, 0, 128)), PIL.Image.new("L", (16, 16), 100),
                  np.ones((16, 16, 4), np.float32) * 0.5):
        x = pipe.image_processor.preprocess(image)
        assert x.shape == (1, 3, 16, 16)
    out = pipe("a cat", image=PIL.Image.new("RGBA", (16, 16)), num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 16, 16, 3)
