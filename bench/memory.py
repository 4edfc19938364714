"""Peak memory of one system, measured in a fresh process so the other system's weights do not count.

The child imports only the library it measures, loads the pipeline, and runs it twice (the first
run builds one-time state such as fastdiff's prepacked CPU convolution weights), with at most two
denoising steps: every step allocates the same, so more steps would not raise the peak. It reports:
  * CPU: peak resident set size (VmHWM) over the whole process (imports, load, both runs), and the
    peak during the second run alone (VmHWM reset through /proc/self/clear_refs after the first);
  * CUDA: torch.cuda.max_memory_allocated over the whole process, and during the second run.

    python -m bench.memory '<json config>' <folder> <system name> <backend or ""> <threads>
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace

import torch

MIB = 2**20


def peak_memory(folder, cfg, system) -> dict[str, float | None]:
    """Run the probe for `system` (a harness.System; only its name and backend are used) in a child process."""
    cfg = replace(cfg, steps=min(cfg.steps, 2))  # every step allocates alike: two show the peak, cheaper
    args = [sys.executable, "-m", "bench.memory", json.dumps(asdict(cfg)), str(folder), system.name,
            system.backend or "", str(torch.get_num_threads())]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=_repo_root())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _repo_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS (since 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _probe(cfg, folder: str, name: str, backend: str | None) -> dict[str, float | None]:
    from bench.harness import System, load_pipeline, run_once

    cuda = torch.device(cfg.device).type == "cuda"
    system = System(name, load_pipeline("diffusers" if backend is None else "fastdiff", folder, cfg), backend)
    run_once(system, cfg)
    if cuda:
        whole = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_once(system, cfg)
        return {"kind": "cuda_max_allocated", "peak_mib": max(whole, torch.cuda.max_memory_allocated()) / MIB,
                "run_peak_mib": torch.cuda.max_memory_allocated() / MIB}
    whole = _status_kib("VmHWM:")
    reset = _reset_peak_rss()
    run_once(system, cfg)
    run_peak = _status_kib("VmHWM:")
    return {"kind": "cpu_rss", "peak_mib": max(whole, run_peak) / 1024, "run_peak_mib": run_peak / 1024 if reset else None}


def main(argv: list[str]):
    from bench.harness import Config

    config, folder, name, backend, threads = argv
    torch.set_num_threads(int(threads))
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(config).items()})
    print(json.dumps(_probe(cfg, folder, name, backend or None)))


if __name__ == "__main__":
    main(sys.argv[1:])
