"""The fused scheduler-step kernel (interpreter) against each scheduler's own readable step().

For every fused family, at warm-up positions that exercise its history and stages: random x, model output
(with and without the CFG batch), guidance g, noise, and the history the scheduler built over earlier random
steps. Three copies of the scheduler take the same step: the kernel (x' written into a NaN-poisoned buffer),
step() in the dtype (the torch path, after the same CFG combine), and step() in float64 (the reference).
The kernel's x' and every state tensor it updates (the pushed history entry, stash, accumulator, LCM's
denoised) may be at most twice as far from the reference as the torch path, plus one unit of roundoff at
the output's scale (values here reach σ_max ≈ 15, so the conftest's floor at 1.0 would be below one ulp).
"""

import copy
import inspect

import pytest
import torch

from fastdiff import ops
from fastdiff import schedulers as S
from fastdiff.kernels import scheduler_step as K
from tests.schedulers.harness import stand_in_model

SHAPE = (2, 4, 8, 8)
STEPS = 10
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
G = 3.0

# name: (scheduler class, config, step() options, positions = model calls made before the tested one)
FAMILIES = {
    "ddpm": (S.DDPMScheduler, {}, {}, [3]),
    "ddpm-v-fixed_large": (S.DDPMScheduler, dict(prediction_type="v_prediction", variance_type="fixed_large",
                                                 clip_sample=False), {}, [5]),
    "ddim": (S.DDIMScheduler, {}, dict(eta=0.0), [3]),
    "ddim-sample-eta-clipped": (S.DDIMScheduler, dict(prediction_type="sample", clip_sample_range=2.0),
                                dict(eta=0.5, use_clipped_model_output=True), [4]),
    "ddim-v-eta": (S.DDIMScheduler, dict(prediction_type="v_prediction", clip_sample=False), dict(eta=1.0), [2]),
    "euler": (S.EulerDiscreteScheduler, {}, {}, [2]),
    "euler-v-churn": (S.EulerDiscreteScheduler, dict(prediction_type="v_prediction"), dict(s_churn=1.0), [3]),
    "euler-ancestral": (S.EulerAncestralDiscreteScheduler, {}, {}, [3]),
    "heun": (S.HeunDiscreteScheduler, dict(clip_sample=True, clip_sample_range=1.5), {}, [2, 3]),
    "kdpm2": (S.KDPM2DiscreteScheduler, {}, {}, [2, 3]),
    "kdpm2-ancestral": (S.KDPM2AncestralDiscreteScheduler, {}, {}, [2, 3]),
    "lms": (S.LMSDiscreteScheduler, {}, {}, [0, 1, 5]),
    "dpm++2m": (S.DPMSolverMultistepScheduler, {}, {}, [0, 1, 4]),
    "dpm++3m": (S.DPMSolverMultistepScheduler, dict(solver_order=3), {}, [2, 4]),
    "sde-dpm++2m": (S.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++"), {}, [3]),
    "dpm-eps-heun-v": (S.DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver", solver_type="heun",
                                                          prediction_type="v_prediction",
                                                          final_sigmas_type="sigma_min"), {}, [3]),
    "dpm-singlestep-3": (S.DPMSolverSinglestepScheduler, dict(solver_order=3), {}, [1, 2, 3]),
    "unipc": (S.UniPCMultistepScheduler, {}, {}, [0, 1, 4]),
    "unipc-3-eps-bh1": (S.UniPCMultistepScheduler, dict(solver_order=3, predict_x0=False, solver_type="bh1",
                                                        final_sigmas_type="sigma_min", disable_corrector=[3]),
                        {}, [3, 4]),
    "deis": (S.DEISMultistepScheduler, {}, {}, [2]),
    "deis-3-v": (S.DEISMultistepScheduler, dict(solver_order=3, prediction_type="v_prediction"), {}, [4]),
    "lcm": (S.LCMScheduler, {}, {}, [1]),
    "pndm": (S.PNDMScheduler, dict(skip_prk_steps=True), {}, [1, 4]),
    "pndm-prk-v": (S.PNDMScheduler, dict(prediction_type="v_prediction"), {}, [2, 13]),
}
CASES = [(name, position) for name, (*_, positions) in FAMILIES.items() for position in positions]


def _accepts(scheduler, name):
    return name in inspect.signature(scheduler.step).parameters


def _warmed_up(name, position):
    """The scheduler after `position` step() calls on random float32 inputs, and the next timestep."""
    cls, config, options, _ = FAMILIES[name]
    scheduler = cls(**config)
    scheduler.set_timesteps(STEPS)
    gen = torch.Generator().manual_seed(position)
    x = torch.randn(SHAPE, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:position]:
        scheduler.scale_model_input(x, t)
        noise = {"variance_noise": torch.randn(SHAPE, generator=gen)} if _accepts(scheduler, "variance_noise") else {}
        x = scheduler.step(torch.randn(SHAPE, generator=gen), t, x, **options, **noise, return_dict=False)[0]
    t = scheduler.timesteps[position]
    scheduler.scale_model_input(x, t)
    return scheduler, x, t


def _state(scheduler) -> dict:
    """Every sample-shaped tensor the scheduler keeps between steps (history, stash, accumulator), by name."""
    found = {}
    for key, value in vars(scheduler).items():
        items = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor) and item.shape[-len(SHAPE):] == SHAPE:
                found[f"{key}[{i}]"] = item
    return found


def _with_state_dtype(scheduler, dtype):
    """A copy whose state tensors are cast to `dtype`."""
    def cast(v):
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.shape[-len(SHAPE):] == SHAPE else v

    scheduler = copy.deepcopy(scheduler)
    for key, value in list(vars(scheduler).items()):
        setattr(scheduler, key, tuple(cast(v) for v in value) if isinstance(value, tuple) else cast(value))
    return scheduler


def _assert_parity(what, out, torch_out, ref):
    assert not out.isnan().any(), f"{what}: kernel left unwritten (NaN-poisoned) or NaN elements"
    err_kernel = (out.double() - ref).abs().max().item()
    err_torch = (torch_out.double() - ref).abs().max().item()
    floor = torch.finfo(out.dtype).eps * max(ref.abs().max().item(), 1.0)
    assert err_kernel <= 2 * err_torch + floor, \
        f"{what}: kernel err {err_kernel:.3g} > 2 x torch err {err_torch:.3g} + {floor:.3g}"


def _launch_kernel(scheduler, model_output, t, x, guidance, options):
    """The kernel through the family's own launch description, x' into a poisoned buffer."""
    launch = scheduler._fused_launch(model_output, t, x, **options)
    if launch.denoised is not None:
        launch.denoised.fill_(float("nan"))
    out = torch.full_like(x, float("nan"))
    K.scheduler_step(x, model_output, guidance, launch.table, launch.step, launch.start, launch.noise, launch.history,
                     launch.stash, launch.accumulator, launch.denoised, launch.clamp, launch.read_oldest, out=out)
    scheduler._fused_finish()
    return out, launch


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, position", CASES)
def test_kernel_matches_step(name, position, dtype, cfg):
    base, x, t = _warmed_up(name, position)
    options = FAMILIES[name][2]
    gen = torch.Generator().manual_seed(1000 + position)
    x = x.to(dtype)
    model_output = torch.randn((2 * SHAPE[0] if cfg else SHAPE[0], *SHAPE[1:]), generator=gen).to(dtype)
    z = torch.randn(SHAPE, generator=gen).to(dtype)
    noise = (lambda v: {"variance_noise": v}) if _accepts(base, "variance_noise") else (lambda v: {})  # noqa: E731

    def combine(m):  # the pipeline's CFG combine, in m's dtype
        uncond, cond = m.chunk(2)
        return uncond + G * (cond - uncond) if cfg else m

    kernel, torch_path, ref = (_with_state_dtype(base, d) for d in (dtype, dtype, torch.float64))
    out, launch = _launch_kernel(kernel, model_output, t, x, torch.tensor([G]) if cfg else None,
                                 {**options, **noise(z)})
    torch_out = torch_path.step(combine(model_output), t, x, **options, **noise(z), return_dict=False)
    ref_out = ref.step(combine(model_output.double()), t, x.double(), **options, **noise(z.double()),
                       return_dict=False)

    _assert_parity("x'", out, torch_out[0], ref_out[0])
    if launch.denoised is not None:  # LCM: f(x_t, t), step()'s second output
        _assert_parity("denoised", launch.denoised, torch_out[1], ref_out[1])
    state, torch_state, ref_state = _state(kernel), _state(torch_path), _state(ref)
    assert state.keys() == ref_state.keys()
    for key in state:
        _assert_parity(key, state[key], torch_state[key], ref_state[key])


def _dominated(flags: dict, variant: tuple) -> bool:
    """Every flag of the launch at most the variant's (J > 1 only changes a constant of the row index)."""
    wide = dict(zip(K.FLAGS, variant))
    return all(flags[k] <= wide[k] for k in K.FLAGS if k != "WARMUP") and (flags["WARMUP"] == 1 or wide["WARMUP"] > 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_launch_is_a_compiled_variant(name):
    """compile_cases() compiles the VARIANTS; each family's launches must be covered by its own (flags off only
    remove code), not merely by the widest "all" variant, so the list names what the families launch."""
    for position in FAMILIES[name][3]:
        scheduler, x, t = _warmed_up(name, position)
        options = FAMILIES[name][2]
        noise = {"variance_noise": torch.randn(SHAPE)} if _accepts(scheduler, "variance_noise") else {}
        launch = scheduler._fused_launch(torch.randn(SHAPE), t, x, **options, **noise)
        flags = K._variant(x, x, None, launch.table, launch.noise, launch.history, launch.stash,
                           launch.accumulator, launch.denoised, launch.clamp, launch.read_oldest)
        covering = [v for key, v in K.VARIANTS.items() if key != "all" and _dominated(flags, v)]
        assert covering, f"{name}: {flags} is not compiled"


# ---- whole loops through fastdiff.ops on the Triton backend --------------------------------------------------


def _guided_model(x_in, t):
    """[uncond; cond] of a smooth stand-in whose guidance delta stays bounded, so g = 3 does not blow up the
    loop and the comparison measures the step, not float32 chaos."""
    uncond = stand_in_model(x_in, t)
    return torch.cat([uncond, uncond + 0.1 * torch.sin(3 * x_in)])


def _loop(scheduler, fused: bool, steps: int = 7):
    """A pipeline's loop: fused_step, or the CFG combine then step()."""
    scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        output = _guided_model(scheduler.scale_model_input(x, t), t)
        if fused:
            x = scheduler.fused_step(output, t, x, guidance_scale=G)[0]
        else:
            uncond, cond = output.chunk(2)
            x = scheduler.step(uncond + G * (cond - uncond), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("cls", [S.DPMSolverMultistepScheduler, S.UniPCMultistepScheduler, S.HeunDiscreteScheduler],
                         ids=lambda c: c.__name__)
def test_seven_step_loop_on_triton_equals_step_loop(cls, monkeypatch):
    """History and stage handling across steps: 7 fused steps through ops on Triton = 7 x (CFG + step())."""
    launches = []
    triton_op = ops._triton_table()["scheduler_step"]
    counted = ops.Op(triton_op.torch, lambda *a: launches.append(1) or triton_op.triton(*a), triton_op.supported)
    monkeypatch.setitem(ops._triton_table(), "scheduler_step", counted)
    sd_betas = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # the stand-in stays tame
    expected = _loop(cls(**sd_betas), fused=False)
    scheduler = cls(**sd_betas)
    with ops.use_backend("triton"):
        got = _loop(scheduler, fused=True)
    assert len(launches) == len(scheduler.timesteps)  # every step went to the kernel
    err, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    assert err <= 1e-5 * scale, f"fused loop differs: {err:.3g} > 1e-5 x {scale:.3g}"


# ---- the ops entry ---------------------------------------------------------------------------------------------


def _op_args(device="cpu", dtype=torch.float32):
    """A DPM++ 2M launch at its third step, as ops.scheduler_step's positional arguments."""
    scheduler, x, t = _warmed_up("dpm++2m", 2)
    launch = scheduler._fused_launch(torch.randn(SHAPE), t, x)
    to = lambda v: None if v is None else v.to(device)  # noqa: E731
    return (x.to(device, dtype), torch.randn((2 * SHAPE[0], *SHAPE[1:]), dtype=dtype, device=device),
            torch.tensor([G], device=device), to(launch.table), to(launch.step), to(launch.start), None,
            to(launch.history).to(dtype), None, None, None, False, False)


def test_launcher_is_the_table_entry_and_unsupported_inputs_fall_back():
    args = _op_args()
    with ops.use_backend("triton"):
        assert ops.implementation("scheduler_step", *args) is K.scheduler_step
        strided = args[0].transpose(2, 3)  # not contiguous
        assert ops.implementation("scheduler_step", strided, *args[1:]) is ops.scheduler_step_torch
        assert ops.implementation("scheduler_step", *_op_args(dtype=torch.float64)) is ops.scheduler_step_torch


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fake_implementation_on_meta(backend):
    x, model_output, guidance, table, step, start, noise, history, *_ = _op_args("meta", torch.float16)
    with ops.use_backend(backend):
        out = ops.scheduler_step(x, model_output, table, step, guidance=guidance, start=start, history=history)
    assert out.device.type == "meta" and out.shape == SHAPE and out.dtype == torch.float16


def test_op_on_triton_equals_torch_entry():
    """Both entries of the op, from the same state: the same x' and the same shifted history."""
    args = _op_args()
    torch_args = list(args)
    torch_args[7] = args[7].clone()
    with ops.use_backend("triton"):
        out = ops.scheduler_step(*args[:2], args[3], args[4], guidance=args[2], start=args[5], history=args[7])
    expected = ops.scheduler_step_torch(*torch_args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(args[7], torch_args[7], rtol=1e-5, atol=1e-5)
