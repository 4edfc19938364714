"""PNDMScheduler (PRK and PLMS) against diffusers: timesteps, trajectories, mid-schedule starts, sync-free loop,
too few PRK steps. Round trips and bad input: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import PNDMScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, loop_from

PLMS_CONFIGS = [  # skip_prk_steps=True: every step count
    dict(skip_prk_steps=True),
    dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD),
    dict(skip_prk_steps=True, timestep_spacing="linspace", prediction_type="v_prediction", set_alpha_to_one=True),
    dict(skip_prk_steps=True, timestep_spacing="trailing", beta_schedule="squaredcos_cap_v2"),
]
PRK_CONFIGS = [  # the Runge-Kutta warm-up needs at least 4 steps
    dict(),
    dict(timestep_spacing="linspace", prediction_type="v_prediction", **SD),
    dict(timestep_spacing="trailing", set_alpha_to_one=True),
    dict(steps_offset=1, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
]
CASES = list(itertools.product(PLMS_CONFIGS, STEP_COUNTS)) + list(itertools.product(PRK_CONFIGS, (4, 7, 50)))


@pytest.mark.parametrize("config,steps", CASES, ids=str)
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(PNDMScheduler(**config), diffusers.PNDMScheduler(**config), steps)


@pytest.mark.parametrize("skip_prk_steps,start", [(True, 3), (False, 5)])
def test_loop_from_mid_schedule_matches_diffusers(skip_prk_steps, start):
    # image-to-image: the loop starts at timesteps[start:], and the PRK/PLMS counter still starts at 0
    config = dict(skip_prk_steps=skip_prk_steps)
    ours, theirs = (loop_from(s, 10, start, begin_index=False)
                    for s in (PNDMScheduler(**config), diffusers.PNDMScheduler(**config)))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [PLMS_CONFIGS[0], PLMS_CONFIGS[2], PRK_CONFIGS[1]], ids=str)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(PNDMScheduler(**config))


def test_step_plms_during_prk_warmup_is_refused():
    s = PNDMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="prk"):
        s.step_plms(torch.zeros(1, 1, 2, 2), s.timesteps[0], torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_prk_warmup_with_too_few_steps_is_refused(steps):
    # diffusers fails here too, with a numpy broadcasting ValueError
    with pytest.raises(ValueError):
        diffusers.PNDMScheduler().set_timesteps(steps)
    with pytest.raises(ValueError, match="skip_prk_steps=True"):
        PNDMScheduler().set_timesteps(steps)

