"""The example programs of ../shared/seeds/, run with fastdiff and with diffusers on the same local folders.

Each example is kept as written, changed only where it cannot run here: it imports from `lib`
(fastdiff or diffusers) instead of `diffusers`, loads a local tiny folder instead of a hub id,
uses CPU when there is no GPU, builds its input images in code instead of downloading them, and
works at the tiny models' sizes (16 px instead of 512). Both libraries must give the same images.
"""

import json

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

import fastdiff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LIBS = {"fastdiff": fastdiff, "diffusers": diffusers}


def both(example, *args):
    """Run `example(lib, *args)` for both libraries from the same global seed; return both results."""
    results = []
    for lib in (fastdiff, diffusers):
        torch.manual_seed(0)
        results.append(example(lib, *args))
    return results


def same(a, b, tol=1e-4):
    a = np.asarray(a, dtype=np.float32) / (255.0 if np.asarray(a).dtype == np.uint8 else 1.0)
    b = np.asarray(b, dtype=np.float32) / (255.0 if np.asarray(b).dtype == np.uint8 else 1.0)
    assert a.shape == b.shape and np.abs(a - b).max() <= max(tol, 1 / 255 + 1e-6)


def download_image(size=16, seed=0):  # stands in for requests.get(url) + PIL.Image.open
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert("RGB")


# ---- 000/003: the pipelines overview ------------------------------------------------------------------


def text_to_image(lib, folder):
    pipe = lib.StableDiffusionPipeline.from_pretrained(folder)
    pipe = pipe.to(DEVICE)
    prompt = "a photo of an astronaut riding a horse on mars"
    image = pipe(prompt).images[0]
    return image


def image_to_image(lib, folder):
    pipe = lib.StableDiffusionImg2ImgPipeline.from_pretrained(folder, torch_dtype=torch.float32).to(DEVICE)
    init_image = download_image(32).convert("RGB")
    init_image = init_image.resize((24, 16))
    prompt = "A fantasy landscape, trending on artstation"
    images = pipe(prompt=prompt, image=init_image, strength=0.75, guidance_scale=7.5).images
    return images[0]


def inpainting(lib, folder):
    init_image = download_image(32, seed=1).resize((16, 16))
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[8:24, 10:28] = 255
    mask_image = PIL.Image.fromarray(mask).convert("RGB").resize((16, 16))
    pipe = lib.StableDiffusionInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe = pipe.to(DEVICE)
    prompt = "Face of a yellow cat, high resolution, sitting on a park bench"
    image = pipe(prompt=prompt, image=init_image, mask_image=mask_image).images[0]
    return image


@pytest.mark.parametrize("example", [text_to_image, image_to_image])
def test_overview_examples(sd_folder, example):
    ours, theirs = both(example, sd_folder)
    assert isinstance(ours, PIL.Image.Image)
    same(ours, theirs)


def test_overview_inpainting(inpaint_folder):
    same(*both(inpainting, inpaint_folder))


# ---- 001: DiffusionPipeline API reference ----------------------------------------------------------------


def components_reuse(lib, folder):
    text2img = lib.StableDiffusionPipeline.from_pretrained(folder)
    img2img = lib.StableDiffusionImg2ImgPipeline(**text2img.components)
    inpaint = lib.StableDiffusionInpaintPipeline(**text2img.components)
    assert img2img.unet is text2img.unet and inpaint.vae is text2img.vae
    return img2img("a cat", image=download_image(), num_inference_steps=10).images[0]


def scheduler_swap(lib, folder):
    pipeline = lib.DiffusionPipeline.from_pretrained(folder)
    scheduler = lib.LMSDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.scheduler = scheduler
    pipeline.enable_attention_slicing()
    pipeline.enable_xformers_memory_efficient_attention() if lib is fastdiff else None  # diffusers needs xformers
    return pipeline("a dog", num_inference_steps=10).images[0]


@pytest.mark.parametrize("example", [components_reuse, scheduler_swap])
def test_api_reference_examples(sd_folder, example):
    same(*both(example, sd_folder))


# ---- 002: the quicktour ------------------------------------------------------------------------------------------


def quicktour_pipeline(lib, folder):
    pipeline = lib.DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    pipeline.to(DEVICE)
    pipeline.scheduler = lib.EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    image = pipeline("An image of a squirrel in Picasso style").images[0]
    return image


def quicktour_loop(lib, repo_id):
    model = lib.UNet2DModel.from_pretrained(repo_id, use_safetensors=True)
    torch.manual_seed(0)
    noisy_sample = torch.randn(1, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    with torch.no_grad():
        noisy_residual = model(sample=noisy_sample, timestep=2).sample
    scheduler = lib.DDPMScheduler.from_pretrained(repo_id)
    less_noisy_sample = scheduler.step(model_output=noisy_residual, timestep=2, sample=noisy_sample).prev_sample
    assert less_noisy_sample.shape == noisy_sample.shape
    sample = noisy_sample
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            residual = model(sample, t).sample
        sample = scheduler.step(residual, t, sample).prev_sample
    image_processed = sample.cpu().permute(0, 2, 3, 1)
    image_processed = (image_processed + 1.0) * 127.5
    image_processed.numpy().astype(np.uint8)
    return sample  # compared as floats: the example's uint8 cast wraps values outside [0, 255]


@pytest.fixture(scope="module")
def ddpm_repo(tmp_path_factory):
    """Laid out like google/ddpm-cat-256: the UNet and the scheduler config at the top level."""
    from .conftest import tiny_ddpm_unet

    folder = tmp_path_factory.mktemp("ddpm-cat")
    tiny_ddpm_unet().save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=200).save_config(folder)
    return folder


def test_quicktour(sd_folder, ddpm_repo):
    same(*both(quicktour_pipeline, sd_folder))
    ours, theirs = both(quicktour_loop, ddpm_repo)
    err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert err <= 1e-4, f"quicktour loop: relative difference {err:.2e} after 200 steps"


# ---- 004: AutoPipeline ----------------------------------------------------------------------------------------------


def auto_text2img(lib, folder):
    pipe_txt2img = lib.AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=torch.float32, use_safetensors=True)
    prompt = "cinematic photo of Godzilla eating sushi with a cat in a izakaya, 35mm photograph"
    generator = torch.Generator(device="cpu").manual_seed(37)
    image = pipe_txt2img(prompt, generator=generator).images[0]
    return type(pipe_txt2img).__name__, image


def test_auto_pipeline_example(sd_folder):
    (name_a, a), (name_b, b) = both(auto_text2img, sd_folder)
    assert name_a == name_b == "StableDiffusionPipeline"
    same(a, b)


def test_auto_pipeline_unsupported_checkpoint(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "ShapEImg2ImgPipeline"}))
    for lib in (fastdiff, diffusers):
        with pytest.raises(ValueError, match="AutoPipeline can't find a pipeline linked to ShapEImg2ImgPipeline for None"):
            lib.AutoPipelineForImage2Image.from_pretrained(str(tmp_path), torch_dtype=torch.float32, use_safetensors=True)
