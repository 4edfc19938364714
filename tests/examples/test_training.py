"""The shapes training scripts, a few steps each: they run, resume exactly, and build a folder
that fastdiff and diffusers both load."""

import json

import pytest
import torch

from examples.shapes import build_model, train_unet, train_vae
from examples.shapes.training import ALL_CAPTIONS, image_batch, learning_rate


def test_batches_are_a_function_of_seed_and_step():
    a, captions = image_batch(1, 5, 4)
    b, _ = image_batch(1, 5, 4)
    assert torch.equal(a, b) and not torch.equal(a, image_batch(1, 6, 4)[0])
    assert a.shape == (4, 3, 64, 64) and all(c in ALL_CAPTIONS for c in captions)
    assert len(ALL_CAPTIONS) == 3 * 7 * 6


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate(s, 1000, 1e-3) for s in range(1000)]
    assert rates[0] == pytest.approx(1e-5) and max(rates) == pytest.approx(1e-3) and rates[-1] < 1e-8


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("shapes")
    train_vae.main(["--work", str(work), "--steps", "2", "--batch", "2", "--eval-images", "8", "--threads", "1"])
    train_unet.main(["--work", str(work), "--steps", "2", "--batch", "2", "--images", "8", "--threads", "1"])
    build_model.main(["--work", str(work), "--out", str(work / "model")])
    return work


def test_resume_continues_exactly(work, tmp_path):
    # 2 steps, then resume to 3, equals 3 steps straight
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    args = ["--batch", "2", "--eval-images", "4", "--threads", "1"]
    train_vae.main(["--work", str(resumed), "--steps", "2", *args])
    train_vae.main(["--work", str(resumed), "--steps", "3", *args])
    train_vae.main(["--work", str(straight), "--steps", "3", *args])
    a, b = (torch.load(p / "vae.pt", weights_only=True) for p in (resumed, straight))
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])


def test_built_folder_loads_in_fastdiff_and_diffusers(work):
    import diffusers

    import fastdiff

    folder = work / "model"
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] != 0.18215  # measured, not SD's default
    for module in (fastdiff, diffusers):
        pipe = module.StableDiffusionPipeline.from_pretrained(folder)
        assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.safety_checker is None
        assert pipe.vae.config.scaling_factor == vae_config["scaling_factor"]
