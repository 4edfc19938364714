"""The loop body after the UNet — guidance combine + scheduler step — fastdiff against diffusers, on SD's
latent shape (CFG model output 2x4x64x64, latents 1x4x64x64, float32, CPU).

Three ways per scheduler: diffusers (chunk, combine, step), fastdiff's readable `step()` after the same
combine, and fastdiff's `fused_step()` (one `ops.scheduler_step` launch for both). Each round runs
`set_timesteps(20)` outside the timer, then times the whole 20-step loop; the time / 20 is one step.

    pytest bench/micro/test_schedulers.py --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
import torch

# diffusers 0.42 builds numpy arrays from tensors in set_timesteps (a NumPy 2 DeprecationWarning per call)
pytestmark = [pytest.mark.benchmark, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
STEPS = 20
SHAPE = (1, 4, 64, 64)
GUIDANCE = 7.5
# SD's training betas; each scheduler built from the same keywords in both libraries.
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULERS = {
    "EulerDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "DDIMScheduler": dict(set_alpha_to_one=False, steps_offset=1),
    "PNDMScheduler": dict(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1),
    "DPMSolverMultistepScheduler": {},
    "UniPCMultistepScheduler": {},
    "LMSDiscreteScheduler": {},
}
WAYS = ["diffusers", "fastdiff-step", "fastdiff-fused"]


def _scheduler(way: str, name: str):
    if way == "diffusers":
        import diffusers as lib
    else:
        import fastdiff as lib
    return getattr(lib, name)(**BETAS, **SCHEDULERS[name])


def _body(way: str, scheduler, name: str):
    """One loop iteration after the UNet: (cfg model output, t, sample, generator) -> next sample."""
    extra = (lambda g: {"generator": g}) if "Ancestral" in name else (lambda g: {})
    if way == "fastdiff-fused":
        guidance = torch.tensor(GUIDANCE)  # on the device, as the pipeline passes it

        def fused(out, t, sample, generator):
            return scheduler.fused_step(out, t, sample, guidance, **extra(generator))[0]

        return fused

    def combine_then_step(out, t, sample, generator):
        uncond, text = out.chunk(2)
        return scheduler.step(uncond + GUIDANCE * (text - uncond), t, sample, **extra(generator)).prev_sample

    return combine_then_step


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_guidance_and_step(benchmark, way, name):
    if way == "diffusers":
        pytest.importorskip("diffusers")
    scheduler = _scheduler(way, name)
    if way == "fastdiff-fused" and not scheduler.supports_fused_step():
        pytest.skip(f"{name} has no fused step")
    benchmark.group = f"{name}: guidance + step"
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(SHAPE, generator=g)
    model_output = 0.1 * torch.randn((2, *SHAPE[1:]), generator=g)
    body = _body(way, scheduler, name)

    def setup():
        scheduler.set_timesteps(STEPS)
        return (noise * scheduler.init_noise_sigma, torch.Generator().manual_seed(1)), {}

    def loop(sample, generator):
        for t in scheduler.timesteps:
            scheduler.scale_model_input(sample, t)
            sample = body(model_output, t, sample, generator)
        return sample

    with torch.no_grad():
        benchmark.pedantic(loop, setup=setup, rounds=30, warmup_rounds=2)
