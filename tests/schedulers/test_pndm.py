"""PNDMScheduler (PRK and PLMS) against diffusers: timesteps, trajectories, sync-free loop, bad input."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import PNDMScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
PLMS_CONFIGS = [  # skip_prk_steps=True: every step count
    dict(skip_prk_steps=True),
    dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD),
    dict(skip_prk_steps=True, timestep_spacing="linspace", prediction_type="v_prediction", set_alpha_to_one=True),
    dict(skip_prk_steps=True, timestep_spacing="trailing", beta_schedule="squaredcos_cap_v2"),
]
PRK_CONFIGS = [  # the Runge-Kutta warm-up needs at least 4 steps
    dict(),
    dict(timestep_spacing="linspace", prediction_type="v_prediction", **SD),
    dict(timestep_spacing="trailing", set_alpha_to_one=True),
    dict(steps_offset=1, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
]
CASES = list(itertools.product(PLMS_CONFIGS, STEP_COUNTS)) + list(itertools.product(PRK_CONFIGS, (4, 7, 50)))


@pytest.mark.parametrize("config,steps", CASES, ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(PNDMScheduler(**config), diffusers.PNDMScheduler(**config), steps)


@pytest.mark.parametrize("skip_prk_steps,start", [(True, 3), (False, 5)])
def test_loop_from_mid_schedule_matches_diffusers(skip_prk_steps, start):
    # image-to-image: the loop starts at timesteps[start:], and the PRK/PLMS counter still starts at 0
    results = []
    for scheduler in (PNDMScheduler(skip_prk_steps=skip_prk_steps), diffusers.PNDMScheduler(skip_prk_steps=skip_prk_steps)):
        scheduler.set_timesteps(10)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        for t in scheduler.timesteps[start:]:
            x = scheduler.step(stand_in_model(x, t), t, x).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [PLMS_CONFIGS[0], PLMS_CONFIGS[2], PRK_CONFIGS[1]], ids=str)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(PNDMScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_step_plms_during_prk_warmup_is_refused():
    s = PNDMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="prk"):
        s.step_plms(torch.zeros(1, 1, 2, 2), s.timesteps[0], torch.zeros(1, 1, 2, 2))


def test_save_load_round_trip(tmp_path):
    s = PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = PNDMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.PNDMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert_same_loop(loaded, theirs, 7)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_prk_warmup_with_too_few_steps_is_refused(steps):
    # diffusers fails here too, with a numpy broadcasting ValueError
    with pytest.raises(ValueError):
        diffusers.PNDMScheduler().set_timesteps(steps)
    with pytest.raises(ValueError, match="skip_prk_steps=True"):
        PNDMScheduler().set_timesteps(steps)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="laplace"), "beta_schedule='laplace'"),
        (dict(prediction_type="sample"), "prediction_type='sample'"),  # diffusers' PNDM fails at step
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
    ],
)
def test_unknown_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PNDMScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -1, 1001, None])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        PNDMScheduler(skip_prk_steps=True).set_timesteps(steps)


@pytest.mark.parametrize("custom", [dict(timesteps=[900, 500, 100]), dict(sigmas=[3.0, 1.0, 0.0])])
def test_custom_schedules_are_refused(custom):
    with pytest.raises(ValueError, match="does not support custom"):
        PNDMScheduler().set_timesteps(None, **custom)
