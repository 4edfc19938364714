"""One scheduler step, fastdiff against diffusers, on SD's latent shape (1x4x64x64, float32, CPU).

Each round runs `set_timesteps(20)` outside the timer, then times the whole 20-step loop of
`scale_model_input` + `step` with a fixed model output; the reported time / 20 is one step.

    pytest bench/micro/test_schedulers.py --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
import torch

# diffusers 0.42 builds numpy arrays from tensors in set_timesteps (a NumPy 2 DeprecationWarning per call)
pytestmark = [pytest.mark.benchmark, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
STEPS = 20
SHAPE = (1, 4, 64, 64)
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


def _scheduler(library: str, name: str):
    if library == "diffusers":
        import diffusers as lib
    else:
        import fastdiff as lib
    return getattr(lib, name)(**BETAS, **SCHEDULERS[name])


@pytest.mark.parametrize("library", ["fastdiff", "diffusers"])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_loop(benchmark, library, name):
    pytest.importorskip("diffusers") if library == "diffusers" else None
    benchmark.group = f"{name}: {STEPS} steps"
    scheduler = _scheduler(library, name)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    model_output = 0.1 * noise

    def setup():
        scheduler.set_timesteps(STEPS)
        return (noise * scheduler.init_noise_sigma, torch.Generator().manual_seed(1)), {}

    def loop(sample, generator):
        extra = {"generator": generator} if "Ancestral" in name else {}
        for t in scheduler.timesteps:
            scheduler.scale_model_input(sample, t)
            sample = scheduler.step(model_output, t, sample, **extra).prev_sample
        return sample

    with torch.no_grad():
        benchmark.pedantic(loop, setup=setup, rounds=30, warmup_rounds=2)
