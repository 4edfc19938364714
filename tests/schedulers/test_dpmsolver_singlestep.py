"""DPMSolverSinglestepScheduler against diffusers: order lists, trajectories, sync-free loops, custom schedules.
Round trips, bad input, signatures, swaps and img2img starts: test_common.py."""

import itertools
import logging

import diffusers
import pytest

from fastdiff import DPMSolverSinglestepScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop

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


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(DPMSolverSinglestepScheduler(**config))


def test_bad_custom_schedules_are_refused():
    with pytest.raises(ValueError, match="exactly one"):
        DPMSolverSinglestepScheduler().set_timesteps(5, timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolverSinglestepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        DPMSolverSinglestepScheduler().set_timesteps(5, mu=0.5)
