"""DEISMultistepScheduler against diffusers: trajectories over a config matrix, img2img starts, sync-free
loops, config round trips and bad input."""

import inspect
import itertools

import diffusers
import pytest
import torch

import fastdiff
from fastdiff import DEISMultistepScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = [
    dict(),
    dict(solver_order=1, timestep_spacing="leading", steps_offset=1, beta_schedule="squaredcos_cap_v2"),
    dict(solver_order=3, **SD, use_karras_sigmas=True),
    dict(solver_order=3, lower_order_final=False, prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(prediction_type="sample", thresholding=True, sample_max_value=1.5, use_exponential_sigmas=True),
    dict(solver_order=3, use_beta_sigmas=True),
    dict(algorithm_type="dpmsolver++", solver_type="bh2"),  # deprecated aliases of deis / logrho
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)))
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(DEISMultistepScheduler(**config), diffusers.DEISMultistepScheduler(**config), steps)


@pytest.mark.parametrize("begin_index", [True, False])
def test_mid_schedule_start_warms_up_like_diffusers(begin_index):
    def loop(scheduler, start=5):
        scheduler.set_timesteps(12)
        if begin_index:
            scheduler.set_begin_index(start)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        for t in scheduler.timesteps[start:]:
            x = scheduler.step(stand_in_model(x, t), t, x).prev_sample
        return x

    torch.testing.assert_close(loop(DEISMultistepScheduler(solver_order=3)),
                               loop(diffusers.DEISMultistepScheduler(solver_order=3)), rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers():
    ours, theirs = DEISMultistepScheduler(**SD), diffusers.DEISMultistepScheduler(**SD)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, n, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(DEISMultistepScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_save_load_round_trip(tmp_path):
    kwargs = dict(solver_order=3, use_karras_sigmas=True, **SD)
    s = DEISMultistepScheduler(**kwargs)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = DEISMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.DEISMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    # diffusers reads fastdiff's file as the config it would have written itself
    assert _public(theirs.config) == _public(diffusers.DEISMultistepScheduler(**kwargs).config)
    assert_same_loop(loaded, theirs, 7)



# the configs users swap from (diffusers fills keys the source lacks with the target's defaults)
SOURCES = [
    ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD)),
    ("DDPMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True, **SD)),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, **SD)),
]


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_from_another_schedulers_config_matches_diffusers(source):
    # the user idiom: pipe.scheduler = DEISMultistepScheduler.from_config(pipe.scheduler.config)
    name, kwargs = source
    theirs_source = getattr(diffusers, name)(**kwargs)
    ours = DEISMultistepScheduler.from_config(theirs_source.config)
    theirs = diffusers.DEISMultistepScheduler.from_config(theirs_source.config)
    assert _public(ours.config) == _public(theirs.config)
    assert_same_loop(ours, theirs, 7)


def test_compatibles_are_listed_as_in_diffusers():
    ours = {c.__name__ for c in DEISMultistepScheduler().compatibles}
    theirs = {c.__name__ for c in diffusers.DEISMultistepScheduler().compatibles}
    assert ours == {n for n in theirs if hasattr(fastdiff, n)} and len(ours) >= 5


@pytest.mark.parametrize("method", ["__init__", "set_timesteps", "step"])
def test_signatures_match_diffusers(method):
    ours = list(inspect.signature(getattr(DEISMultistepScheduler, method)).parameters)
    theirs = list(inspect.signature(getattr(diffusers.DEISMultistepScheduler, method)).parameters)
    assert ours == theirs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(algorithm_type="sde-dpmsolver++"), "algorithm_type='sde-dpmsolver\\+\\+'"),
        (dict(solver_type="rk4"), "solver_type='rk4'"),
        (dict(solver_order=5), "solver_order=5"),
    ],
)
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DEISMultistepScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DEISMultistepScheduler().set_timesteps(steps)


def test_custom_schedules_are_not_taken():
    with pytest.raises(TypeError):  # no timesteps= / sigmas= here, as in diffusers (pipelines check the signature)
        DEISMultistepScheduler().set_timesteps(timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        DEISMultistepScheduler().set_timesteps(5, mu=0.5)
