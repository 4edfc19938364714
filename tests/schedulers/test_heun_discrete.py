"""HeunDiscreteScheduler against diffusers: two-stage trajectories, custom timesteps, img2img starts, sync-free
loop, bad custom schedules. Round trips, add_noise and bad configs: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import HeunDiscreteScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, loop_from

CONFIGS = [
    dict(),
    dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD),
    dict(beta_schedule="squaredcos_cap_v2", use_exponential_sigmas=True, prediction_type="sample",
         timestep_spacing="leading", steps_offset=1, clip_sample=True, clip_sample_range=2.0),
    dict(use_beta_sigmas=True, beta_schedule="exp"),
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=True, timestep_spacing="leading"),
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(HeunDiscreteScheduler(**config), diffusers.HeunDiscreteScheduler(**config), steps)


@pytest.mark.parametrize("set_kwargs", [dict(timesteps=[999, 700, 420, 100, 3]),
                                        dict(num_inference_steps=7, num_train_timesteps=500)], ids=str)
def test_custom_schedules_match_diffusers(set_kwargs):
    assert_same_loop(HeunDiscreteScheduler(**SD), diffusers.HeunDiscreteScheduler(**SD), None, set_kwargs=set_kwargs)


@pytest.mark.parametrize("set_begin_index", [True, False])
def test_image_to_image_start_matches_diffusers(set_begin_index):
    # without a begin index the first timestep (which occurs twice) is looked up: the second occurrence counts
    start = 4 * HeunDiscreteScheduler.order  # as pipelines do: t_start * order
    ours, theirs = (loop_from(s, 10, start, set_begin_index, seed=1, scale=3.0)
                    for s in (HeunDiscreteScheduler(**SD), diffusers.HeunDiscreteScheduler(**SD)))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(HeunDiscreteScheduler(**config))


@pytest.mark.parametrize(
    "config,kwargs,match",
    [
        (dict(), dict(), "Must pass exactly one"),
        (dict(), dict(num_inference_steps=5, timesteps=[900, 100]), "Can only pass one"),
        (dict(use_karras_sigmas=True), dict(timesteps=[900, 100]), "use_karras_sigmas"),
        (dict(use_exponential_sigmas=True), dict(timesteps=[900, 100]), "use_exponential_sigmas"),
    ],
)
def test_bad_custom_schedules_are_refused(config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeunDiscreteScheduler(**config).set_timesteps(**kwargs)


def test_custom_sigmas_are_refused():
    # diffusers' Heun takes custom timesteps but not sigmas
    with pytest.raises(ValueError, match="does not support custom sigmas"):
        HeunDiscreteScheduler().set_timesteps(sigmas=[3.0, 1.0, 0.0])
    with pytest.raises(TypeError):  # what diffusers raises, for code that catches that
        HeunDiscreteScheduler().set_timesteps(sigmas=[3.0, 1.0, 0.0])
