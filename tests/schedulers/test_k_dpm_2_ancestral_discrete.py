"""KDPM2AncestralDiscreteScheduler against diffusers: two-stage trajectories with seeded noise, an img2img start,
pre-drawn noise, sync-free loop. Round trips, add_noise, bad input, num_train_timesteps: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import KDPM2AncestralDiscreteScheduler

from .harness import (SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, loop_from, no_host_sync, run_loop,
                      stand_in_model)
from .test_k_dpm_2_discrete import CONFIGS  # the same matrix as KDPM2's


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    ours, theirs = KDPM2AncestralDiscreteScheduler(**config), diffusers.KDPM2AncestralDiscreteScheduler(**config)
    assert_same_loop(ours, theirs, steps)


def test_image_to_image_start_matches_diffusers():
    start = 4 * KDPM2AncestralDiscreteScheduler.order  # as pipelines do: t_start * order
    ours, theirs = (loop_from(s, 10, start, seed=1, scale=3.0, noise_seed=5)
                    for s in (KDPM2AncestralDiscreteScheduler(**SD), diffusers.KDPM2AncestralDiscreteScheduler(**SD)))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_pre_drawn_noise_equals_generator_noise():
    _, x_gen = run_loop(KDPM2AncestralDiscreteScheduler(**SD), 7)
    s = KDPM2AncestralDiscreteScheduler(**SD)
    s.set_timesteps(7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * s.init_noise_sigma
    noise = {c: torch.randn(x.shape, generator=gen) for c in range(1, len(s.timesteps), 2)}  # stage-2 calls
    with no_host_sync():
        for c, t in enumerate(s.timesteps):
            x = s.step(stand_in_model(s.scale_model_input(x, t), t), t, x, variance_noise=noise.get(c)).prev_sample
    torch.testing.assert_close(x, x_gen, rtol=0, atol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(KDPM2AncestralDiscreteScheduler(**config))
