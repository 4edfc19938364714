"""`fused_step` (guidance + step in one `ops.scheduler_step`) on the torch entry: whole loops equal the loop of
CFG combine + step() for every fused family, draw the same seeded noise, and force no host sync.

The kernel itself is held to step() in tests/kernels/test_scheduler_step.py.
"""

import contextlib
import inspect

import pytest
import torch

from fastdiff import ops
from fastdiff import schedulers as S
from tests.schedulers.harness import SHAPE, no_host_sync, stand_in_model

G = 3.0
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # every config's default here

# name: (class, config over Stable Diffusion's betas, step() options); stochastic steps draw from a seeded
# generator, so fused and plain loops draw the same noise in the same order
FAMILIES = {
    "ddpm": (S.DDPMScheduler, {}, {}),
    "ddpm-v-fixed_small_log": (S.DDPMScheduler, dict(prediction_type="v_prediction", variance_type="fixed_small_log",
                                                     clip_sample=False), {}),
    "ddim": (S.DDIMScheduler, dict(clip_sample=False), dict(eta=0.0)),
    "ddim-eta-clip": (S.DDIMScheduler, dict(prediction_type="sample"), dict(eta=0.7, use_clipped_model_output=True)),
    "euler": (S.EulerDiscreteScheduler, dict(use_karras_sigmas=True), {}),
    "euler-v-churn": (S.EulerDiscreteScheduler, dict(prediction_type="v_prediction"),
                      dict(s_churn=2.0, s_tmin=0.5, s_tmax=5.0, s_noise=1.003)),
    "euler-ancestral": (S.EulerAncestralDiscreteScheduler, {}, {}),
    "heun": (S.HeunDiscreteScheduler, {}, {}),
    "heun-sample-clip": (S.HeunDiscreteScheduler, dict(prediction_type="sample", clip_sample=True), {}),
    "kdpm2": (S.KDPM2DiscreteScheduler, {}, {}),
    "kdpm2-ancestral": (S.KDPM2AncestralDiscreteScheduler, {}, {}),
    "lms": (S.LMSDiscreteScheduler, {}, {}),
    "lms-order-2": (S.LMSDiscreteScheduler, {}, dict(order=2)),
    "dpm++2m": (S.DPMSolverMultistepScheduler, {}, {}),
    "dpm++3m-karras": (S.DPMSolverMultistepScheduler, dict(solver_order=3, use_karras_sigmas=True), {}),
    "sde-dpm++2m": (S.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++"), {}),
    "sde-dpm-eps": (S.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"),
                    {}),
    "dpm-singlestep-2": (S.DPMSolverSinglestepScheduler, {}, {}),
    "dpm-singlestep-3-sde": (S.DPMSolverSinglestepScheduler, dict(solver_order=3, algorithm_type="sde-dpmsolver++"),
                             {}),
    "unipc": (S.UniPCMultistepScheduler, {}, {}),
    "unipc-3-bh1-eps": (S.UniPCMultistepScheduler, dict(solver_order=3, solver_type="bh1", predict_x0=False,
                                                        final_sigmas_type="sigma_min", disable_corrector=[2]), {}),
    "deis": (S.DEISMultistepScheduler, {}, {}),
    "deis-3": (S.DEISMultistepScheduler, dict(solver_order=3), {}),
    "lcm": (S.LCMScheduler, {}, {}),
    "pndm": (S.PNDMScheduler, dict(skip_prk_steps=True, steps_offset=1), {}),
    "pndm-prk": (S.PNDMScheduler, {}, {}),
}


def _make(name):
    cls, config, options = FAMILIES[name]
    return cls(**{**SD, **config}), options


def _guided_model(x_in, t):
    """[uncond; cond] of a smooth stand-in with a bounded guidance delta (g = 3 stays well conditioned)."""
    uncond = stand_in_model(x_in, t)
    return torch.cat([uncond, uncond + 0.1 * torch.sin(3 * x_in)])


def _loop(scheduler, options, fused: bool, steps: int = 10, guidance=G, guard=None):
    scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    if "generator" in inspect.signature(scheduler.step).parameters:  # both paths draw from the same seed
        options = dict(options, generator=torch.Generator().manual_seed(0))
    with guard() if guard else contextlib.nullcontext():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            output = _guided_model(x_in, t) if guidance is not None else stand_in_model(x_in, t)
            if fused:
                x = scheduler.fused_step(output, t, x, guidance_scale=guidance, **options)[0]
            elif guidance is not None:
                uncond, cond = output.chunk(2)
                x = scheduler.step(uncond + G * (cond - uncond), t, x, **options, return_dict=False)[0]
            else:
                x = scheduler.step(output, t, x, **options, return_dict=False)[0]
    return x


def _assert_same(got, expected, rtol=1e-5):
    err, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    assert err <= rtol * scale, f"fused loop differs from the step() loop: {err:.3g} > {rtol} x {scale:.3g}"


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_loop_equals_step_loop(name):
    scheduler, options = _make(name)
    assert scheduler.supports_fused_step(**options)
    _assert_same(_loop(scheduler, options, fused=True), _loop(_make(name)[0], options, fused=False))


@pytest.mark.parametrize("name", ["ddpm", "euler-ancestral", "dpm++2m", "unipc", "heun"])
def test_without_guidance_and_with_a_device_guidance_tensor(name):
    options = FAMILIES[name][2]
    expected = _loop(_make(name)[0], options, fused=False, guidance=None)
    _assert_same(_loop(_make(name)[0], options, fused=True, guidance=None), expected)
    with_tensor = _loop(_make(name)[0], options, fused=True, guidance=torch.tensor([G]))
    _assert_same(with_tensor, _loop(_make(name)[0], options, fused=True))


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_loop_forces_no_host_sync(name, monkeypatch):
    """After set_timesteps, the fused loop (table building on the first call included) never syncs. The op is
    called without the torch.library wrapper here, so the guard's dispatch mode also sees the ops inside it."""
    monkeypatch.setattr(ops, "scheduler_step", _unwrapped_scheduler_step)
    scheduler, options = _make(name)
    _loop(scheduler, options, fused=True, guard=no_host_sync)


def _unwrapped_scheduler_step(x, model_output, table, step, *, guidance=None, start=None, noise=None, history=None,
                              stash=None, accumulator=None, denoised=None, clamp=False, read_oldest=False):
    return ops.scheduler_step_torch(x, model_output, guidance, table, step, start, noise, history, stash, accumulator,
                                    denoised, clamp, read_oldest)


def test_lcm_returns_denoised_like_step():
    fused, plain = _make("lcm")[0], _make("lcm")[0]
    for s in (fused, plain):
        s.set_timesteps(4)
    x = torch.randn(SHAPE)
    t = fused.timesteps[0]
    output = _guided_model(x, t)
    uncond, cond = output.chunk(2)
    noise = torch.randn(SHAPE)
    prev, denoised = fused.fused_step(output, t, x, guidance_scale=G, variance_noise=noise)
    prev_ref, denoised_ref = plain.step(uncond + G * (cond - uncond), t, x, variance_noise=noise, return_dict=False)
    _assert_same(denoised, denoised_ref)
    _assert_same(prev, prev_ref)


@pytest.mark.parametrize("cls, config, options", [
    (S.DDPMScheduler, dict(thresholding=True), {}),
    (S.DDPMScheduler, dict(variance_type="learned_range"), {}),
    (S.DDIMScheduler, dict(thresholding=True), {}),
    (S.DPMSolverMultistepScheduler, dict(thresholding=True), {}),
    (S.DPMSolverMultistepScheduler, dict(variance_type="learned"), {}),
    (S.UniPCMultistepScheduler, dict(thresholding=True), {}),
    (S.LCMScheduler, dict(thresholding=True), {}),
    (S.LMSDiscreteScheduler, {}, dict(order=5)),
    (S.EulerDiscreteScheduler, {}, dict(unknown_option=1)),
    (S.KarrasVeScheduler, {}, {}),
    (S.ScoreSdeVeScheduler, {}, {}),
])
def test_unfusable_configs_say_so(cls, config, options):
    """Dynamic thresholding (a quantile), learned variances (read from the output), LMS beyond 4 history slots,
    and the schedulers with other protocols run step(); fused_step refuses them."""
    scheduler = cls(**config)
    assert not scheduler.supports_fused_step(**options)
    with pytest.raises(ValueError, match="no fused step"):
        scheduler.fused_step(torch.zeros(SHAPE), 0, torch.zeros(SHAPE), **options)


def test_model_output_must_match_the_guidance_layout():
    scheduler, _ = _make("dpm++2m")
    scheduler.set_timesteps(4)
    x, t = torch.randn(SHAPE), scheduler.timesteps[0]
    with pytest.raises(ValueError, match="CFG batch"):
        scheduler.fused_step(torch.randn(SHAPE), t, x, guidance_scale=G)
    with pytest.raises(ValueError, match="shaped like"):
        scheduler.fused_step(torch.randn((2 * SHAPE[0], *SHAPE[1:])), t, x)
