"""UniPCMultistepScheduler against diffusers: predictor-corrector trajectories over a config matrix, sync-free
loops, options refused. Round trips, bad input, signatures, swaps and img2img starts: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import UniPCMultistepScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, run_loop, stand_in_model

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


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    assert_loop_never_syncs(UniPCMultistepScheduler(**config))


def test_unimplemented_options_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="solver_p"):
        UniPCMultistepScheduler(solver_p=UniPCMultistepScheduler())
    with pytest.raises(NotImplementedError, match="use_flow_sigmas"):
        UniPCMultistepScheduler(use_flow_sigmas=True)


def test_custom_sigmas_need_flow_sigmas_as_in_diffusers():
    with pytest.raises(ValueError, match="use_flow_sigmas=True"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[1.0, 0.5])
