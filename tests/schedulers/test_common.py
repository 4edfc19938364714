"""The checks many schedulers share, one test per check, parametrized over the schedulers it applies to (the
tables below): save/load round trips, bad configs, step counts and custom schedules refused with a message
naming the problem, add_noise, and for the exponential-integrator family signatures, swaps from another
scheduler's config and img2img warm-up. Each test_<scheduler>.py keeps its config matrix and its own checks.
"""

import inspect
import re

import diffusers
import pytest
import torch

import fastdiff

from .harness import KARRAS, SD, assert_converts_like_diffusers, assert_same_loop, loop_from, no_host_sync, public

EXPONENTIAL_INTEGRATORS = ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
                           "UniPCMultistepScheduler"]
SIGMA_V = dict(use_karras_sigmas=True, prediction_type="v_prediction", **SD)


def _pair(name: str, **config):
    """The scheduler `name` built with `config` in fastdiff and in diffusers."""
    return getattr(fastdiff, name)(**config), getattr(diffusers, name)(**config)


def _cases(table: dict) -> list:
    """(name, case) for every case listed under every scheduler name of `table`."""
    return [(name, case) for name, cases in table.items() for case in cases]


# ---- save / load --------------------------------------------------------------------------------------

# scheduler: the config saved by fastdiff, loaded by both libraries, then looped (7 steps; LCM 4)
ROUND_TRIP = {
    "DDIMScheduler": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                          timestep_spacing="trailing"),
    "DDPMScheduler": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", steps_offset=1),
    "PNDMScheduler": dict(skip_prk_steps=True, steps_offset=1, **SD),
    "LMSDiscreteScheduler": SIGMA_V,
    "EulerDiscreteScheduler": dict(SIGMA_V, sigma_max=12.0),
    "EulerAncestralDiscreteScheduler": dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD),
    "HeunDiscreteScheduler": SIGMA_V,
    "KDPM2DiscreteScheduler": SIGMA_V,
    "KDPM2AncestralDiscreteScheduler": SIGMA_V,
    "DPMSolverMultistepScheduler": dict(solver_order=3, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++", **SD),
    "DPMSolverSinglestepScheduler": dict(solver_order=3, use_karras_sigmas=True, **SD),
    "DEISMultistepScheduler": dict(solver_order=3, use_karras_sigmas=True, **SD),
    "UniPCMultistepScheduler": dict(solver_order=3, disable_corrector=[2], use_karras_sigmas=True, **SD),
    "LCMScheduler": dict(original_inference_steps=100, timestep_scaling=5.0, prediction_type="v_prediction"),
}


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_save_load_round_trip(name, tmp_path):
    kwargs = ROUND_TRIP[name]
    s = getattr(fastdiff, name)(**kwargs)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = getattr(fastdiff, name).from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = getattr(diffusers, name).from_pretrained(tmp_path, subfolder="scheduler")
    # diffusers reads fastdiff's file as the config it would have written itself
    assert public(theirs.config) == public(getattr(diffusers, name)(**kwargs).config)
    assert_same_loop(loaded, theirs, 4 if name == "LCMScheduler" else 7)


# ---- bad input ----------------------------------------------------------------------------------------


def refused(**kwargs):
    """A config refused with an error naming its (one) key and value: `key='value'`."""
    ((key, value),) = kwargs.items()
    return kwargs, re.escape(f"{key}={value!r}")


NOT_IMPLEMENTED_AT_STEP = refused(prediction_type="sample")  # diffusers accepts it and fails at the first step
ONLY_ONE_SPACING = (dict(use_karras_sigmas=True, use_beta_sigmas=True), "only one of")
DPM_FINAL_ZERO = (dict(algorithm_type="dpmsolver"), "`final_sigmas_type` zero is not supported")
# scheduler: (config, what the error must say) for every config value it refuses
BAD_CONFIGS = {
    "DDIMScheduler": [refused(beta_schedule="sigmoid"), refused(prediction_type="noise"),
                      refused(timestep_spacing="uniform")],
    "DDPMScheduler": [refused(beta_schedule="cubic"), refused(prediction_type="noise"),
                      refused(timestep_spacing="uniform"), refused(variance_type="tiny")],
    "PNDMScheduler": [refused(beta_schedule="laplace"), NOT_IMPLEMENTED_AT_STEP, refused(timestep_spacing="uniform")],
    "LMSDiscreteScheduler": [refused(beta_schedule="sigmoid"), refused(prediction_type="noise"),
                             refused(timestep_spacing="uniform"), ONLY_ONE_SPACING],
    "EulerDiscreteScheduler": [refused(beta_schedule="sigmoid"), refused(prediction_type="noise"),
                               refused(timestep_spacing="uniform"), refused(interpolation_type="cubic"),
                               refused(final_sigmas_type="one"),
                               (dict(use_exponential_sigmas=True, use_beta_sigmas=True), "only one of")],
    "EulerAncestralDiscreteScheduler": [refused(beta_schedule="laplace"), NOT_IMPLEMENTED_AT_STEP,
                                        refused(prediction_type="noise"), refused(timestep_spacing="uniform")],
    "HeunDiscreteScheduler": [refused(beta_schedule="sigmoid"), refused(prediction_type="noise"),
                              refused(timestep_spacing="uniform"),
                              (dict(use_karras_sigmas=True, use_exponential_sigmas=True), "only one of")],
    # only Heun takes beta_schedule="exp"
    "KDPM2DiscreteScheduler": [refused(beta_schedule="exp"), NOT_IMPLEMENTED_AT_STEP,
                               refused(timestep_spacing="uniform"), ONLY_ONE_SPACING],
    "KDPM2AncestralDiscreteScheduler": [refused(beta_schedule="exp"), NOT_IMPLEMENTED_AT_STEP,
                                        refused(timestep_spacing="uniform"), ONLY_ONE_SPACING],
    "DPMSolverMultistepScheduler": [
        refused(beta_schedule="sigmoid"), refused(prediction_type="noise"), refused(timestep_spacing="uniform"),
        refused(algorithm_type="ddim"), refused(solver_type="rk4"), refused(final_sigmas_type="one"),
        refused(solver_order=4), DPM_FINAL_ZERO, ONLY_ONE_SPACING,
        (dict(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min"), "solver_order=3")],
    "DPMSolverSinglestepScheduler": [
        refused(beta_schedule="laplace"), refused(prediction_type="noise"),
        refused(algorithm_type="sde-dpmsolver"),  # not a singlestep type
        refused(solver_type="rk4"), refused(solver_order=4), DPM_FINAL_ZERO],
    "DEISMultistepScheduler": [
        refused(beta_schedule="sigmoid"), refused(prediction_type="noise"), refused(timestep_spacing="uniform"),
        refused(algorithm_type="sde-dpmsolver++"), refused(solver_type="rk4"), refused(solver_order=5)],
    "UniPCMultistepScheduler": [
        refused(beta_schedule="sigmoid"), refused(prediction_type="noise"), refused(timestep_spacing="uniform"),
        refused(solver_type="bh3"), refused(final_sigmas_type="one"), refused(solver_order=0),
        (dict(shift_terminal=0.1), "shift_terminal")],
    "LCMScheduler": [refused(beta_schedule="sigmoid"), refused(prediction_type="noise"),
                     refused(timestep_spacing="uniform")],
}


@pytest.mark.parametrize("name,case", _cases(BAD_CONFIGS), ids=str)
def test_bad_config_values_are_refused(name, case):
    kwargs, match = case
    with pytest.raises(ValueError, match=match):
        getattr(fastdiff, name)(**kwargs)


BAD_STEP_COUNTS = (0, -3, 1001, 2.5)
# scheduler: (config, step counts set_timesteps refuses)
BAD_STEPS = {
    **{name: ({}, BAD_STEP_COUNTS) for name in KARRAS if name != "PNDMScheduler"},
    "PNDMScheduler": (dict(skip_prk_steps=True), (0, -1, 1001, None)),
    "KarrasVeScheduler": ({}, (0, -3, 2.5)),
    "ScoreSdeVeScheduler": ({}, (0, -3, 2001, 2.5)),
    "ScoreSdeVpScheduler": ({}, (0, -3, 2001, 2.5)),
}


@pytest.mark.parametrize("name,steps", [(name, n) for name, (_, counts) in BAD_STEPS.items() for n in counts], ids=str)
def test_bad_step_counts_are_refused(name, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        getattr(fastdiff, name)(**BAD_STEPS[name][0]).set_timesteps(steps)


@pytest.mark.parametrize("custom", [dict(timesteps=[900, 500, 100]), dict(sigmas=[3.0, 1.0, 0.0])], ids=str)
@pytest.mark.parametrize("name", ["DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "KDPM2DiscreteScheduler",
                                  "KDPM2AncestralDiscreteScheduler"])
def test_custom_schedules_are_refused(name, custom):
    with pytest.raises(ValueError, match="does not support custom"):
        getattr(fastdiff, name)().set_timesteps(None, **custom)


# ---- add_noise ------------------------------------------------------------------------------------------

# scheduler: (config, indices into its 10-step timesteps); Heun and KDPM2 list each σ twice, so their
# index 3 is a repeated timestep, whose second occurrence counts
ADD_NOISE = {
    **{name: (SD, [0, 4, 9]) for name in ["LMSDiscreteScheduler", "EulerDiscreteScheduler",
                                          "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                                          "DEISMultistepScheduler", "UniPCMultistepScheduler"]},
    **{name: (SD, [0, 3, 18]) for name in ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                                           "KDPM2AncestralDiscreteScheduler"]},
    "DPMSolverSinglestepScheduler": ({}, [0, 4, 9]),
}


@pytest.mark.parametrize("name", ADD_NOISE)
def test_add_noise_matches_diffusers(name):
    config, indices = ADD_NOISE[name]
    ours, theirs = _pair(name, **config)
    ours.set_timesteps(10), theirs.set_timesteps(10)
    x, n, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), theirs.timesteps[indices]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))
    if hasattr(ours, "get_velocity"):
        torch.testing.assert_close(ours.get_velocity(x, n, t), theirs.get_velocity(x, n, t))
    with no_host_sync():
        ours.add_noise(x, n, t)
    ours.set_begin_index(2), theirs.set_begin_index(2)  # every sample at the begin index
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


@pytest.mark.parametrize("name,config", [("DDIMScheduler", dict(beta_schedule="scaled_linear")),
                                         ("DDPMScheduler", dict(beta_schedule="scaled_linear")),
                                         ("LCMScheduler", {})], ids=str)
def test_add_noise_and_velocity_at_training_timesteps_match_diffusers(name, config):
    ours, theirs = _pair(name, **config)
    x, n, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))
    torch.testing.assert_close(ours.get_velocity(x, n, t), theirs.get_velocity(x, n, t))


# ---- the public surface ---------------------------------------------------------------------------------

# scheduler: fastdiff's extra step() parameters (pre-drawn noise for graph replays)
SIGNATURES = {**dict.fromkeys(["DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler"], []),
              **dict.fromkeys(["DPMSolverSinglestepScheduler", "LCMScheduler"], ["variance_noise"])}


@pytest.mark.parametrize("method", ["__init__", "set_timesteps", "step"])
@pytest.mark.parametrize("name", SIGNATURES)
def test_signatures_match_diffusers(name, method):
    # pipelines inspect these (retrieve_timesteps: which custom schedules are accepted; eta / generator)
    ours, theirs = (list(inspect.signature(getattr(getattr(lib, name), method)).parameters)
                    for lib in (fastdiff, diffusers))
    assert ours == theirs + (SIGNATURES[name] if method == "step" else [])


@pytest.mark.parametrize("name", KARRAS)
def test_compatibles_are_listed_as_in_diffusers(name):
    ours = {c.__name__ for c in getattr(fastdiff, name)().compatibles}
    theirs = {c.__name__ for c in getattr(diffusers, name)().compatibles}
    assert ours == {n for n in theirs if hasattr(fastdiff, n)} and len(ours) >= 5


# the configs users swap from; each scheduler is built from every one but its own
SWAP_SOURCES = [
    ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD)),
    ("DDPMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True, **SD)),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, **SD)),
    ("DEISMultistepScheduler", dict(solver_order=3, **SD)),
]


@pytest.mark.parametrize("name,source", [(name, source) for name in EXPONENTIAL_INTEGRATORS for source in SWAP_SOURCES
                                         if source[0] != name], ids=str)
def test_from_another_schedulers_config_matches_diffusers(name, source):
    assert_converts_like_diffusers(name, *source)


# ---- schedules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_num_train_timesteps_override_matches_diffusers(name):
    ours, theirs = _pair(name, **SD)
    assert_same_loop(ours, theirs, None, set_kwargs=dict(num_inference_steps=7, num_train_timesteps=500))


# ---- image-to-image ------------------------------------------------------------------------------------

# scheduler: config of a 12-step loop started at step 5, whose multistep history must warm up like diffusers'
MID_SCHEDULE = {**dict.fromkeys(EXPONENTIAL_INTEGRATORS[:3], dict(solver_order=3)),
                "UniPCMultistepScheduler": dict(solver_order=3, disable_corrector=[7])}


@pytest.mark.parametrize("begin_index", [True, False])
@pytest.mark.parametrize("name", MID_SCHEDULE)
def test_mid_schedule_start_warms_up_like_diffusers(name, begin_index):
    ours, theirs = _pair(name, **MID_SCHEDULE[name])
    torch.testing.assert_close(loop_from(ours, 12, 5, begin_index), loop_from(theirs, 12, 5, begin_index),
                               rtol=1e-5, atol=1e-5)
