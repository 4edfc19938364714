"""The denoising loop's fused branch: guidance + scheduler update through `scheduler.fused_step` when the
scheduler offers one for its config, else the CFG combine (+ guidance_rescale) and step(); same images."""

import numpy as np
import pytest
import torch

import fastdiff
from fastdiff import ops

from .test_stable_diffusion import COMMON, load_pair


@pytest.fixture
def launches(monkeypatch):
    """Counts ops.scheduler_step calls (the fused branch). The loop fuses only where Triton runs; here it
    is told Triton runs, so the branch is taken and the op's torch entry computes it (the kernel itself is
    held to step() in tests/kernels/test_scheduler_step.py)."""
    monkeypatch.setattr(ops, "uses_triton", lambda device: True)
    calls = []
    original = ops.scheduler_step
    monkeypatch.setattr(ops, "scheduler_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def _images(pipe, **kwargs):
    return pipe(generator=torch.Generator().manual_seed(0), **{**COMMON, **kwargs}).images


@pytest.mark.parametrize("scheduler", ["pndm", "dpm++2m_karras", "euler_a"])
def test_fused_branch_gives_the_step_images(sd_folder, scheduler, launches, monkeypatch):
    ours, _ = load_pair(sd_folder, scheduler=scheduler)
    fused = _images(ours)
    assert len(launches) == len(ours.scheduler.timesteps)
    monkeypatch.setattr(type(ours.scheduler), "supports_fused_step", lambda self, **kw: False)
    launches.clear()
    plain = _images(ours)
    assert not launches
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-5)


def test_no_fusing_where_triton_does_not_run(sd_folder):
    ours, _ = load_pair(sd_folder, scheduler="euler")
    calls = []
    original = ops.scheduler_step
    try:
        ops.scheduler_step = lambda *a, **k: calls.append(1) or original(*a, **k)
        _images(ours)
    finally:
        ops.scheduler_step = original
    assert not calls, "on the CPU torch backend the readable step() is faster than the fused twin"


@pytest.mark.parametrize("case", ["guidance_rescale", "thresholding"])
def test_stages_that_are_not_linear_keep_step(sd_folder, case, launches):
    ours, _ = load_pair(sd_folder, scheduler="ddim")
    kwargs = {}
    if case == "guidance_rescale":
        kwargs["guidance_rescale"] = 0.7
    else:
        ours.scheduler = fastdiff.DDIMScheduler.from_config(ours.scheduler.config, thresholding=True)
    _images(ours, **kwargs)
    assert not launches
