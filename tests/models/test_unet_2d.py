"""UNet2DModel against diffusers: random weights, save -> load both ways, float32 parity, low precision."""

import diffusers
import pytest
import torch

import fastdiff
from fastdiff.models import UnsupportedConfigError

from .parity import LOW_TOL, assert_close, cast_inputs, load_back_into_diffusers, saved_reference

BASE = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
    norm_num_groups=8, attention_head_dim=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)

CONFIGS = {
    # google/ddpm-cifar10-32 / ddpm-cat-256 layout, scaled down
    "ddpm": dict(BASE, block_out_channels=(16, 32, 32), layers_per_block=2,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), flip_sin_to_cos=False, freq_shift=1),
    "scale_shift_resnet_resample": dict(BASE, resnet_time_scale_shift="scale_shift", downsample_type="resnet",
                                        upsample_type="resnet", attention_head_dim=None, mid_block_scale_factor=1.414,
                                        center_input_sample=True, act_fn="mish"),
    "scale_shift_attn_groups": dict(BASE, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4),
    "class_labels": dict(BASE, num_class_embeds=5, add_attention=False, downsample_padding=0, norm_eps=1e-6),
    "class_timestep": dict(BASE, class_embed_type="timestep", time_embedding_dim=48),
    "no_mid_block": dict(BASE, mid_block_type=None),
    "fourier": dict(BASE, time_embedding_type="fourier"),
    "learned": dict(BASE, time_embedding_type="learned", num_train_timesteps=1000),
}


def _inputs(config, batch=2):
    g = torch.Generator().manual_seed(1)
    size = config["sample_size"]
    x = torch.randn(batch, config["in_channels"], size, size, generator=g)
    kind = config.get("time_embedding_type", "positional")
    t = torch.tensor([0.7, 3.2]) if kind == "fourier" else torch.tensor([10, 999])
    inputs = dict(sample=x, timestep=t)
    if config.get("num_class_embeds"):
        inputs["class_labels"] = torch.tensor([1, 4])
    if config.get("class_embed_type") == "timestep":
        inputs["class_labels"] = torch.tensor([3, 7])
    return inputs


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    config = CONFIGS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    ref = saved_reference(diffusers.UNet2DModel, config, folder)
    return config, ref, folder


def test_forward_matches_diffusers(saved):
    config, ref, folder = saved
    model = fastdiff.UNet2DModel.from_pretrained(folder)
    inputs = _inputs(config)
    with torch.no_grad():
        expected = ref(**inputs).sample
        actual = model(**inputs).sample
        tuple_out = model(**inputs, return_dict=False)
    assert_close(actual, expected)
    assert isinstance(tuple_out, tuple) and torch.equal(tuple_out[0], actual)


def test_save_roundtrip_into_diffusers(saved, tmp_path):
    config, ref, folder = saved
    model = fastdiff.UNet2DModel.from_pretrained(folder)
    back = load_back_into_diffusers(model, ref, tmp_path)
    inputs = _inputs(config)
    with torch.no_grad():
        assert_close(model(**inputs).sample, back(**inputs).sample)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(saved, dtype):
    config, ref, folder = saved
    model = fastdiff.UNet2DModel.from_pretrained(folder, dtype=dtype)
    inputs = _inputs(config)
    with torch.no_grad():
        expected = ref(**inputs).sample
        actual = model(**cast_inputs(inputs, dtype)).sample
    assert actual.dtype == dtype
    assert_close(actual.float(), expected, tol=LOW_TOL[dtype])


def test_python_and_0d_timesteps_broadcast(saved):
    config, ref, folder = saved
    if config.get("time_embedding_type") == "fourier":
        return
    model = fastdiff.UNet2DModel.from_pretrained(folder)
    inputs = _inputs(config)
    with torch.no_grad():
        for t in (17, torch.tensor(17)):
            inputs["timestep"] = t
            assert_close(model(**inputs).sample, ref(**inputs).sample)


@pytest.mark.parametrize("key, value", [
    ("time_embedding_type", "sinusoidal"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("resnet_time_scale_shift", "spatial"),
    ("class_embed_type", "projection"),
])
def test_unsupported_config_values_name_the_key(key, value):
    with pytest.raises(UnsupportedConfigError, match=key):
        fastdiff.UNet2DModel(**dict(BASE, **{key: value}))


@pytest.mark.parametrize("key, block", [("down_block_types", ("DownBlock2D", "SkipDownBlock2D")),
                                        ("up_block_types", ("KUpBlock2D", "UpBlock2D"))])
def test_unknown_block_type_names_the_key(key, block):
    with pytest.raises(UnsupportedConfigError, match=f"{key}.*{block[0] if 'K' in block[0] else block[1]}"):
        fastdiff.UNet2DModel(**dict(BASE, **{key: block}))
