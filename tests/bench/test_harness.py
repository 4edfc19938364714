"""The benchmark harness runs end to end on the tiny preset, so it cannot rot. No timing is asserted:
only that every number is produced, parity holds, and the JSON and Markdown files are written."""

import json

import pytest

pytest.importorskip("diffusers")

from bench import __main__ as cli  # noqa: E402
from bench import roofline  # noqa: E402
from bench.presets import PRESETS, build_tokenizer, pipeline_folder  # noqa: E402


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """The tiny preset built once into a temporary cache (the real cache is left alone)."""
    root = tmp_path_factory.mktemp("bench-cache")
    pipeline_folder(PRESETS["tiny"], root)
    return root


def test_tiny_preset_end_to_end(tiny_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTDIFF_BENCH_CACHE", str(tiny_cache))
    args = ["--preset", "tiny", "--steps", "2", "--runs", "2", "--threads", "1", "--no-memory", "--out", str(tmp_path)]
    status = cli.main(args)
    assert status == 0
    printed = capsys.readouterr().out
    assert "| diffusers |" in printed and "| fastdiff[torch] |" in printed
    assert "fastdiff[triton]: not available on cpu" in printed
    (result,) = json.loads(next(tmp_path.glob("*.json")).read_text())
    fast = result["systems"]["fastdiff[torch]"]
    assert fast["parity"]["ok"] and fast["parity"]["max_abs"] <= 1e-3
    assert fast["steps_per_run"] == 3  # PNDM's PLMS: steps + 1 UNet calls
    for system in result["systems"].values():
        assert len(system["e2e_s"]["samples"]) == 2
        assert system["overhead_ms_per_step"]["total"] > 0
    assert set(result["environment"]["versions"]) >= {"torch", "triton", "diffusers", "fastdiff"}
    assert next(tmp_path.glob("*.md")).read_text().startswith("**tiny**")


def test_peak_memory_in_a_fresh_process(tiny_cache):
    """fastdiff's probe only: it imports no diffusers, so it is the quick one."""
    from bench.harness import Config, System
    from bench.memory import peak_memory

    cfg = Config(preset="tiny", steps=1).resolved()
    memory = peak_memory(pipeline_folder(PRESETS["tiny"], tiny_cache), cfg, System("fastdiff[torch]", None, "torch"))
    assert memory["kind"] == "cpu_rss" and memory["peak_mib"] > 100  # torch alone is more than that
    assert memory["run_peak_mib"] is None or 0 < memory["run_peak_mib"] <= memory["peak_mib"]


def test_parity_failure_exits_non_zero(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDIFF_BENCH_CACHE", str(tiny_cache))
    monkeypatch.setitem(cli.PARITY_MAX_ABS, cli.torch.float32, -1.0)  # nothing can pass
    args = ["--preset", "tiny", "--steps", "1", "--runs", "1", "--no-memory", "--no-overhead", "--out", str(tmp_path)]
    assert cli.main(args) == 1


def test_cached_folder_is_reused(tiny_cache):
    folder = pipeline_folder(PRESETS["tiny"], tiny_cache)
    before = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert pipeline_folder(PRESETS["tiny"], tiny_cache) == folder
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


def test_tokenizer_is_local_and_fits_clip():
    tokenizer = build_tokenizer()
    ids = tokenizer("a red circle on a blue background", padding="max_length").input_ids
    assert tokenizer.model_max_length == 77 and len(ids) == 77
    assert max(ids) < PRESETS["tiny"].text_encoder["vocab_size"] <= PRESETS["sd15"].text_encoder["vocab_size"]


def test_roofline_counts_views_as_free_and_sdpa_as_one_kernel():
    import torch

    config = dict(PRESETS["tiny"].unet)
    inputs = dict(sample=torch.empty(2, 4, 8, 8, device="meta", dtype=roofline.DTYPE),
                  timestep=torch.empty((), device="meta"),
                  encoder_hidden_states=torch.empty(2, 77, 32, device="meta", dtype=roofline.DTYPE))
    fast = roofline.trace("fastdiff", "UNet2DConditionModel", config, inputs)
    eager = roofline.trace("diffusers", "UNet2DConditionModel", config, inputs)
    for kernels in (fast, eager):
        ops = {k.op for k in kernels}
        assert not ops & {"view", "t", "permute", "transpose", "expand", "unsqueeze", "_unsafe_view"}
    attention_layers = sum(k.op == "fastdiff::attention" for k in fast)
    assert attention_layers > 0 and sum(k.op == "sdpa (fused)" for k in eager) == attention_layers
    assert "bmm" not in {k.op for k in eager}  # attention never decomposed into matmuls
    # The same matmuls and convolutions: FLOPs agree to rounding.
    assert sum(k.flops for k in fast) == pytest.approx(sum(k.flops for k in eager), rel=1e-6)
