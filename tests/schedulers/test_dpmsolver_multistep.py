"""DPMSolverMultistepScheduler against diffusers: trajectories over a config matrix, the device history,
sync-free loops, custom schedules. Round trips, bad input, signatures, swaps and img2img starts: test_common.py."""

import itertools

import diffusers
import pytest
import torch

from fastdiff import DPMSolverMultistepScheduler

from .harness import SD, STEP_COUNTS, assert_loop_never_syncs, assert_same_loop, no_host_sync, run_loop, stand_in_model

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
    assert_loop_never_syncs(DPMSolverMultistepScheduler(**config))


def test_sync_guard_sees_diffusers_sync():
    with pytest.raises(AssertionError, match="host sync"):
        run_loop(diffusers.DPMSolverMultistepScheduler(), 7, guard=no_host_sync)


def test_flow_matching_options_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="use_flow_sigmas"):
        DPMSolverMultistepScheduler(use_flow_sigmas=True)


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
