"""DPMSolverMultistepScheduler against diffusers: trajectories over a config matrix, img2img starts, the
device history, sync-free loops, config round trips and bad input."""

import inspect
import itertools

import diffusers
import pytest
import torch

import fastdiff
from fastdiff import DPMSolverMultistepScheduler

from .harness import STEP_COUNTS, assert_same_loop, no_host_sync, run_loop, stand_in_model

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# Every option value appears in a config, and every config runs at every step count.
CONFIGS = [
    dict(),
    dict(solver_order=1, timestep_spacing="leading", steps_offset=1),
    dict(solver_order=3, **SD, use_karras_sigmas=True),
    dict(solver_order=3, solver_type="heun", prediction_type="v_prediction", timestep_spacing="trailing",
         rescale_betas_zero_snr=True),
    dict(solver_type="heun", prediction_type="sample", thresholding=True, sample_max_value=1.5, use_lu_lambdas=True),
    dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_order=3),
    dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_type="heun", thresholding=True,
         prediction_type="v_prediction"),
    dict(algorithm_type="sde-dpmsolver++", solver_order=3),
    dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min", solver_type="heun"),
    dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1, solver_order=3, euler_at_final=True),
    dict(lower_order_final=False, final_sigmas_type="sigma_min", **SD, use_exponential_sigmas=True),
    dict(algorithm_type="deis", final_sigmas_type="sigma_min", solver_type="bh2", use_beta_sigmas=True),  # aliases
]


@pytest.mark.parametrize("config,steps", list(itertools.product(CONFIGS, STEP_COUNTS)))
def test_loop_matches_diffusers(config, steps):
    assert_same_loop(DPMSolverMultistepScheduler(**config), diffusers.DPMSolverMultistepScheduler(**config), steps)


def test_learned_variance_channels_are_dropped():
    config = dict(variance_type="learned_range")
    model = lambda x, t: torch.cat([stand_in_model(x, t), torch.tanh(x)], dim=1)  # noqa: E731 - [ε, v]
    kwargs = dict(model=model, shape=(2, 3, 8, 8))
    assert_same_loop(DPMSolverMultistepScheduler(**config), diffusers.DPMSolverMultistepScheduler(**config), 7, **kwargs)


def test_custom_timesteps_match_diffusers():
    kwargs = dict(set_kwargs={"timesteps": [901, 700, 433, 250, 81]})
    assert_same_loop(DPMSolverMultistepScheduler(), diffusers.DPMSolverMultistepScheduler(), None, **kwargs)


def _loop_from(scheduler, start: int, begin_index: bool, steps: int = 12):
    """img2img: the loop starts at timesteps[start] (by set_begin_index, or found from the first timestep)."""
    scheduler.set_timesteps(steps)
    if begin_index:
        scheduler.set_begin_index(start)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for t in scheduler.timesteps[start:]:
        x = scheduler.step(stand_in_model(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("begin_index", [True, False])
def test_mid_schedule_start_warms_up_like_diffusers(begin_index):
    config = dict(solver_order=3)
    ours = _loop_from(DPMSolverMultistepScheduler(**config), 5, begin_index)
    theirs = _loop_from(diffusers.DPMSolverMultistepScheduler(**config), 5, begin_index)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_add_noise_matches_diffusers():
    ours, theirs = DPMSolverMultistepScheduler(**SD), diffusers.DPMSolverMultistepScheduler(**SD)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))
    ours.set_begin_index(2)
    theirs.set_begin_index(2)
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


def test_timestep_off_the_schedule_means_the_last_step_as_in_diffusers():
    ours, theirs = DPMSolverMultistepScheduler(), diffusers.DPMSolverMultistepScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x, n, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([5, int(theirs.timesteps[3])])
    torch.testing.assert_close(ours.add_noise(x, n, t), theirs.add_noise(x, n, t))


def test_pre_drawn_noise_equals_generator_draws():
    def loop(use_variance_noise):
        s = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
        s.set_timesteps(6)
        g, x = torch.Generator().manual_seed(0), torch.ones(1, 2, 4, 4)
        for t in s.timesteps:
            z = torch.randn(x.shape, generator=g) if use_variance_noise else None
            x = s.step(stand_in_model(x, t), t, x, generator=None if use_variance_noise else g, variance_noise=z)[0]
        return x

    torch.testing.assert_close(loop(True), loop(False), rtol=0, atol=0)


def test_host_counter_never_indexes_device_state():
    # a replayed graph does not advance Python counters: corrupting the host counter must change nothing
    s, ref = DPMSolverMultistepScheduler(solver_order=3), DPMSolverMultistepScheduler(solver_order=3)
    _, x_ref = run_loop(ref, 7)
    s.set_timesteps(7)
    x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    for t in s.timesteps:
        s._host_step = 10**6
        x = s.step(stand_in_model(x, t), t, x).prev_sample
    torch.testing.assert_close(x, x_ref, rtol=0, atol=0)


def test_public_update_functions_match_diffusers():
    ours, theirs = DPMSolverMultistepScheduler(solver_order=3), diffusers.DPMSolverMultistepScheduler(solver_order=3)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    ours.set_begin_index(4)
    ours._init_step_index(ours.timesteps[4])
    theirs._step_index = 4
    x, m = torch.randn(1, 2, 4, 4), [torch.randn(1, 2, 4, 4) for _ in range(3)]
    torch.testing.assert_close(ours.convert_model_output(m[0], sample=x), theirs.convert_model_output(m[0], sample=x))
    for fn, arg in [("dpm_solver_first_order_update", m[2]), ("multistep_dpm_solver_second_order_update", m),
                    ("multistep_dpm_solver_third_order_update", m)]:
        torch.testing.assert_close(getattr(ours, fn)(arg, sample=x), getattr(theirs, fn)(arg, sample=x))


@pytest.mark.parametrize("config", CONFIGS)
def test_loop_never_syncs_with_the_host(config):
    _, x = run_loop(DPMSolverMultistepScheduler(**config), 7, guard=no_host_sync)
    assert torch.isfinite(x).all()


def test_sync_guard_sees_diffusers_sync():
    with pytest.raises(AssertionError, match="host sync"):
        run_loop(diffusers.DPMSolverMultistepScheduler(), 7, guard=no_host_sync)


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_save_load_round_trip(tmp_path):
    kwargs = dict(solver_order=3, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++", **SD)
    s = DPMSolverMultistepScheduler(**kwargs)
    s.save_pretrained(tmp_path / "scheduler")
    loaded = DPMSolverMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert loaded.to_json_string() == s.to_json_string()
    theirs = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    # diffusers reads fastdiff's file as the config it would have written itself
    assert _public(theirs.config) == _public(diffusers.DPMSolverMultistepScheduler(**kwargs).config)
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
    # the user idiom: pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    name, kwargs = source
    theirs_source = getattr(diffusers, name)(**kwargs)
    ours = DPMSolverMultistepScheduler.from_config(theirs_source.config)
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(theirs_source.config)
    assert _public(ours.config) == _public(theirs.config)
    assert_same_loop(ours, theirs, 7)


def test_compatibles_are_listed_as_in_diffusers():
    ours = {c.__name__ for c in DPMSolverMultistepScheduler().compatibles}
    theirs = {c.__name__ for c in diffusers.DPMSolverMultistepScheduler().compatibles}
    assert ours == {n for n in theirs if hasattr(fastdiff, n)} and len(ours) >= 5


@pytest.mark.parametrize("method", ["__init__", "set_timesteps", "step"])
def test_signatures_match_diffusers(method):
    # pipelines inspect these (retrieve_timesteps: which custom schedules are accepted; eta / generator)
    ours = list(inspect.signature(getattr(DPMSolverMultistepScheduler, method)).parameters)
    theirs = list(inspect.signature(getattr(diffusers.DPMSolverMultistepScheduler, method)).parameters)
    assert ours == theirs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule='sigmoid'"),
        (dict(prediction_type="noise"), "prediction_type='noise'"),
        (dict(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
        (dict(algorithm_type="ddim"), "algorithm_type='ddim'"),
        (dict(solver_type="rk4"), "solver_type='rk4'"),
        (dict(final_sigmas_type="one"), "final_sigmas_type='one'"),
        (dict(solver_order=4), "solver_order=4"),
        (dict(algorithm_type="dpmsolver"), "`final_sigmas_type` zero is not supported"),
        (dict(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min"), "solver_order=3"),
        (dict(use_karras_sigmas=True, use_beta_sigmas=True), "only one of"),
    ],
)
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverMultistepScheduler(**kwargs)


def test_flow_matching_options_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="use_flow_sigmas"):
        DPMSolverMultistepScheduler(use_flow_sigmas=True)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DPMSolverMultistepScheduler().set_timesteps(steps)


def test_bad_custom_schedules_are_refused():
    with pytest.raises(ValueError, match="only pass one"):
        DPMSolverMultistepScheduler().set_timesteps(5, timesteps=[20, 10])
    with pytest.raises(ValueError, match="exactly one"):
        DPMSolverMultistepScheduler().set_timesteps()
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[20, 10])
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        DPMSolverMultistepScheduler().set_timesteps(5, mu=0.5)
    with pytest.raises(TypeError):  # no custom sigmas here, as in diffusers (pipelines check the signature)
        DPMSolverMultistepScheduler().set_timesteps(5, sigmas=[1.0, 0.5])


def test_step_before_set_timesteps_is_refused():
    with pytest.raises(ValueError, match="set_timesteps"):
        DPMSolverMultistepScheduler().step(torch.zeros(1), 10, torch.zeros(1))
