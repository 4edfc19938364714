"""Shared tools for scheduler tests: a stand-in model, full and mid-schedule sampling loops, parity checks
against diffusers, and a guard that fails on any host sync."""

from __future__ import annotations

import contextlib
import inspect
from unittest import mock

import diffusers
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastdiff

SHAPE = (2, 4, 8, 8)
STEP_COUNTS = (1, 2, 7, 50)
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's betas
# the Karras-compatible schedulers (interchangeable through from_config)
KARRAS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
          "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
          "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
          "DEISMultistepScheduler", "UniPCMultistepScheduler"]


def stand_in_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth function of sample and timestep, standing in for a UNet."""
    t = torch.as_tensor(t, dtype=sample.dtype, device=sample.device)
    return 0.7 * torch.sin(1.3 * sample + t / 300.0) + 0.1 * sample * torch.cos(t / 500.0)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def run_loop(scheduler, num_inference_steps=None, seed: int = 0, shape=SHAPE, set_kwargs=None, step_kwargs=None,
             model=stand_in_model, guard=None):
    """Drive a full loop as a pipeline does; returns (timesteps, final sample).

    `guard` (a context manager factory) wraps everything after set_timesteps, e.g. `no_host_sync`.
    """
    set_kwargs = dict(set_kwargs or {})
    if num_inference_steps is not None:
        set_kwargs["num_inference_steps"] = num_inference_steps
    scheduler.set_timesteps(**set_kwargs)
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)) * scheduler.init_noise_sigma
    step_kwargs = dict(step_kwargs or {})
    if _accepts(scheduler.step, "generator"):
        step_kwargs["generator"] = gen
    with (guard() if guard else contextlib.nullcontext()):
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(model(x_in, t), t, sample, **step_kwargs).prev_sample
    return scheduler.timesteps.clone(), sample


def loop_from(scheduler, steps: int, start: int, begin_index: bool = True, seed: int = 3, scale: float = 1.0,
              noise_seed: int | None = None) -> torch.Tensor:
    """Image-to-image: a loop over timesteps[start:] (start given by set_begin_index, or found from the first
    timestep), from a seeded sample times `scale`; returns the final sample."""
    scheduler.set_timesteps(steps)
    if begin_index:
        scheduler.set_begin_index(start)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * scale
    step_kwargs = {} if noise_seed is None else {"generator": torch.Generator().manual_seed(noise_seed)}
    for t in scheduler.timesteps[start:]:
        x = scheduler.step(stand_in_model(scheduler.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x


def public(config) -> dict:
    """A config without its private keys (`_class_name`, `_use_default_values`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def assert_same_loop(ours, theirs, num_inference_steps=None, rtol: float = 1e-5, **kwargs):
    """Same timesteps and the same final sample (max abs diff <= rtol * max |sample|)."""
    t_ours, x_ours = run_loop(ours, num_inference_steps, **kwargs)
    t_theirs, x_theirs = run_loop(theirs, num_inference_steps, **kwargs)
    assert t_ours.shape == t_theirs.shape, f"timesteps differ: {t_ours.tolist()} vs {t_theirs.tolist()}"
    torch.testing.assert_close(t_ours.double(), t_theirs.double(), rtol=0, atol=1e-4)
    assert torch.isfinite(x_theirs).all() == torch.isfinite(x_ours).all()
    scale = x_theirs.abs().max().clamp(min=1e-12)
    err = (x_ours - x_theirs).abs().max()
    assert err <= rtol * scale, f"final samples differ: max abs {err:.3e} > {rtol} * {scale:.3e}"


def assert_converts_like_diffusers(target: str, source: str, source_kwargs: dict):
    """The user idiom `pipe.scheduler = Target.from_config(pipe.scheduler.config)` on diffusers' `source`
    config, in both libraries: the same public config (diffusers fills keys the source lacks with the target's
    defaults) and the same loop."""
    source_config = getattr(diffusers, source)(**source_kwargs).config
    ours = getattr(fastdiff, target).from_config(source_config)
    theirs = getattr(diffusers, target).from_config(source_config)
    assert public(ours.config) == public(theirs.config)
    assert_same_loop(ours, theirs, 7)


def assert_loop_never_syncs(scheduler, steps: int = 7, **run_kwargs):
    """A whole loop under `no_host_sync` ends finite."""
    _, x = run_loop(scheduler, steps, guard=no_host_sync, **run_kwargs)
    assert torch.isfinite(x).all()


SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.item.default,
}


class HostSyncError(AssertionError):
    pass


class _SyncGuard(TorchDispatchMode):
    """Fails on ops that force the host to wait for the device, and on device-to-host copies."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_OPS:
            raise HostSyncError(f"host sync: {func}")
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            dst_device = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0].device
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_device is not None \
                    and torch.device(dst_device).type == "cpu":
                raise HostSyncError(f"device-to-host copy: {func}")
        return func(*args, **kwargs)


def _refuse(name):
    def fail(*args, **kwargs):
        raise HostSyncError(f"host sync: Tensor.{name}()")

    return fail


@contextlib.contextmanager
def no_host_sync():
    """Inside: .item(), .tolist(), .numpy(), bool(tensor), nonzero and D2H copies all raise."""
    with contextlib.ExitStack() as stack:
        for name in ("tolist", "numpy", "item"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, _refuse(name)))
        stack.enter_context(_SyncGuard())
        yield
