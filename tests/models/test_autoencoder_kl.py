"""AutoencoderKL against diffusers: encode/decode/forward parity, posterior sampling with the same generator,
tiling and slicing, save -> load both ways, low precision, refused keys."""

import diffusers
import pytest
import torch

import fastdiff
from fastdiff.models import UnsupportedConfigError

from .parity import assert_close, assert_low_precision, load_back_into_diffusers, saved_reference

TWO = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4, sample_size=16,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
CONFIGS = {
    "two_blocks": TWO,
    "four_blocks": dict(TWO, block_out_channels=(8, 16, 16, 32), layers_per_block=2, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "bare": dict(TWO, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False, act_fn="mish",
                 in_channels=1, out_channels=2, scaling_factor=0.5, force_upcast=False, shift_factor=0.1,
                 latents_mean=(0.1, 0.2, 0.3, 0.4), latents_std=(1.0, 2.0, 3.0, 4.0)),
}


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _images(config, batch=2, h=16, w=16, seed=1):
    return torch.randn(batch, config.get("in_channels", 3), h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    config = CONFIGS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    ref = saved_reference(diffusers.AutoencoderKL, config, folder)
    return config, ref, folder, fastdiff.AutoencoderKL.from_pretrained(folder)


def test_encode_decode_forward_match(saved):
    config, ref, folder, model = saved
    x = _images(config)
    with torch.no_grad():
        want, got = ref.encode(x).latent_dist, model.encode(x).latent_dist
        for name in ("mean", "logvar", "std", "var"):
            assert_close(getattr(got, name), getattr(want, name), what=name)
        assert_close(got.kl(), want.kl(), what="kl")
        other_want, other_got = ref.encode(x.flip(0)).latent_dist, model.encode(x.flip(0)).latent_dist
        assert_close(got.kl(other_got), want.kl(other_want), what="kl(other)")
        point = other_want.mean
        assert_close(got.nll(point), want.nll(point), what="nll")
        z = want.mode()
        assert_close(model.decode(z).sample, ref.decode(z).sample, what="decode")
        assert_close(model(x).sample, ref(x).sample, what="forward")
        assert torch.equal(model(x, return_dict=False)[0], model(x).sample)


def test_posterior_sample_uses_the_generator_as_diffusers(saved):
    config, ref, folder, model = saved
    x = _images(config)
    with torch.no_grad():
        want, got = ref.encode(x).latent_dist, model.encode(x).latent_dist
        for make in (lambda: torch.Generator().manual_seed(5),
                     lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]):
            assert_close(got.sample(make()), want.sample(make()), what="posterior sample")
        g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        assert_close(model(x, sample_posterior=True, generator=g1).sample,
                     ref(x, sample_posterior=True, generator=g2).sample, what="forward(sample_posterior)")


def test_save_roundtrip_into_diffusers(saved, tmp_path):
    config, ref, folder, model = saved
    back = load_back_into_diffusers(model, ref, tmp_path)
    for key in config:  # the keys pipelines read (scaling_factor, shift_factor, latents_mean/std, ...) survive
        assert _plain(back.config[key]) == _plain(config[key]), key
    x = _images(config)
    with torch.no_grad():
        assert_close(model(x).sample, back(x).sample)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(saved, dtype):
    config, ref, folder, _ = saved
    model = fastdiff.AutoencoderKL.from_pretrained(folder, dtype=dtype)
    ref_low = diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).eval()
    x = _images(config)
    with torch.no_grad():
        actual = model(x.to(dtype)).sample
        assert_low_precision(actual, ref(x).sample, reference=ref_low(x.to(dtype)).sample)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiling")
    ref = saved_reference(diffusers.AutoencoderKL, TWO, folder)
    return ref, fastdiff.AutoencoderKL.from_pretrained(folder)


@pytest.mark.parametrize("size", [(40, 28), (16, 16), (33, 17)])
def test_tiling_and_slicing_match_diffusers(pair, size):
    """16-pixel / 8-latent tiles with 25% overlap: several rows and columns of tiles, ragged edges."""
    ref, model = pair
    x = _images(TWO, batch=3, h=size[0], w=size[1])
    for m in (ref, model):
        m.enable_tiling()
        m.enable_slicing()
    try:
        assert model.tile_sample_min_size == ref.tile_sample_min_size == 16
        assert model.tile_latent_min_size == ref.tile_latent_min_size == 8
        with torch.no_grad():
            want, got = ref.encode(x).latent_dist.mean, model.encode(x).latent_dist.mean
            assert_close(got, want, what="tiled encode")
            assert_close(model.decode(want).sample, ref.decode(want).sample, what="tiled decode")
            assert_close(model.tiled_encode(x).latent_dist.mean, ref.tiled_encode(x).latent_dist.mean,
                         what="tiled_encode")
            assert_close(model.tiled_decode(want).sample, ref.tiled_decode(want).sample, what="tiled_decode")
    finally:
        for m in (ref, model):
            m.disable_tiling()
            m.disable_slicing()
    with torch.no_grad():
        untiled = model.decode(want).sample
    if max(size) > 16:  # tiles were really used: the blended result differs from one whole pass
        assert not torch.allclose(untiled, ref.tiled_decode(want).sample)


def test_slicing_alone_matches(pair):
    ref, model = pair
    x = _images(TWO, batch=3)
    with torch.no_grad():
        full = model(x).sample
        model.enable_slicing()
        try:
            sliced = model(x).sample
        finally:
            model.disable_slicing()
        assert_close(sliced, full, what="sliced forward")
        assert_close(sliced, ref(x).sample, what="sliced vs diffusers")


@pytest.mark.parametrize("key, value", [("down_block_types", ("AttnDownEncoderBlock2D",) * 2),
                                        ("up_block_types", ("AttnUpDecoderBlock2D",) * 2),
                                        ("act_fn", "tanh")])
def test_unsupported_values_name_the_key(key, value):
    with pytest.raises(UnsupportedConfigError, match=key if key != "act_fn" else "tanh"):
        fastdiff.AutoencoderKL(**dict(TWO, **{key: value}))
