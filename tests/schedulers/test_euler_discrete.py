"""EulerDiscreteScheduler against diffusers: timesteps, trajectories (with churn), custom schedules, an img2img
start, sync-free loop, bad custom schedules. Round trips, add_noise and bad configs: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import EulerDiscreteScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, no_host_sync, run_loop, stand_in_model

CHURN = {"s_churn": 0.5, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003}
CONFIGS = [
    (dict(), {}),
    (dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD), {}),
    (dict(beta_schedule="squaredcos_cap_v2", use_exponential_sigmas=True, prediction_type="sample",
          timestep_spacing="leading", steps_offset=1), {"s_churn": 1.0}),
    (dict(use_beta_sigmas=True, final_sigmas_type="sigma_min", sigma_min=0.1, **SD), CHURN),
    (dict(interpolation_type="log_linear", rescale_betas_zero_snr=True, timestep_spacing="trailing",
          prediction_type="v_prediction"), {}),
    (dict(timestep_type="continuous", prediction_type="v_prediction", use_karras_sigmas=True, sigma_max=10.0, **SD),
     {}),
    (dict(prediction_type="original_sample", timestep_spacing="leading", **SD), {"s_churn": 2.0, "s_tmax": 3.0}),
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)), ids=str)
def test_loop_matches_diffusers(config, steps):
    config, step_kwargs = config
    assert_same_loop(EulerDiscreteScheduler(**config), diffusers.EulerDiscreteScheduler(**config), steps,
                     step_kwargs=step_kwargs)


@pytest.mark.parametrize("custom", [dict(timesteps=[999, 700, 420.5, 100, 3]),
                                    dict(sigmas=[14.0, 6.1, 2.0, 0.5, 0.03, 0.0])], ids=str)
def test_custom_schedules_match_diffusers(custom):
    assert_same_loop(EulerDiscreteScheduler(**SD), diffusers.EulerDiscreteScheduler(**SD), None, set_kwargs=custom)


def test_image_to_image_start_matches_diffusers():
    results = []
    for s in (EulerDiscreteScheduler(**SD), diffusers.EulerDiscreteScheduler(**SD)):
        s.set_timesteps(10)
        s.set_begin_index(4)
        x = s.add_noise(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
                        torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)), s.timesteps[4:5])
        gen = torch.Generator().manual_seed(0)
        for t in s.timesteps[4:]:
            x = s.step(torch.sin(s.scale_model_input(x, t)), t, x, s_churn=1.0, generator=gen).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_pre_drawn_noise_equals_generator_noise():
    a, b = EulerDiscreteScheduler(**SD), EulerDiscreteScheduler(**SD)
    _, x_gen = run_loop(a, 7, step_kwargs={"s_churn": 1.0})
    # replay: the same draws, made up front (as a CUDA-graph replay would)
    b.set_timesteps(7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * b.init_noise_sigma
    noise = [torch.randn(x.shape, generator=gen) for _ in range(7)]
    with no_host_sync():
        for t, z in zip(b.timesteps, noise):
            x = b.step(stand_in_model(b.scale_model_input(x, t), t), t, x, s_churn=1.0, variance_noise=z).prev_sample
    torch.testing.assert_close(x, x_gen, rtol=0, atol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    config, step_kwargs = config
    assert_loop_never_syncs(EulerDiscreteScheduler(**config), step_kwargs=step_kwargs)


def test_from_pndm_config_uses_eulers_own_defaults():
    # SD 1.5's PNDM config has no timestep_spacing: PNDM uses "leading", Euler its own "linspace"
    cfg = diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD).config
    ours, theirs = EulerDiscreteScheduler.from_config(cfg), diffusers.EulerDiscreteScheduler.from_config(cfg)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "linspace"
    assert_same_loop(ours, theirs, 7)


def test_integer_timesteps_are_refused():
    s = EulerDiscreteScheduler()
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="integer indices"):
        s.step(torch.zeros(1, 1, 2, 2), 3, torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize(
    "config,kwargs,match",
    [
        (dict(), dict(timesteps=[900, 100], sigmas=[3.0, 1.0, 0.0]), "Only one of `timesteps` or `sigmas`"),
        (dict(), dict(), "Must pass exactly one"),
        (dict(), dict(num_inference_steps=5, sigmas=[3.0, 1.0, 0.0]), "Can only pass one"),
        (dict(use_karras_sigmas=True), dict(timesteps=[900, 100]), "use_karras_sigmas"),
        (dict(use_beta_sigmas=True), dict(timesteps=[900, 100]), "use_beta_sigmas"),
        (dict(timestep_type="continuous", prediction_type="v_prediction"), dict(timesteps=[900, 100]), "continuous"),
    ],
)
def test_bad_custom_schedules_are_refused(config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        EulerDiscreteScheduler(**config).set_timesteps(**kwargs)
