"""DDPMScheduler against diffusers: timesteps and full trajectories, custom timesteps, sync-free loop. Round trips,
add_noise and bad configs: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import DDPMScheduler

from .harness import STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, no_host_sync, run_loop

CONFIGS = [
    dict(),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"),
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="trailing"),
    dict(beta_schedule="sigmoid", timestep_spacing="linspace", clip_sample=False, variance_type="fixed_large"),
    dict(timestep_spacing="leading", steps_offset=1, thresholding=True, sample_max_value=1.5),
    dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
         variance_type="fixed_small_log"),
    dict(num_train_timesteps=100, variance_type="learned_range"),
]


def _model_for(config):
    if config.get("variance_type") == "learned_range":  # the model predicts [ε, v] on twice the channels
        return lambda x, t: torch.cat([torch.sin(x + float(t) / 50), torch.tanh(x)], dim=1)
    return None


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)))
def test_loop_matches_diffusers(config, steps):
    extra = {"model": _model_for(config)} if _model_for(config) else {}
    steps = min(steps, config.get("num_train_timesteps", 1000))
    assert_same_loop(DDPMScheduler(**config), diffusers.DDPMScheduler(**config), steps, **extra)


def test_custom_timesteps_match_diffusers():
    kwargs = dict(set_kwargs={"timesteps": [900, 640, 300, 41, 0]})
    assert_same_loop(DDPMScheduler(), diffusers.DDPMScheduler(), None, **kwargs)


def test_without_set_timesteps_steps_one_by_one():
    ours, theirs = DDPMScheduler(num_train_timesteps=20), diffusers.DDPMScheduler(num_train_timesteps=20)
    x = torch.randn(1, 2, 4, 4)
    for t in range(19, -1, -1):
        a = ours.step(torch.sin(x), t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = theirs.step(torch.sin(x), t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        x = b


@pytest.mark.parametrize("config", CONFIGS[:5])
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(DDPMScheduler(**config))


def test_sync_guard_sees_diffusers_sync():
    # the check can fail: diffusers' own DDPM looks the timestep up with .nonzero()
    with pytest.raises(AssertionError, match="host sync"):
        run_loop(diffusers.DDPMScheduler(), 7, guard=no_host_sync)


def test_custom_timesteps_must_descend():
    with pytest.raises(ValueError, match="descending"):
        DDPMScheduler().set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="only pass one"):
        DDPMScheduler().set_timesteps(5, timesteps=[20, 10])
