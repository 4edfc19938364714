"""HeunDiscreteScheduler against diffusers: two-stage trajectories, custom timesteps, sync-free loop, bad input."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import HeunDiscreteScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
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
    results = []
    for s in (HeunDiscreteScheduler(**SD), diffusers.HeunDiscreteScheduler(**SD)):
        s.set_timesteps(10)
        start = 4 * s.order  # as pipelines do: t_start * order
        if set_begin_index:
            s.set_begin_index(start)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
        for t in s.timesteps[start:]:
            x = s.step(stand_in_model(s.scale_model_input(x, t), t), t, x).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers():
    ours, theirs = HeunDiscreteScheduler(**SD), diffusers.HeunDiscreteScheduler(**SD)
    ours.set_timesteps(10), theirs.set_timesteps(10)
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = theirs.timesteps[[0, 3, 18]]  # 3 is a repeated timestep: the second occurrence counts
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(HeunDiscreteScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_save_load_round_trip(tmp_path):
    s = HeunDiscreteScheduler(use_karras_sigmas=True, prediction_type="v_prediction", **SD)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = HeunDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.HeunDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert_same_loop(loaded, theirs, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(use_karras_sigmas=True, use_exponential_sigmas=True), "only one of"),
    ],
)
def test_unknown_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeunDiscreteScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        HeunDiscreteScheduler().set_timesteps(steps)


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
