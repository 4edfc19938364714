"""DEISMultistepScheduler against diffusers: trajectories over a config matrix, sync-free loops, custom
schedules. Round trips, bad input, signatures, swaps and img2img starts: test_common.py."""

import itertools

import diffusers
import pytest

from fastdiff import DEISMultistepScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop

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


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(DEISMultistepScheduler(**config))


def test_custom_schedules_are_not_taken():
    with pytest.raises(TypeError):  # no timesteps= / sigmas= here, as in diffusers (pipelines check the signature)
        DEISMultistepScheduler().set_timesteps(timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        DEISMultistepScheduler().set_timesteps(5, mu=0.5)
