"""DDIMScheduler against diffusers: timesteps and full trajectories, sync-free loop, bad input."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import DDIMScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop

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


def test_add_noise_and_velocity_match_diffusers():
    ours, theirs = DDIMScheduler(beta_schedule="scaled_linear"), diffusers.DDIMScheduler(beta_schedule="scaled_linear")
    x, n, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))
    torch.testing.assert_close(ours.get_velocity(x, n, t), theirs.get_velocity(x, n, t))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_loop_never_syncs_with_the_host(config):
    config, step_kwargs = config
    _, x = run_loop(DDIMScheduler(**config), 7, step_kwargs=step_kwargs, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_save_load_round_trip(tmp_path):
    s = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing")
    s.save_pretrained(tmp_path / "scheduler")
    loaded = DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert_same_loop(loaded, theirs, 7)


def test_from_another_schedulers_config_uses_own_defaults():
    # the PNDM default config does not set timestep_spacing/clip_sample: DDIM keeps its own defaults
    cfg = diffusers.PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True).config
    ours, theirs = DDIMScheduler.from_config(cfg), diffusers.DDIMScheduler.from_config(cfg)
    assert {k: v for k, v in ours.config.items() if k != "_use_default_values"} == \
        {k: v for k, v in theirs.config.items() if k != "_use_default_values"}
    assert_same_loop(ours, theirs, 7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),  # diffusers' DDIM has no sigmoid betas
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
    ],
)
def test_unknown_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDIMScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler().set_timesteps(steps)


@pytest.mark.parametrize("custom", [dict(timesteps=[900, 500, 100]), dict(sigmas=[3.0, 1.0, 0.0])])
def test_custom_schedules_are_refused(custom):
    with pytest.raises(ValueError, match="does not support custom"):
        DDIMScheduler().set_timesteps(None, **custom)


def test_step_before_set_timesteps_is_refused():
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(torch.zeros(1), 10, torch.zeros(1))
