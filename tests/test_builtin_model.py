"""The shipped shapes model: images match their prompts, diffusers gives the same pixels, the CLI uses it.

The evaluator is bench/shapes.py's (shape, colour and background read back from the pixels). Each
adherence check has a negative control: the same images scored against other prompts of the grid
must fail, so a broken evaluator that says yes to everything cannot pass.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from bench.quality import generate, prompt_grid
from bench.shapes import parse_caption, score
from fastdiff.__main__ import builtin_path, main

PROMPTS = prompt_grid(12, seed=1)
MIN_ADHERENCE = 0.8
STEPS = 20


@pytest.fixture(scope="module")
def pipe():
    import fastdiff

    pipe = fastdiff.StableDiffusionPipeline.from_pretrained(builtin_path("shapes"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shifted(prompts):
    """Each prompt's colour and background swapped: every word still of the world, none still true."""
    out = []
    for text in prompts:
        shape, color, background = parse_caption(text)
        out.append(f"a {background} {shape} on a {color} background")
    return out


def test_shipped_folder_is_small_and_complete():
    folder = builtin_path("shapes")
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    for name in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                 "vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        assert name in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".ckpt"))]
    assert sum(files.values()) <= 20e6
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False


def test_prompt_adherence(pipe):
    images = generate(pipe, PROMPTS, steps=STEPS)  # the folder's default scheduler, DPM++ 2M
    right = np.mean([score(image, text)["ok"] for image, text in zip(images, PROMPTS)])
    assert right >= MIN_ADHERENCE
    # negative control: the same images do not match prompts they were not generated for
    wrong = np.mean([score(image, text)["ok"] for image, text in zip(images, shifted(PROMPTS))])
    assert wrong <= 0.2


def test_diffusers_gives_the_same_images():
    import diffusers

    import fastdiff

    folder = builtin_path("shapes")
    kwargs = dict(prompt=PROMPTS[:2], num_inference_steps=3, output_type="np")
    images = []
    for module in (fastdiff, diffusers):
        pipe = module.StableDiffusionPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe(**kwargs, generator=torch.Generator().manual_seed(3)).images)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert np.abs(np.asarray(images[0]) - np.asarray(images[1])).max() <= 1e-4


def test_cli_default_model(tmp_path, capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "shapes  [default]" in listing and "missing" not in listing
    prompt = "a red circle on a blue background"
    # the README's main-job command: every setting at its default (25 DPM++ 2M steps, guidance 7.5)
    assert main(["generate", prompt, "--num-images", "2", "--out", str(tmp_path)]) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 2
    for path in paths:
        image = PIL.Image.open(path)
        assert image.size == (64, 64) and json.loads(image.text["fastdiff"])["model"] == "shapes"
        assert score(image, prompt)["ok"]
