"""DPMSolverSinglestepScheduler against diffusers: order lists, trajectories, img2img starts, sync-free loops,
config round trips and bad input."""

import inspect
import itertools
import logging

import diffusers
import pytest
import torch

import fastdiff
from fastdiff import DPMSolverSinglestepScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = [
    dict(),
    dict(solver_order=1, prediction_type="v_prediction"),
    dict(solver_order=3, **SD, use_karras_sigmas=True),
    dict(solver_order=3, solver_type="heun", final_sigmas_type="sigma_min", lower_order_final=True),
    dict(solver_type="heun", prediction_type="sample", thresholding=True, use_exponential_sigmas=True),
    dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_order=3, use_beta_sigmas=True),
    dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_type="heun", prediction_type="v_prediction"),
    dict(algorithm_type="sde-dpmsolver++", solver_order=3),
    dict(algorithm_type="sde-dpmsolver++", solver_type="heun", beta_schedule="squaredcos_cap_v2",
         lambda_min_clipped=-5.1),
    dict(lower_order_final=False, final_sigmas_type="sigma_min", **SD),  # diffusers flips it for odd step counts
    dict(algorithm_type="deis", solver_type="logrho", final_sigmas_type="sigma_min"),  # deprecated aliases
]
# diffusers' own trajectory is chaotic here (a 1e-7 change of the model output moves the 50-step result by 7%)
ILL_CONDITIONED = [(dict(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun"), (1, 2, 7))]


@pytest.fixture(autouse=True)
def _quiet_config_rewrites(caplog):
    caplog.set_level(logging.ERROR, logger="fastdiff.schedulers.dpmsolver_singlestep")


def _cases():
    cases = list(itertools.product(CONFIGS, STEP_COUNTS))
    return cases + [(config, steps) for config, counts in ILL_CONDITIONED for steps in counts]


@pytest.mark.parametrize("config,steps", _cases())
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(DPMSolverSinglestepScheduler(**config), diffusers.DPMSolverSinglestepScheduler(**config), steps)


@pytest.mark.parametrize("order,lower_order_final,final", itertools.product((1, 2, 3), (True, False), ("zero", "sigma_min")))
def test_order_lists_match_diffusers(order, lower_order_final, final):
    config = dict(solver_order=order, lower_order_final=lower_order_final, final_sigmas_type=final)
    ours, theirs = DPMSolverSinglestepScheduler(**config), diffusers.DPMSolverSinglestepScheduler(**config)
    for n in range(order if not lower_order_final else 1, 20):
        assert ours.get_order_list(n) == theirs.get_order_list(n), n


def test_uneven_step_count_rewrites_the_config_like_diffusers():
    config = dict(lower_order_final=False, final_sigmas_type="sigma_min")
    ours, theirs = DPMSolverSinglestepScheduler(**config), diffusers.DPMSolverSinglestepScheduler(**config)
    ours.set_timesteps(7)
    theirs.set_timesteps(7)
    assert ours.config.lower_order_final is theirs.config.lower_order_final is True
    assert ours.order_list == theirs.order_list


def test_custom_timesteps_match_diffusers():
    kwargs = dict(set_kwargs={"timesteps": [901, 700, 433, 250, 81]})
    assert_same_loop(DPMSolverSinglestepScheduler(solver_order=3), diffusers.DPMSolverSinglestepScheduler(solver_order=3),
                     None, **kwargs)


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

    config = dict(solver_order=3)
    torch.testing.assert_close(loop(DPMSolverSinglestepScheduler(**config)),
                               loop(diffusers.DPMSolverSinglestepScheduler(**config)), rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers():
    ours, theirs = DPMSolverSinglestepScheduler(), diffusers.DPMSolverSinglestepScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, n, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(DPMSolverSinglestepScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_save_load_round_trip(tmp_path):
    kwargs = dict(solver_order=3, use_karras_sigmas=True, **SD)
    s = DPMSolverSinglestepScheduler(**kwargs)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = DPMSolverSinglestepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.DPMSolverSinglestepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    # diffusers reads fastdiff's file as the config it would have written itself
    assert _public(theirs.config) == _public(diffusers.DPMSolverSinglestepScheduler(**kwargs).config)
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
    # the user idiom: pipe.scheduler = DPMSolverSinglestepScheduler.from_config(pipe.scheduler.config)
    name, kwargs = source
    theirs_source = getattr(diffusers, name)(**kwargs)
    ours = DPMSolverSinglestepScheduler.from_config(theirs_source.config)
    theirs = diffusers.DPMSolverSinglestepScheduler.from_config(theirs_source.config)
    assert _public(ours.config) == _public(theirs.config)
    assert_same_loop(ours, theirs, 7)


def test_compatibles_are_listed_as_in_diffusers():
    ours = {c.__name__ for c in DPMSolverSinglestepScheduler().compatibles}
    theirs = {c.__name__ for c in diffusers.DPMSolverSinglestepScheduler().compatibles}
    assert ours == {n for n in theirs if hasattr(fastdiff, n)} and len(ours) >= 5


@pytest.mark.parametrize("method", ["__init__", "set_timesteps", "step"])
def test_signatures_match_diffusers(method):
    ours = list(inspect.signature(getattr(DPMSolverSinglestepScheduler, method)).parameters)
    theirs = list(inspect.signature(getattr(diffusers.DPMSolverSinglestepScheduler, method)).parameters)
    extra = ["variance_noise"] if method == "step" else []  # fastdiff: pre-drawn noise for graph replays
    assert ours == theirs + extra


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="laplace"), "beta_schedule='laplace'"),
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(algorithm_type="sde-dpmsolver"), "algorithm_type='sde-dpmsolver'"),  # not a singlestep type
        (dict(solver_type="rk4"), "solver_type='rk4'"),
        (dict(solver_order=4), "solver_order=4"),
        (dict(algorithm_type="dpmsolver"), "`final_sigmas_type` zero is not supported"),
    ],
)
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverSinglestepScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DPMSolverSinglestepScheduler().set_timesteps(steps)


def test_bad_custom_schedules_are_refused():
    with pytest.raises(ValueError, match="exactly one"):
        DPMSolverSinglestepScheduler().set_timesteps(5, timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolverSinglestepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        DPMSolverSinglestepScheduler().set_timesteps(5, mu=0.5)
