"""DDIMScheduler against diffusers: timesteps and full trajectories, pre-drawn noise, sync-free loop. Round trips,
add_noise and bad input: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import DDIMScheduler

from .harness import STEP_COUNTS, assert_loop_never_syncs, assert_same_loop

# every option value appears in some config; every config runs at every step count
CONFIGS = [
    (dict(), {}),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
          timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False), {}),
    (dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="linspace"),
     {"eta": 0.7}),
    (dict(steps_offset=1, thresholding=True, sample_max_value=1.5), {"eta": 1.0, "use_clipped_model_output": True}),
    (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
          clip_sample_range=0.8), {"eta": 0.3}),
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    config, step_kwargs = config
    assert_same_loop(DDIMScheduler(**config), diffusers.DDIMScheduler(**config), steps, step_kwargs=step_kwargs)


def test_pre_drawn_noise_equals_generator_noise():
    ours, theirs = DDIMScheduler(), diffusers.DDIMScheduler()
    ours.set_timesteps(7), theirs.set_timesteps(7)
    x, z = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = ours.timesteps[2]
    a = ours.step(torch.sin(x), t, x, eta=0.5, variance_noise=z).prev_sample
    b = theirs.step(torch.sin(x), t, x, eta=0.5, variance_noise=z).prev_sample
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="both generator and variance_noise"):
        ours.step(torch.sin(x), t, x, eta=0.5, variance_noise=z, generator=torch.Generator())


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    config, step_kwargs = config
    assert_loop_never_syncs(DDIMScheduler(**config), step_kwargs=step_kwargs)


def test_from_another_schedulers_config_uses_own_defaults():
    # the PNDM default config does not set timestep_spacing/clip_sample: DDIM keeps its own defaults
    cfg = diffusers.PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True).config
    ours, theirs = DDIMScheduler.from_config(cfg), diffusers.DDIMScheduler.from_config(cfg)
    assert {k: v for k, v in ours.config.items() if k != "_use_default_values"} == \
        {k: v for k, v in theirs.config.items() if k != "_use_default_values"}
    assert_same_loop(ours, theirs, 7)


def test_step_before_set_timesteps_is_refused():
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(torch.zeros(1), 10, torch.zeros(1))
