"""The `fastdiff` command line: each flag reaches the pipeline, each bad argument is one clear error."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from fastdiff.__main__ import SCHEDULERS, main

from .pipelines.conftest import ddpm_folder, sd_folder  # noqa: F401  (session fixtures: tiny folders)


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_writes_pngs_with_settings(sd_folder, tmp_path, capsys):  # noqa: F811
    def argv(seed, out):
        return ["generate", "a red cat", "--model", str(sd_folder), "--negative-prompt", "a dog", "--steps", "3",
                "--scheduler", "euler_a", "--guidance", "5", "--seed", str(seed), "--num-images", "2",
                "--height", "16", "--width", "24", "--device", "cpu", "--dtype", "float32", "--backend", "torch",
                "--out", str(out)]

    code, out, err = run(argv(7, tmp_path), capsys)
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 2
    image = PIL.Image.open(paths[0])
    assert image.size == (24, 16)
    settings = json.loads(image.text["fastdiff"])
    assert image.text["prompt"] == "a red cat"
    assert settings == {"prompt": "a red cat", "negative_prompt": "a dog", "num_inference_steps": 3,
                        "guidance_scale": 5.0, "height": 16, "width": 24, "num_images_per_prompt": 2,
                        "model": str(sd_folder), "scheduler": "EulerAncestralDiscreteScheduler", "seed": 7,
                        "dtype": "float32", "backend": "torch"}
    # the same seed gives the same images; another seed does not
    run(argv(7, tmp_path / "again"), capsys)
    assert np.array_equal(np.asarray(image), np.asarray(PIL.Image.open(tmp_path / "again" / "000007-00.png")))
    run(argv(8, tmp_path / "other"), capsys)
    assert not np.array_equal(np.asarray(image), np.asarray(PIL.Image.open(tmp_path / "other" / "000008-00.png")))


@pytest.mark.parametrize("name", ["ddim", "dpm++2m_karras", "UniPCMultistepScheduler"])
def test_scheduler_names(sd_folder, tmp_path, capsys, name):  # noqa: F811
    code, out, err = run(["generate", "a cat", "--model", str(sd_folder), "--steps", "2", "--scheduler", name,
                          "--out", str(tmp_path)], capsys)
    assert code == 0, err
    expected = SCHEDULERS.get(name, (name,))[0]
    assert json.loads(PIL.Image.open(out.split()[0]).text["fastdiff"])["scheduler"] == expected


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "/no/such/folder"], "not a pipeline folder"),
        (["--model", "not-a-model"], "not a built-in model"),
        (["--scheduler", "warp-drive"], "--scheduler 'warp-drive' is not known"),
        (["--height", "20"], "--height 20: must be a multiple of 8"),
        (["--device", "cuda"], "no CUDA device"),
    ],
)
def test_errors_are_one_clear_line(sd_folder, tmp_path, capsys, extra, message):  # noqa: F811
    argv = ["generate", "a cat", "--model", str(sd_folder), "--steps", "1", "--out", str(tmp_path), *extra]
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--num-images", "x"], "--num-images must be an integer"),
        (["--width", "-8"], "--width must be at least 1"),
        (["--guidance", "nan"], "must be finite"),
        (["--dtype", "float8"], "invalid choice: 'float8'"),
        (["--backend", "cuda"], "invalid choice: 'cuda'"),
    ],
)
def test_argument_errors(capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main(["generate", "a cat", *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_not_a_text_to_image_model(ddpm_folder, tmp_path, capsys):  # noqa: F811
    code, _, err = run(["generate", "a cat", "--model", str(ddpm_folder), "--out", str(tmp_path)], capsys)
    assert code == 2 and "is not a text-to-image pipeline" in err


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fastdiff", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "shapes" in result.stdout
