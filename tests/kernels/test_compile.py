"""Every kernel configuration the launchers can pick compiles for sm_80 and sm_90 without a GPU, fits
shared memory, does not spill, and (16-bit attention and linear) use Hopper's wgmma.

Compiling needs `@triton.jit` kernels, not the interpreted ones this test directory imports, so the
report runs in a subprocess without TRITON_INTERPRET (fastdiff.kernels.compile_report, shared with
bench/kernels.py). The Markdown report is written to $FASTDIFF_COMPILE_REPORT, or the test's tmp dir.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastdiff.kernels import compile_report


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compile")
    report = Path(os.environ.get("FASTDIFF_COMPILE_REPORT", tmp / "compile_report.md"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "fastdiff.kernels.compile_report", "--json", str(tmp / "r.json"),
           "--markdown", str(report)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=900)
    print(f"\ncompile report: {report}\n{report.read_text()}")
    return [compile_report.Result(**r) for r in json.loads((tmp / "r.json").read_text())]


def _ids(results):
    return [f"{r.kernel} {r.name} {r.config} sm_{r.arch}" for r in results]


def test_every_config_compiles_for_both_targets(results):
    expected = [(c.kernel.__name__, c.name) for c in compile_report.all_cases()]
    assert {k for k, _ in expected} == {"_attn_fwd", "_group_norm_fwd", "_layer_norm_fwd", "_geglu_fwd",
                                        "_linear_fwd", "_scheduler_step_fwd"}
    for arch in (80, 90):
        assert sorted((r.kernel, r.name) for r in results if r.arch == arch) == sorted(expected)


def test_shared_memory_fits(results):
    too_big = [i for i, r in zip(_ids(results), results) if not r.smem_ok]
    assert not too_big


def test_no_register_spills(results):
    spills = [(i, r.spill_stores, r.spill_loads) for i, r in zip(_ids(results), results) if r.spill_stores or r.spill_loads]
    assert not spills


def test_hopper_attention_and_linear_use_wgmma(results):
    expected = [r for r in results if r.expect_wgmma]
    assert {r.kernel for r in expected} == {"_attn_fwd", "_linear_fwd"} and all(r.arch == 90 for r in expected)
    assert [i for i, r in zip(_ids(expected), expected) if not r.wgmma] == []
