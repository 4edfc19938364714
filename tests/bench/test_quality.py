"""bench/quality.py: the prompt grid, run parsing, and one small end-to-end run on the shipped model."""

import argparse
import json

import pytest

from bench import quality
from bench.shapes import parse_caption


def test_prompt_grid_covers_the_world_and_samples_by_seed():
    grid = quality.prompt_grid()
    assert len(grid) == len(set(grid)) == 126 and all(parse_caption(p) for p in grid)
    assert quality.prompt_grid(10, seed=3) == quality.prompt_grid(10, seed=3) != quality.prompt_grid(10, seed=4)
    assert set(quality.prompt_grid(10, seed=3)) <= set(grid)


def test_parse_runs():
    assert quality.parse_runs("ddim:50,dpm++2m:20") == [("ddim", 50), ("dpm++2m", 20)]
    for bad in ("ddim", "ddim:x", ":5"):
        with pytest.raises(argparse.ArgumentTypeError):
            quality.parse_runs(bad)


def test_small_run_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "quality.json"
    argv = ["--prompts", "4", "--images", "1", "--runs", "dpm++2m:8", "--json", str(path)]
    assert quality.main(argv) == 0
    out = capsys.readouterr().out
    assert "| dpm++2m (DPMSolverMultistepScheduler) | 8 |" in out
    report = json.loads(path.read_text())
    [result] = report["results"]
    assert result["images"] == 4 and 0 <= result["ok"] <= 1 and report["prompts"] == 4
    # --min turns a shortfall into exit status 1 (no run can reach 101%)
    assert quality.main([*argv, "--min", "1.01"]) == 1
