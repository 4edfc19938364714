"""Compile every kernel configuration for real GPU targets without a GPU, and report its resources.

Each kernel file lists the configurations its launcher can pick (`compile_cases()`); this module
compiles each one with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` for sm_80
and sm_90, then reads off shared memory (compiler metadata), registers and spills (`ptxas -v` on the
PTX, with the ptxas shipped inside Triton's package) and whether the PTX uses Hopper's `wgmma`.
Shared by tests/kernels/test_compile.py and bench/kernels.py.

Must run in a process without TRITON_INTERPRET=1: under the interpreter `@triton.jit` builds
interpreted functions that cannot be compiled. `python -m fastdiff.kernels.compile_report` prints
the report as Markdown (`--markdown PATH` / `--json PATH` also write it / the raw results).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton

ARCHS = (80, 90)
# Max dynamic shared memory per block (opt-in), CUDA programming guide, compute capabilities table.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
PTXAS_ARCH = {80: "sm_80", 90: "sm_90a"}
TRITON_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int64: "i64"}


@dataclass
class Case:
    """One kernel configuration: arguments not named in `pointers`/`floats`/`constexprs` are i32."""

    kernel: object  # the @triton.jit function
    name: str  # what varies, e.g. "D=40 fp16"
    pointers: dict  # pointer arg -> element torch dtype; pointers are taken as 16-byte aligned
    constexprs: dict
    num_warps: int
    num_stages: int = 3
    floats: list = field(default_factory=list)  # fp32 scalar args
    aligned: tuple = ()  # i32 args taken as multiples of 16 (strides of real shapes), as the JIT would
    expect_wgmma: bool = False  # must the sm_90 PTX use wgmma?


@dataclass
class Result:
    kernel: str
    name: str  # Case.name: what varies besides the block configuration
    config: str  # block sizes, warps, stages
    arch: int
    shared: int
    registers: int
    spill_stores: int
    spill_loads: int
    wgmma: bool
    expect_wgmma: bool

    @property
    def smem_ok(self) -> bool:
        return self.shared <= SMEM_LIMIT[self.arch]


def all_cases() -> list[Case]:
    from fastdiff.kernels import attention, geglu, group_norm, layer_norm, linear, scheduler_step

    modules = (attention, group_norm, layer_norm, geglu, linear, scheduler_step)
    return [c for module in modules for c in module.compile_cases()]


def _source(case: Case):
    names = case.kernel.arg_names
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in case.constexprs:
            signature[name] = "constexpr"
        elif name in case.pointers:
            signature[name] = "*" + TRITON_TYPE[case.pointers[name]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name in case.floats else "i32"
            if name in case.aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compiler.ASTSource(fn=case.kernel, signature=signature, constexprs=case.constexprs, attrs=attrs)


@functools.cache
def ptxas(ptx_version: str) -> str:
    """Triton's bundled ptxas (`ptxas`, then `ptxas-blackwell`) whose version accepts this PTX version."""
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    probe = f".version {ptx_version}\n.target sm_90a\n.address_size 64\n"  # an empty, valid module
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.ptx"
        src.write_text(probe)
        for path in (bin_dir / "ptxas", bin_dir / "ptxas-blackwell"):
            cmd = [str(path), "--gpu-name", "sm_90a", str(src), "-o", os.devnull]
            if path.exists() and subprocess.run(cmd, capture_output=True).returncode == 0:
                return str(path)
    raise RuntimeError(f"no ptxas in {bin_dir} accepts PTX version {ptx_version}")


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from `ptxas -v`."""
    ptxas_path = ptxas(re.search(r"\.version (\d+\.\d+)", ptx).group(1))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([ptxas_path, "-v", "--gpu-name", PTXAS_ARCH[arch], str(src), "-o", str(src) + ".o"],
                             capture_output=True, text=True, check=True)
    log = out.stderr + out.stdout
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups()
    return regs, int(stores), int(loads)


def compile_case(case: Case, arch: int) -> Result:
    target = triton.backends.compiler.GPUTarget("cuda", arch, 32)
    compiled = triton.compile(_source(case), target=target,
                              options=dict(num_warps=case.num_warps, num_stages=case.num_stages))
    ptx = compiled.asm["ptx"]
    regs, stores, loads = ptxas_usage(ptx, arch)
    blocks = " ".join(f"{k}={v}" for k, v in case.constexprs.items() if k.startswith("BLOCK"))
    return Result(kernel=case.kernel.__name__, name=case.name,
                  config=f"{blocks} warps={case.num_warps} stages={case.num_stages}",
                  arch=arch, shared=compiled.metadata.shared, registers=regs, spill_stores=stores,
                  spill_loads=loads, wgmma="wgmma" in ptx, expect_wgmma=case.expect_wgmma and arch == 90)


def _compile_nth(job: tuple[int, int]) -> Result:
    index, arch = job
    return compile_case(all_cases()[index], arch)


def run(workers: int = 2) -> list[Result]:
    """Compile all cases for all targets, `workers` compilations at a time (compiling is CPU-bound)."""
    jobs = [(i, arch) for i in range(len(all_cases())) for arch in ARCHS]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_nth, jobs))


def markdown(results: list[Result]) -> str:
    lines = ["| kernel | case | config | sm | smem (KB) | regs | spill st/ld (B) | wgmma |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        smem = f"{r.shared / 1024:.1f}" + ("" if r.smem_ok else " TOO BIG")
        lines.append(f"| {r.kernel} | {r.name} | {r.config} | {r.arch} | {smem} | {r.registers} | "
                     f"{r.spill_stores}/{r.spill_loads} | {'yes' if r.wgmma else 'no'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_report: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
    results = run(args.workers)
    table = markdown(results)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
