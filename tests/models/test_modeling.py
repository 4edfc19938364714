"""ModelMixin: save/load round trips, variants, dtypes, shards, strict keys, refused pickle, atomic saves."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdiff.configuration import register_to_config
from fastdiff.loading import WeightsError
from fastdiff.models.modeling import LoadingError, ModelMixin


class Tiny(ModelMixin):
    @register_to_config
    def __init__(self, width: int = 8, depth: int = 2):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.register_buffer("scale", torch.ones(width))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x * self.scale


def _model(**kwargs):
    torch.manual_seed(0)
    m = Tiny(**kwargs)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bitwise(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = Tiny.from_pretrained(tmp_path)
    _same_weights(m, loaded)
    assert not loaded.training
    assert loaded.config.width == 8 and loaded.config._name_or_path == str(tmp_path)


def test_load_never_builds_real_weights_before_assigning(tmp_path, monkeypatch):
    _model().save_pretrained(tmp_path)
    seen = []
    original = Tiny.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.layers[0].weight.device.type)

    monkeypatch.setattr(Tiny, "__init__", spy)
    Tiny.from_pretrained(tmp_path)
    assert seen == ["meta"]


def test_subfolder_dtype_and_variant(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "unet")
    m.to(torch.float16).save_pretrained(tmp_path / "unet", variant="fp16")
    names = sorted(os.listdir(tmp_path / "unet"))
    assert names == ["config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    half = Tiny.from_pretrained(tmp_path, subfolder="unet", variant="fp16")
    assert half.dtype == torch.float16
    cast = Tiny.from_pretrained(tmp_path, subfolder="unet", dtype=torch.bfloat16)
    assert cast.dtype == torch.bfloat16 and cast.scale.dtype == torch.bfloat16
    with pytest.warns(FutureWarning, match="torch_dtype"):
        assert Tiny.from_pretrained(tmp_path / "unet", torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="not both"):
        Tiny.from_pretrained(tmp_path / "unet", dtype=torch.float16, torch_dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        Tiny.from_pretrained(tmp_path / "unet", dtype="fp8")
    with pytest.raises(WeightsError, match="variant='ema'"):
        Tiny.from_pretrained(tmp_path / "unet", variant="ema")


def test_sharded_save_and_load(tmp_path):
    m = _model(width=32, depth=4)
    m.save_pretrained(tmp_path, max_shard_size="5KB")
    shards = sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors"))
    assert len(shards) > 1 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(m.state_dict())
    _same_weights(m, Tiny.from_pretrained(tmp_path))
    # a later unsharded save replaces the shards instead of leaving them behind
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_sharded_variant_names(tmp_path):
    m = _model(width=32, depth=4)
    m.save_pretrained(tmp_path, max_shard_size="5KB", variant="fp16")
    names = os.listdir(tmp_path)
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in names
    assert any(n.startswith("diffusion_pytorch_model.fp16-00001-of-") for n in names)
    _same_weights(m, Tiny.from_pretrained(tmp_path, variant="fp16"))


def test_shard_index_may_not_point_outside_the_folder(tmp_path):
    m = _model(width=32)
    m.save_pretrained(tmp_path / "m", max_shard_size="5KB")
    index = tmp_path / "m" / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["scale"] = "../outside.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a plain file or folder name"):
        Tiny.from_pretrained(tmp_path / "m")


def _rewrite(path, edit):
    weights = path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    _model().save_pretrained(tmp_path)

    def edit(state):
        del state["layers.0.bias"]
        state["layers.9.weight"] = torch.zeros(1)
        state["layers.1.weight"] = torch.zeros(3, 3)

    _rewrite(tmp_path, edit)
    with pytest.raises(LoadingError) as info:
        Tiny.from_pretrained(tmp_path)
    message = str(info.value)
    assert "missing keys (1): layers.0.bias" in message
    assert "unexpected keys (1): layers.9.weight" in message
    assert "layers.1.weight: checkpoint (3, 3) vs model (8, 8)" in message


def test_pickle_is_refused_unless_asked(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path, safe_serialization=False)
    assert "diffusion_pytorch_model.bin" in os.listdir(tmp_path)
    with pytest.raises(WeightsError, match="use_safetensors=False"):
        Tiny.from_pretrained(tmp_path)
    _same_weights(m, Tiny.from_pretrained(tmp_path, use_safetensors=False))


def test_pickle_with_code_is_refused_even_when_asked(tmp_path):
    _model().save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="weights_only=True"):
        Tiny.from_pretrained(tmp_path, use_safetensors=False)


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    _model().save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        Tiny.from_pretrained(tmp_path)


def test_failed_save_leaves_the_destination_as_it_was(tmp_path, monkeypatch):
    m = _model()
    m.save_pretrained(tmp_path / "out")
    before = {p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _model(width=8, depth=3).save_pretrained(tmp_path / "out")
    after = {p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["out"], "no staging folder left behind"


def test_config_override_at_load(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(LoadingError, match="missing keys"):
        Tiny.from_pretrained(tmp_path, depth=3)
