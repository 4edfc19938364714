"""Run diffusers and fastdiff on the same pipeline folder and measure latency, overhead, memory and parity.

For one configuration (preset, device, dtype, resolution, batch, steps, scheduler) every system —
diffusers, and fastdiff once per backend available on the device — loads the same folder. After
warm-up, timed runs alternate the order (A B C, C B A, ...), so machine drift hits all alike.

What a run measures (same seed, same prompt, output_type="np"):
  * end-to-end: wall time of `pipe(...)`, text encoding and VAE decoding included;
  * loop steps: a forward pre-hook on the UNet stamps the start of the loop, `callback_on_step_end`
    stamps the end of every step. One step = one loop iteration = one UNet call (PNDM's PLMS runs
    steps + 1 of them). On CUDA the stamps are CUDA events (no host sync inside the loop).
  * host overhead per step (tiny preset, or --overhead): the loop's time per step, since the tiny
    preset's arithmetic is negligible; on the CPU split into time inside tensor ops (aten ops and
    fastdiff custom ops as a whole, timed by a dispatch mode in extra probe runs: per-op dispatch,
    allocation, the tiny kernels) and outside them (Python: modules, pipeline, scheduler host code).
  * parity: the warm-up images of each fastdiff backend against diffusers' (max |difference| of
    pixels in [0, 1], and PSNR).
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.presets import PRESETS, PROMPT, pipeline_folder

# Short names for --scheduler; any Diffusers scheduler class name is accepted as well.
SCHEDULERS = {
    "pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler", "dpm_single": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler", "deis": "DEISMultistepScheduler", "lcm": "LCMScheduler",
}

# Largest max |pixel difference| (pixels in [0, 1]) that passes, per dtype. float32: the bound
# (measured on sd15, 256x256, 10 steps: 6e-6; an attention scale off by 10% gives 2.2e-3, a GroupNorm eps
# of 1e-3 instead of 1e-5 gives 3.8e-3: both fail). bfloat16: both systems round every op to 8 mantissa
# bits, in different places (fused ops, prepacked convolutions), so their images differ by about as much
# as bfloat16 differs from float32. Same sd15 run: diffusers bf16 vs diffusers fp32 0.020 (PSNR 49.8 dB),
# fastdiff bf16 vs diffusers fp32 0.016 (50.3 dB), fastdiff bf16 vs diffusers bf16 0.023 (48.4 dB); the
# bound is 4x that. It catches gross breakage only: with random weights the 10% attention-scale error
# stays inside bfloat16's noise (0.020), so subtle errors are the float32 bound's job. float16 (not
# measured on the CPU) keeps 3 more mantissa bits than bfloat16: half the bfloat16 bound.
PARITY_MAX_ABS = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}


@dataclass(frozen=True)
class Config:
    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"
    res: int | None = None  # image side in pixels; None: the preset's
    batch: int = 1  # images per call (classifier-free guidance doubles the UNet batch)
    steps: int | None = None  # None: the preset's
    scheduler: str | None = None  # None: the preset's
    backends: tuple[str, ...] = ()  # fastdiff backends; empty: every backend available on the device
    runs: int = 5  # timed runs per system
    warmup: int = 1
    seed: int = 0
    overhead: bool | None = None  # None: only for the tiny preset
    memory: bool = True

    def resolved(self) -> "Config":
        preset = PRESETS[self.preset]
        return replace(self, res=self.res or preset.res, steps=self.steps or preset.steps,
                       backends=self.backends or available_backends(self.device),
                       overhead=self.preset == "tiny" if self.overhead is None else self.overhead)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def available_backends(device: str) -> tuple[str, ...]:
    """fastdiff backends worth timing here. Triton needs CUDA: on the CPU its kernels run only under
    TRITON_INTERPRET=1, an interpreter far too slow to benchmark."""
    from fastdiff import ops

    return ("triton", "torch") if torch.device(device).type == "cuda" and ops.triton_can_run(device) else ("torch",)


@dataclass
class System:
    """One pipeline to time: diffusers, or fastdiff with one backend forced."""

    name: str
    pipe: Any
    backend: str | None = None

    def context(self):
        if self.backend is None:
            return contextlib.nullcontext()
        from fastdiff import ops

        return ops.use_backend(self.backend)


def load_pipeline(library: str, folder, cfg: Config):
    """StableDiffusionPipeline from `folder` in diffusers or fastdiff, on cfg's device and dtype."""
    if library == "diffusers":
        import diffusers as lib
    else:
        import fastdiff as lib
    pipe = lib.StableDiffusionPipeline.from_pretrained(folder, dtype=cfg.torch_dtype).to(cfg.device)
    if cfg.scheduler:
        name = SCHEDULERS.get(cfg.scheduler, cfg.scheduler)
        pipe.scheduler = getattr(lib, name).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_systems(folder, cfg: Config) -> list[System]:
    systems = [System("diffusers", load_pipeline("diffusers", folder, cfg))]
    fast = load_pipeline("fastdiff", folder, cfg)
    systems += [System(f"fastdiff[{b}]", fast, b) for b in cfg.backends]
    return systems


class Clock:
    """Time stamps: perf_counter on the CPU, CUDA events (recorded without a host sync) on CUDA."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    def stamp(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, stamps: list) -> list[float]:
        """Each stamp's time in seconds after the first."""
        if not self.cuda:
            return [s - stamps[0] for s in stamps]
        torch.cuda.synchronize()
        return [stamps[0].elapsed_time(s) / 1e3 for s in stamps]


@dataclass
class Run:
    e2e: float  # seconds
    steps: list[float]  # seconds per loop iteration
    image: np.ndarray = field(repr=False)


def run_once(system: System, cfg: Config, on_loop_start=None, on_step=None) -> Run:
    """One timed call of the pipeline. `on_loop_start()` / `on_step(i)` are extra hooks for probes."""
    clock, stamps = Clock(cfg.device), []

    def pre_hook(module, args):
        if not stamps:
            stamps.append(clock.stamp())
            if on_loop_start:
                on_loop_start()

    def step_end(pipe, i, t, tensors):
        stamps.append(clock.stamp())
        if on_step:
            on_step(i)
        return {}

    handle = system.pipe.unet.register_forward_pre_hook(pre_hook)
    try:
        generator = torch.Generator().manual_seed(cfg.seed)
        _sync(cfg.device)
        start = time.perf_counter()
        with system.context():
            out = system.pipe([PROMPT] * cfg.batch, height=cfg.res, width=cfg.res, num_inference_steps=cfg.steps,
                              generator=generator, output_type="np", callback_on_step_end=step_end)
        _sync(cfg.device)
        e2e = time.perf_counter() - start
    finally:
        handle.remove()
    return Run(e2e, list(np.diff(clock.seconds(stamps))), np.asarray(out.images))


def _sync(device: str):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class OpTime(TorchDispatchMode):
    """Sums the wall time spent inside tensor ops (each aten op, each fastdiff custom op as a whole)
    while `counting` is on. Ops nested in a custom op run with the mode off, so nothing counts twice."""

    def __init__(self):
        super().__init__()
        self.counting, self.seconds = False, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.counting:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        return out


def op_seconds_per_step(system: System, cfg: Config) -> float:
    """Time inside tensor ops per loop iteration, from loop start to the last step's end."""
    mode, at_step = OpTime(), []

    def start():
        mode.counting = True

    with mode:
        run = run_once(system, cfg, on_loop_start=start, on_step=lambda i: at_step.append(mode.seconds))
    return at_step[-1] / len(run.steps)


def timed_runs(systems: list[System], cfg: Config) -> dict[str, list[Run]]:
    """Warm-up, then cfg.runs rounds, the order of the systems reversed every other round."""
    warm = {s.name: [run_once(s, cfg) for _ in range(max(cfg.warmup, 1))] for s in systems}
    runs: dict[str, list[Run]] = {s.name: [] for s in systems}
    for i in range(cfg.runs):
        for system in systems if i % 2 == 0 else systems[::-1]:
            runs[system.name].append(run_once(system, cfg))
    return {name: warm[name][-1:] + runs[name] for name in runs}  # first entry: the last warm-up run


def parity(image: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """max |difference| and PSNR (peak 1) of two image batches in [0, 1]; PSNR None when identical."""
    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {"max_abs": float(np.abs(diff).max()), "psnr_db": None if mse == 0 else float(10 * np.log10(1 / mse))}


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Shows the parity image is not degenerate (random weights could give a flat or clipped image)."""
    return {"mean": float(image.mean()), "std": float(image.std()), "clipped": float(np.mean((image <= 0) | (image >= 1)))}


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians and 90th percentiles over the timed runs (the warm-up run, first in the list, left out)."""
    timed = runs[1:]
    e2e = [r.e2e for r in timed]
    steps = [s for r in timed for s in r.steps]
    return {
        "e2e_s": {"median": _q(e2e, 50), "p90": _q(e2e, 90), "samples": e2e},
        "step_ms": {"median": 1e3 * _q(steps, 50), "p90": 1e3 * _q(steps, 90)},
        "loop_ms_per_step": [1e3 * sum(r.steps) / len(r.steps) for r in timed],
        "steps_per_run": len(timed[0].steps),
    }


def _q(values: list[float], percent: float) -> float:
    return float(np.percentile(values, percent))


def measure(cfg: Config, folder=None) -> dict[str, Any]:
    """Everything the report shows for one configuration, as a JSON-able dict."""
    cfg = cfg.resolved()
    folder = folder or pipeline_folder(PRESETS[cfg.preset])
    systems = load_systems(folder, cfg)
    runs = timed_runs(systems, cfg)
    reference = runs["diffusers"][0]
    reference_image = reference.image
    results = {}
    for system in systems:
        result = summarize(runs[system.name])
        pairs = zip(runs[system.name][1:], runs["diffusers"][1:])  # same round: the same machine state
        result["e2e_ratio_vs_diffusers"] = _q([a.e2e / b.e2e for a, b in pairs], 50)
        if system.name != "diffusers":
            result["parity"] = parity(runs[system.name][0].image, reference.image)
            result["parity"]["ok"] = result["parity"]["max_abs"] <= PARITY_MAX_ABS[cfg.torch_dtype]
        results[system.name] = result
    if cfg.overhead:
        _add_overhead(systems, cfg, results)
    if cfg.memory:
        from bench.memory import peak_memory

        names = [(s.name, s.backend) for s in systems]
        del systems, runs, reference  # free both pipelines first: the probe's process loads one again
        gc.collect()
        for name, backend in names:
            results[name]["memory"] = peak_memory(folder, cfg, System(name, None, backend))
    return {"config": cfg.__dict__ | {"folder": str(folder)}, "systems": results,
            "parity_max_abs": PARITY_MAX_ABS[cfg.torch_dtype], "reference_image": image_stats(reference_image)}


def _add_overhead(systems: list[System], cfg: Config, results: dict):
    """Host overhead per step = the loop's time per step on a preset whose arithmetic is negligible
    (tiny), split on the CPU into time outside tensor ops (Python: modules, pipeline, scheduler) and
    inside them (per-op dispatch and allocation, plus the little arithmetic there is). The inside time
    is the median of up to 5 probe runs per system, alternating like the timed runs."""
    inside: dict[str, list[float]] = {s.name: [] for s in systems}
    if not Clock(cfg.device).cuda:  # on CUDA ops only enqueue kernels: their host time is not separable
        for i in range(min(max(cfg.runs, 1), 5)):
            for system in systems if i % 2 == 0 else systems[::-1]:
                inside[system.name].append(1e3 * op_seconds_per_step(system, cfg))
    for system in systems:
        loop = float(np.median(results[system.name]["loop_ms_per_step"]))
        ops = float(np.median(inside[system.name])) if inside[system.name] else None
        results[system.name]["overhead_ms_per_step"] = {
            "total": loop, "outside_ops": None if ops is None else loop - ops, "inside_ops": ops}
