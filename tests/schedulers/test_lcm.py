"""LCMScheduler against diffusers: timesteps (strength, original steps, custom), trajectories with seeded
noise, sync-free loops, bad schedules. Round trips, add_noise, signatures and bad configs: test_common.py."""

import itertools
import logging

import diffusers
import pytest
import torch

from fastdiff import LCMScheduler

from .harness import STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, stand_in_model

CONFIGS = [
    dict(),
    # a small timestep_scaling makes the boundary condition c_skip x + c_out x̂_0 matter (c_skip ≈ 0 at scaling 10)
    dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_scaling=0.02),
    dict(prediction_type="sample", clip_sample=True, clip_sample_range=0.8, beta_schedule="linear", beta_start=0.0001,
         beta_end=0.02),
    dict(thresholding=True, sample_max_value=1.5, beta_schedule="squaredcos_cap_v2", set_alpha_to_one=False),
    dict(original_inference_steps=100, steps_offset=1, timestep_spacing="trailing"),  # spacing/offset: unused by LCM
]


@pytest.fixture(autouse=True)
def _quiet_custom_schedule_warnings(caplog):
    caplog.set_level(logging.ERROR)


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)))
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(LCMScheduler(**config), diffusers.LCMScheduler(**config), steps)


@pytest.mark.parametrize(
    "set_kwargs",
    [
        dict(num_inference_steps=4, strength=0.5),
        dict(num_inference_steps=3, original_inference_steps=20),
        dict(timesteps=[999, 759, 499, 259]),
        dict(timesteps=[999, 759, 499, 259], strength=0.5),  # diffusers still re-noises the last step here
        dict(timesteps=[900, 700, 310, 20]),  # off the distillation grid (a warning)
        dict(timesteps=[999, 499, 5, 0]),  # t = 0: c_skip = 1, c_out = 0
    ],
)
def test_timestep_options_match_diffusers(set_kwargs):
    assert_same_loop(LCMScheduler(), diffusers.LCMScheduler(), None, set_kwargs=set_kwargs)


def test_pre_drawn_noise_equals_generator_draws():
    def loop(use_variance_noise):
        s = LCMScheduler()
        s.set_timesteps(4)
        g, x = torch.Generator().manual_seed(0), torch.ones(1, 2, 4, 4)
        for i, t in enumerate(s.timesteps):
            z = torch.randn(x.shape, generator=g) if use_variance_noise and i < 3 else None
            x = s.step(stand_in_model(x, t), t, x, generator=None if use_variance_noise else g, variance_noise=z)[0]
        return x

    torch.testing.assert_close(loop(True), loop(False), rtol=0, atol=0)


def test_denoised_output_and_tuple_match_diffusers():
    ours, theirs = LCMScheduler(), diffusers.LCMScheduler()
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    x, t = torch.randn(1, 4, 8, 8), theirs.timesteps[0]
    a = ours.step(stand_in_model(x, t), t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    b = theirs.step(stand_in_model(x, t), t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert len(a) == len(b) == 2
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(LCMScheduler(**config))


@pytest.mark.parametrize(
    "set_kwargs,match",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=-2), "num_inference_steps"),
        (dict(num_inference_steps=1001), "num_inference_steps"),
        (dict(num_inference_steps=60, strength=2.0), "cannot be larger than `original_inference_steps`"),
        (dict(num_inference_steps=8, strength=0.1), "original_steps x strength"),
        (dict(num_inference_steps=4, original_inference_steps=1001), "original_steps"),
        (dict(), "exactly one"),
        (dict(num_inference_steps=4, timesteps=[999, 499]), "only pass one"),
        (dict(timesteps=[499, 999]), "descending"),
        (dict(timesteps=[1000, 499]), "must start before"),
    ],
)
def test_bad_schedules_are_refused(set_kwargs, match):
    with pytest.raises(ValueError, match=match):
        LCMScheduler().set_timesteps(**set_kwargs)


def test_custom_sigmas_are_not_taken():
    with pytest.raises(TypeError):  # no sigmas= here, as in diffusers (pipelines check the signature)
        LCMScheduler().set_timesteps(4, sigmas=[1.0, 0.5])
