"""DiffusionPipeline: loading model_index.json safely, variants, dtypes, overrides, config sync, to()."""

import json
import shutil

import pytest
import torch

import fastdiff
from fastdiff.configuration import ConfigError
from fastdiff.loading import WeightsError


@pytest.fixture
def folder(ddpm_folder, tmp_path):
    copy = tmp_path / "pipe"
    shutil.copytree(ddpm_folder, copy)
    return copy


def _edit_index(folder, **entries):
    path = folder / "model_index.json"
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data))


def test_components_config_and_device(folder):
    pipe = fastdiff.DiffusionPipeline.from_pretrained(folder)
    assert set(pipe.components) == {"unet", "scheduler"}
    assert pipe.config["unet"] == ("diffusers", "UNet2DModel")
    assert pipe.name_or_path == str(folder)
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert pipe.to(torch.float64) is pipe and pipe.unet.dtype == torch.float64
    with pytest.raises(ValueError, match="first corresponds to `device`"):
        pipe.to(torch.float16, "cpu")


def test_reassigning_a_component_updates_the_config(folder, tmp_path):
    pipe = fastdiff.DDPMPipeline.from_pretrained(folder)

    class Other(fastdiff.DDPMScheduler):
        pass

    pipe.scheduler = Other.from_config(pipe.scheduler.config)
    assert pipe.config["scheduler"][1] == "Other"
    pipe.scheduler = fastdiff.DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["scheduler"] == ["diffusers", "DDPMScheduler"]


def test_component_override_is_used_as_is(folder):
    scheduler = fastdiff.DDPMScheduler(num_train_timesteps=100)
    pipe = fastdiff.DDPMPipeline.from_pretrained(folder, scheduler=scheduler)
    assert pipe.scheduler is scheduler


def test_dtype_dict_and_alias(folder):
    pipe = fastdiff.DDPMPipeline.from_pretrained(folder, dtype={"unet": torch.float16, "default": torch.float32})
    assert pipe.unet.dtype == torch.float16
    with pytest.warns(FutureWarning, match="torch_dtype"):
        assert fastdiff.DDPMPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_variant_per_component(folder):
    pipe = fastdiff.DDPMPipeline.from_pretrained(folder)
    pipe.unet.to(torch.float16).save_pretrained(folder / "unet", variant="fp16")
    assert fastdiff.DDPMPipeline.from_pretrained(folder, variant="fp16").unet.dtype == torch.float16
    with pytest.raises(ValueError, match="variant=ema"):
        fastdiff.DDPMPipeline.from_pretrained(folder, variant="ema")


def test_missing_component_folder_is_an_error(folder):
    shutil.rmtree(folder / "unet")
    with pytest.raises(OSError, match="names the component 'unet'.*does not exist"):
        fastdiff.DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize(
    "entry,match",
    [
        ("UNet2DModel", "must be \\[library, ClassName\\]"),
        (["diffusers"], "must be \\[library, ClassName\\]"),
        (["diffusers", None], "must be \\[library, ClassName\\]"),
        (["os", "system"], "library 'os' is not one fastdiff loads"),
        (["diffusers", "__import__"], "does not implement diffusers.__import__"),
        (["diffusers", "os.path"], "does not implement"),
        (["transformers", "AutoModel"], "not one of the classes fastdiff loads"),
    ],
)
def test_malformed_model_index_entries_are_refused(folder, entry, match):
    _edit_index(folder, unet=entry)
    with pytest.raises((ValueError, ConfigError), match=match):
        fastdiff.DiffusionPipeline.from_pretrained(folder)


def test_unknown_pipeline_class_and_missing_required_component(folder):
    _edit_index(folder, _class_name="EvilPipeline")
    with pytest.raises(ValueError, match="'EvilPipeline', which fastdiff does not implement"):
        fastdiff.DiffusionPipeline.from_pretrained(folder)
    _edit_index(folder, _class_name="DDPMPipeline", unet=[None, None])
    with pytest.raises(ValueError, match="expected \\['scheduler', 'unet'\\]"):
        fastdiff.DDPMPipeline.from_pretrained(folder)


def test_remote_code_is_refused(folder):
    with pytest.raises(ValueError, match="never loads code"):
        fastdiff.DiffusionPipeline.from_pretrained(folder, custom_pipeline="evil.py")
    with pytest.raises(ValueError, match="never loads code"):
        fastdiff.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)


def test_pickle_components_need_consent(folder):
    pipe = fastdiff.DDPMPipeline.from_pretrained(folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    pipe.unet.save_pretrained(folder / "unet", safe_serialization=False)
    with pytest.raises(WeightsError, match="use_safetensors=False"):
        fastdiff.DDPMPipeline.from_pretrained(folder)
    assert fastdiff.DDPMPipeline.from_pretrained(folder, use_safetensors=False).unet is not None


def test_progress_bar_config_is_replaced(folder):
    pipe = fastdiff.DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True, desc="x")
    pipe.set_progress_bar_config(leave=False)
    assert pipe._progress_bar_config == {"leave": False}
    with pytest.raises(ValueError, match="Either `total` or `iterable`"):
        pipe.progress_bar()


def test_numpy_to_pil():
    import numpy as np

    images = fastdiff.DiffusionPipeline.numpy_to_pil(np.zeros((2, 4, 4, 3), dtype=np.float32))
    assert len(images) == 2 and images[0].size == (4, 4)
    assert fastdiff.DiffusionPipeline.numpy_to_pil(np.ones((4, 4, 1)))[0].mode == "L"
