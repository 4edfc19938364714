"""fastdiff against diffusers on the same weights: `python -m bench --preset tiny`.

Comma-separated values run every combination, e.g. `--dtype float32,bfloat16 --res 256,512`.
Prints one Markdown table per configuration and writes bench/results/<preset>-<device>-<time>.{json,md}.
Exits with status 1 if any fastdiff output differs from diffusers' by more than the parity bound.

The roofline model of the GPU step is a separate command: `python -m bench.roofline`.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bench import report
from bench.harness import PARITY_MAX_ABS, SCHEDULERS, Config, available_backends, measure
from bench.presets import PRESETS


def _list(kind):
    return lambda text: [kind(v) for v in text.split(",") if v]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", type=_list(str), default=["float32"], help="float32,bfloat16,float16")
    p.add_argument("--res", type=_list(int), default=[None], help="image side in pixels (default: the preset's)")
    p.add_argument("--batch", type=_list(int), default=[1], help="images per call")
    p.add_argument("--steps", type=_list(int), default=[None], help="inference steps (default: the preset's)")
    p.add_argument("--scheduler", type=_list(str), default=[None], help=f"class name or one of {sorted(SCHEDULERS)}")
    p.add_argument("--backend", type=_list(str), default=[], help="fastdiff backends (default: all available)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per system, after warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 for tiny, whose ops are too small to split, else torch's)")
    p.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=None,
                   help="measure host overhead per step (default: tiny preset only)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="peak memory per system, each in a fresh process")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> list[Config]:
    for name in args.dtype:
        if getattr(torch, name, None) not in PARITY_MAX_ABS:
            raise SystemExit(f"--dtype {name}: use one of float32, bfloat16, float16")
    grid = itertools.product(args.dtype, args.res, args.batch, args.steps, args.scheduler)
    return [Config(preset=args.preset, device=args.device, dtype=d, res=r, batch=b, steps=s, scheduler=sch,
                   backends=tuple(args.backend), runs=args.runs, warmup=args.warmup, overhead=args.overhead,
                   memory=args.memory) for d, r, b, s, sch in grid]


def _notes(args: argparse.Namespace) -> list[str]:
    wanted = set(args.backend) or {"triton", "torch"}
    missing = sorted(wanted - set(available_backends(args.device)))
    return [f"fastdiff[{b}]: not available on {args.device} (Triton kernels need CUDA; on the CPU they only run "
            "under TRITON_INTERPRET=1, far too slow to benchmark)" for b in missing]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    threads = torch.get_num_threads()
    # tiny's ops take microseconds: more threads only add wake-ups, and on a loaded machine each op then
    # waits for a descheduled worker (at load 3 on 2 cores: over 10 minutes with 2 threads, 26 s with 1)
    torch.set_num_threads(args.threads or (1 if args.preset == "tiny" else threads))
    try:
        return _run(args)
    finally:  # callers in the same process (the test suite) keep their thread count
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    results, ok = [], True
    for cfg in configs(args):
        env = report.environment(cfg.device)
        result = measure(_usable_backends(cfg)) | {"environment": env, "notes": _notes(args)}
        result["load_average_1m_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        ok &= all(r.get("parity", {"ok": True})["ok"] for r in result["systems"].values())
        print(report.markdown(result) + "\n", flush=True)
        results.append(result)
    stem = f"{args.preset}-{args.device}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    json_path, md_path = report.write(results, args.out, stem)
    print(f"wrote {json_path} and {md_path}")
    if not ok:
        print("parity FAILED: a fastdiff output differs from diffusers' by more than the bound", file=sys.stderr)
    return 0 if ok else 1


def _usable_backends(cfg: Config) -> Config:
    """Requested backends that cannot run on the device are reported in the notes, not timed."""
    usable = tuple(b for b in cfg.backends if b in available_backends(cfg.device))
    return replace(cfg, backends=usable)


if __name__ == "__main__":
    sys.exit(main())
