"""EulerAncestralDiscreteScheduler against diffusers: trajectories with seeded noise, pre-drawn noise, sync-free
loop. Round trips, add_noise and bad input: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import EulerAncestralDiscreteScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, no_host_sync, run_loop, stand_in_model

CONFIGS = [
    dict(),
    dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True, **SD),
    dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="leading", steps_offset=1),
    dict(timestep_spacing="leading", **SD),
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(EulerAncestralDiscreteScheduler(**config), diffusers.EulerAncestralDiscreteScheduler(**config),
                     steps)


def test_pre_drawn_noise_equals_generator_noise():
    _, x_gen = run_loop(EulerAncestralDiscreteScheduler(**SD), 7)
    s = EulerAncestralDiscreteScheduler(**SD)
    s.set_timesteps(7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * s.init_noise_sigma
    noise = [torch.randn(x.shape, generator=gen) for _ in range(7)]  # drawn ahead, as for a graph replay
    with no_host_sync():
        for t, z in zip(s.timesteps, noise):
            x = s.step(stand_in_model(s.scale_model_input(x, t), t), t, x, variance_noise=z).prev_sample
    torch.testing.assert_close(x, x_gen, rtol=0, atol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(EulerAncestralDiscreteScheduler(**config))

