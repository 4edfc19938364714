"""EulerAncestralDiscreteScheduler against diffusers: trajectories with seeded noise, sync-free loop, bad input."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import EulerAncestralDiscreteScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
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


def test_add_noise_matches_diffusers():
    ours, theirs = EulerAncestralDiscreteScheduler(**SD), diffusers.EulerAncestralDiscreteScheduler(**SD)
    ours.set_timesteps(10), theirs.set_timesteps(10)
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(EulerAncestralDiscreteScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_save_load_round_trip(tmp_path):
    s = EulerAncestralDiscreteScheduler(prediction_type="v_prediction", timestep_spacing="trailing", **SD)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = EulerAncestralDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.EulerAncestralDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert_same_loop(loaded, theirs, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="laplace"), "beta_schedule='laplace'"),
        (dict(prediction_type="sample"), "prediction_type='sample'"),  # diffusers: NotImplementedError at step
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
    ],
)
def test_unknown_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EulerAncestralDiscreteScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        EulerAncestralDiscreteScheduler().set_timesteps(steps)


@pytest.mark.parametrize("custom", [dict(timesteps=[900, 500, 100]), dict(sigmas=[3.0, 1.0, 0.0])])
def test_custom_schedules_are_refused(custom):
    with pytest.raises(ValueError, match="does not support custom"):
        EulerAncestralDiscreteScheduler().set_timesteps(None, **custom)
