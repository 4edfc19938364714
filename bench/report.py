"""The harness's output: environment (date, machine, versions), a Markdown table, and the JSON file."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} logical cores)"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_revision() -> str | None:
    """The commit measured, "+local changes" when fastdiff's sources differ from it (others' work in progress)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fastdiff", "kernels"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" +local changes" if dirty else "")


def environment(device: str) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "revision": source_revision(),
        "load_average_1m": load[0] if load else None,
        "versions": {p: _version(p) for p in ("torch", "triton", "diffusers", "fastdiff", "transformers")}
        | {"python": platform.python_version()},
    }


LEGEND = (
    "time / diffusers': median over rounds of the end-to-end time ratio within a round (below 1: fastdiff is "
    "faster). A step is one loop iteration: UNet call, guidance, scheduler step. Host overhead: the loop's time "
    "per step on the tiny preset, whose arithmetic is negligible; split into time outside tensor ops (Python) and "
    "inside them (dispatch, allocation, tiny kernels). Memory: {memory}; over the whole process (imports, load, "
    "runs), then during the second run alone. Parity: this dtype's bound on the max "
    "abs pixel difference (pixels in [0, 1]) against diffusers' image from the same seed."
)


def _fmt(value, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    """One configuration's table, with the set-up and environment above it."""
    cfg, env = result["config"], result["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    steps = next(iter(result["systems"].values()))["steps_per_run"]
    lines = [
        f"**{cfg['preset']}** · {cfg['device']} · {cfg['dtype']} · {cfg['res']}×{cfg['res']} · batch {cfg['batch']} · "
        f"{cfg['steps']} steps ({steps} UNet calls) · scheduler {cfg['scheduler'] or 'preset default'} · "
        f"{cfg['runs']} timed runs per system, alternating",
        "",
        f"{env['date']} · fastdiff {env.get('revision') or '?'} · {env['device']} · {env['torch_threads']} torch "
        f"threads · load average "
        f"{_fmt(env['load_average_1m'], '.2f')} → {_fmt(result.get('load_average_1m_after'), '.2f')} · {versions}",
        "",
        "| system | end-to-end s (median / p90) | time / diffusers' | loop ms/step (median / p90) | host overhead "
        "ms/step (outside + inside ops) | peak memory MiB (process / run) | max abs pixel diff | PSNR dB | parity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, r, result["parity_max_abs"]) for name, r in result["systems"].items()]
    lines += ["", LEGEND.format(memory="peak RSS of a fresh process that loads and runs twice"
                                if cfg["device"] == "cpu" else "torch.cuda.max_memory_allocated")]
    image = result.get("reference_image")
    if image:
        lines += ["", f"diffusers' image: mean {image['mean']:.3f}, std {image['std']:.3f}, "
                      f"{100 * image['clipped']:.1f}% of values clipped at 0 or 1."]
    lines += [f"\n{note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def _row(name: str, r: dict[str, Any], bound: float) -> str:
    e2e, step = r["e2e_s"], r["step_ms"]
    overhead = r.get("overhead_ms_per_step")
    over = "–" if overhead is None else (
        f"{overhead['total']:.2f} ({_fmt(overhead['outside_ops'], '.2f')} + {_fmt(overhead['inside_ops'], '.2f')})")
    memory = r.get("memory") or {}
    p = r.get("parity")
    parity = "reference" if p is None else ("ok" if p["ok"] else "**FAIL**") + f" (≤ {bound:g})"
    psnr = "–" if p is None else ("identical" if p["psnr_db"] is None else f"{p['psnr_db']:.1f}")
    return (f"| {name} | {e2e['median']:.3f} / {e2e['p90']:.3f} | {r['e2e_ratio_vs_diffusers']:.2f} | "
            f"{step['median']:.2f} / {step['p90']:.2f} | {over} | {_fmt(memory.get('peak_mib'), '.0f')} / {_fmt(memory.get('run_peak_mib'), '.0f')} | "
            f"{'–' if p is None else format(p['max_abs'], '.2e')} | {psnr} | {parity} |")


def write(results: list[dict[str, Any]], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """bench/results/<stem>.json (every sample) and .md (the tables)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    md_path.write_text("\n\n".join(markdown(r) for r in results) + "\n")
    return json_path, md_path
