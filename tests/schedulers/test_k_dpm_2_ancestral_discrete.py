"""KDPM2AncestralDiscreteScheduler against diffusers: two-stage trajectories with seeded noise, sync-free loop, bad input."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import KDPM2AncestralDiscreteScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = [
    dict(),
    dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD),
    dict(beta_schedule="squaredcos_cap_v2", use_exponential_sigmas=True, timestep_spacing="leading", steps_offset=1),
    dict(use_beta_sigmas=True, **SD),
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(KDPM2AncestralDiscreteScheduler(**config), diffusers.KDPM2AncestralDiscreteScheduler(**config), steps)


def test_num_train_timesteps_override_matches_diffusers():
    kwargs = dict(set_kwargs=dict(num_inference_steps=7, num_train_timesteps=500))
    assert_same_loop(KDPM2AncestralDiscreteScheduler(**SD), diffusers.KDPM2AncestralDiscreteScheduler(**SD), None, **kwargs)


def test_image_to_image_start_matches_diffusers():
    results = []
    for s in (KDPM2AncestralDiscreteScheduler(**SD), diffusers.KDPM2AncestralDiscreteScheduler(**SD)):
        s.set_timesteps(10)
        start = 4 * s.order
        s.set_begin_index(start)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
        gen = torch.Generator().manual_seed(5)
        for t in s.timesteps[start:]:
            x = s.step(stand_in_model(s.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


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


def test_add_noise_matches_diffusers():
    ours, theirs = KDPM2AncestralDiscreteScheduler(**SD), diffusers.KDPM2AncestralDiscreteScheduler(**SD)
    ours.set_timesteps(10), theirs.set_timesteps(10)
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = theirs.timesteps[[0, 3, 18]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(KDPM2AncestralDiscreteScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_save_load_round_trip(tmp_path):
    s = KDPM2AncestralDiscreteScheduler(use_karras_sigmas=True, prediction_type="v_prediction", **SD)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = KDPM2AncestralDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.KDPM2AncestralDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert_same_loop(loaded, theirs, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="exp"), "beta_schedule='exp'"),  # only Heun takes "exp"
        (dict(prediction_type="sample"), "prediction_type='sample'"),  # diffusers: NotImplementedError at step
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(use_karras_sigmas=True, use_beta_sigmas=True), "only one of"),
    ],
)
def test_unknown_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KDPM2AncestralDiscreteScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        KDPM2AncestralDiscreteScheduler().set_timesteps(steps)


@pytest.mark.parametrize("custom", [dict(timesteps=[900, 500, 100]), dict(sigmas=[3.0, 1.0, 0.0])])
def test_custom_schedules_are_refused(custom):
    with pytest.raises(ValueError, match="does not support custom"):
        KDPM2AncestralDiscreteScheduler().set_timesteps(None, **custom)
