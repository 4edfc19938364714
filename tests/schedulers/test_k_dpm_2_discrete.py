"""KDPM2DiscreteScheduler against diffusers: two-stage trajectories, an img2img start, sync-free loop. Round
trips, add_noise, bad input and the num_train_timesteps override: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import KDPM2DiscreteScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, loop_from

CONFIGS = [
    dict(),
    dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD),
    dict(beta_schedule="squaredcos_cap_v2", use_exponential_sigmas=True, timestep_spacing="leading", steps_offset=1),
    dict(use_beta_sigmas=True, **SD),
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(KDPM2DiscreteScheduler(**config), diffusers.KDPM2DiscreteScheduler(**config), steps)


def test_image_to_image_start_matches_diffusers():
    start = 4 * KDPM2DiscreteScheduler.order  # as pipelines do: t_start * order
    ours, theirs = (loop_from(s, 10, start, seed=1, scale=3.0)
                    for s in (KDPM2DiscreteScheduler(**SD), diffusers.KDPM2DiscreteScheduler(**SD)))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(KDPM2DiscreteScheduler(**config))
