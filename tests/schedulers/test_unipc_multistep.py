"""UniPCMultistepScheduler against diffusers: predictor-corrector trajectories over a config matrix, img2img
starts, sync-free loops, config round trips and bad input."""

import inspect
import itertools

import diffusers
import pytest
import torch

import fastdiff
from fastdiff import UniPCMultistepScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = [
    dict(),
    dict(solver_order=1, timestep_spacing="leading", steps_offset=1),
    dict(solver_order=3, **SD, use_karras_sigmas=True),
    dict(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min", prediction_type="v_prediction",
         timestep_spacing="trailing", rescale_betas_zero_snr=True),
    dict(predict_x0=False, final_sigmas_type="sigma_min", use_exponential_sigmas=True),
    dict(predict_x0=False, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"),
    dict(prediction_type="sample", thresholding=True, sample_max_value=1.5, use_beta_sigmas=True),
    dict(disable_corrector=[0, 1, 3], solver_order=3, beta_schedule="squaredcos_cap_v2"),
    dict(lower_order_final=False, final_sigmas_type="sigma_min", solver_order=3, **SD),
    dict(solver_type="midpoint"),  # deprecated alias of bh2
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)))
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(UniPCMultistepScheduler(**config), diffusers.UniPCMultistepScheduler(**config), steps)


def test_bh1_into_zero_sigma_is_finite_where_diffusers_is_nan():
    # diffusers multiplies B(h) = ĥ = −∞ by an empty correction (0) on the last step; the limit is x̂_0
    theirs = run_loop(diffusers.UniPCMultistepScheduler(solver_type="bh1"), 7)[1]
    assert torch.isnan(theirs).any()
    s = UniPCMultistepScheduler(solver_type="bh1")
    s.set_timesteps(7)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in s.timesteps:
        s._init_step_index(t)
        x0 = s.convert_model_output(stand_in_model(x, t), sample=x)
        x = s.step(stand_in_model(x, t), t, x).prev_sample
    torch.testing.assert_close(x, x0)  # the corrector only touches x_i, so the last output is x̂_0


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

    config = dict(solver_order=3, disable_corrector=[7])
    torch.testing.assert_close(loop(UniPCMultistepScheduler(**config)), loop(diffusers.UniPCMultistepScheduler(**config)),
                               rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers():
    ours, theirs = UniPCMultistepScheduler(**SD), diffusers.UniPCMultistepScheduler(**SD)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, n, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(UniPCMultistepScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_save_load_round_trip(tmp_path):
    kwargs = dict(solver_order=3, disable_corrector=[2], use_karras_sigmas=True, **SD)
    s = UniPCMultistepScheduler(**kwargs)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = UniPCMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.UniPCMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    # diffusers reads fastdiff's file as the config it would have written itself
    assert _public(theirs.config) == _public(diffusers.UniPCMultistepScheduler(**kwargs).config)
    assert_same_loop(loaded, theirs, 7)



# the configs users swap from (diffusers fills keys the source lacks with the target's defaults)
SOURCES = [
    ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD)),
    ("DDPMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True, **SD)),
    ("DEISMultistepScheduler", dict(solver_order=3, **SD)),
]


@pytest.mark.parametrize("source", SOURCES, ids=str)
def test_from_another_schedulers_config_matches_diffusers(source):
    # the user idiom: pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    name, kwargs = source
    theirs_source = getattr(diffusers, name)(**kwargs)
    ours = UniPCMultistepScheduler.from_config(theirs_source.config)
    theirs = diffusers.UniPCMultistepScheduler.from_config(theirs_source.config)
    assert _public(ours.config) == _public(theirs.config)
    assert_same_loop(ours, theirs, 7)


def test_compatibles_are_listed_as_in_diffusers():
    ours = {c.__name__ for c in UniPCMultistepScheduler().compatibles}
    theirs = {c.__name__ for c in diffusers.UniPCMultistepScheduler().compatibles}
    assert ours == {n for n in theirs if hasattr(fastdiff, n)} and len(ours) >= 5


@pytest.mark.parametrize("method", ["__init__", "set_timesteps", "step"])
def test_signatures_match_diffusers(method):
    ours = list(inspect.signature(getattr(UniPCMultistepScheduler, method)).parameters)
    theirs = list(inspect.signature(getattr(diffusers.UniPCMultistepScheduler, method)).parameters)
    assert ours == theirs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(solver_type="bh3"), "solver_type='bh3'"),
        (dict(final_sigmas_type="one"), "final_sigmas_type='one'"),
        (dict(solver_order=0), "solver_order=0"),
        (dict(shift_terminal=0.1), "shift_terminal"),
    ],
)
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniPCMultistepScheduler(**kwargs)


def test_unimplemented_options_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="solver_p"):
        UniPCMultistepScheduler(solver_p=UniPCMultistepScheduler())
    with pytest.raises(NotImplementedError, match="use_flow_sigmas"):
        UniPCMultistepScheduler(use_flow_sigmas=True)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        UniPCMultistepScheduler().set_timesteps(steps)


def test_custom_sigmas_need_flow_sigmas_as_in_diffusers():
    with pytest.raises(ValueError, match="use_flow_sigmas=True"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[1.0, 0.5])
