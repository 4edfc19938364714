"""UNet1DModel (Dance Diffusion) against diffusers: loading, float32 parity, half precision, saving, errors.

Every parameter *and buffer* of the reference is perturbed with seeded noise before saving, so a
zero-initialised layer, a filter recomputed instead of loaded, or a skipped layer cannot hide.
"""

import copy

import pytest
import torch
from safetensors.torch import load_file

import fastdiff
from fastdiff import UnsupportedConfigError

diffusers = pytest.importorskip("diffusers")

# Dance-Diffusion-like (maestro layout, shrunk): NoSkip first block, cubic-resampling blocks, attention
# at >= 32 channels (heads = channels // 32, so 64 channels give 2 heads), time embedding appended
# as 16 channels. L = 256 survives the 5 halvings (4 down blocks + the mid block: 8 samples there).
DANCE = dict(
    block_out_channels=(8, 16, 32, 64, 64), in_channels=2, out_channels=2, extra_in_channels=16,
    time_embedding_type="fourier", time_embedding_dim=16, flip_sin_to_cos=True, use_timestep_embedding=False,
    sample_size=256, sample_rate=16000, mid_block_type="UNetMidBlock1D",
    down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D", "AttnDownBlock1D", "AttnDownBlock1D"),
    up_block_types=("AttnUpBlock1D", "AttnUpBlock1D", "UpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
)
# Diffusers' default blocks with the positional embedding (sin first, shifted frequencies), mono audio.
POSITIONAL = dict(
    block_out_channels=(32, 32, 64), in_channels=1, out_channels=1, extra_in_channels=32,
    time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1.0, sample_size=256,
)
CONFIGS = {"dance": DANCE, "positional": POSITIONAL}


def _max_rel_err(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(config name, diffusers reference, fastdiff model loaded from its save_pretrained folder, folder, input)."""
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    ref = diffusers.UNet1DModel(**cfg).eval()
    with torch.no_grad():
        for tensor in ref.state_dict().values():  # parameters and the resampling-filter buffers
            tensor.add_(0.1 * torch.randn_like(tensor))
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    ours = fastdiff.UNet1DModel.from_pretrained(folder)  # strict: any missing or extra key raises
    sample = torch.randn(2, cfg["in_channels"], cfg["sample_size"])
    return request.param, ref, ours, folder, sample


def _run(model, sample, t, **kw):
    with torch.no_grad():
        return model(sample, t, **kw)


def test_float32_matches_diffusers(pair):
    _, ref, ours, _, x = pair
    t = torch.tensor([0.3, 0.8])
    expected = _run(ref, x, t).sample
    got = _run(ours, x, t).sample
    assert got.shape == expected.shape == x.shape[:1] + (ref.config.out_channels,) + x.shape[2:]
    assert _max_rel_err(got, expected) <= 1e-5
    as_tuple = _run(ours, x, t, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], got)


@pytest.mark.parametrize("t", [torch.tensor(0.25), torch.tensor([0.6]), 7, 0.7], ids=["0dim", "len1", "int", "float"])
def test_timestep_forms_match_diffusers(pair, t):
    # a number becomes a long tensor in diffusers (0.7 -> 0); a single t broadcasts over the batch
    _, ref, ours, _, x = pair
    assert _max_rel_err(_run(ours, x, t).sample, _run(ref, x, t).sample) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32(pair, dtype):
    # Bound: 1e-2 of max |output|, or 1.5x diffusers' own error in this dtype if that is larger.
    # bfloat16 needs the second: ~36 resnets deep, its 8-bit mantissa puts diffusers itself at ~2.3%
    # (and rounding only the weights to bfloat16, computing in float32, already gives ~1.7%).
    _, ref, _, folder, x = pair
    t = torch.tensor([0.3, 0.8])  # float32 timesteps, as a scheduler hands them over
    expected = _run(ref, x, t).sample
    half = fastdiff.UNet1DModel.from_pretrained(folder, dtype=dtype)
    assert half.dtype == dtype
    got = _run(half, x.to(dtype), t).sample
    assert got.dtype == dtype and torch.isfinite(got).all()
    theirs = _run(copy.deepcopy(ref).to(dtype), x.to(dtype), t).sample
    assert _max_rel_err(got, expected) <= max(1e-2, 1.5 * _max_rel_err(theirs, expected))


def test_save_pretrained_loads_in_diffusers(pair, tmp_path):
    _, ref, ours, folder, x = pair
    ours.save_pretrained(tmp_path)
    theirs = load_file(folder / "diffusion_pytorch_model.safetensors")
    mine = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key
    back = diffusers.UNet1DModel.from_pretrained(tmp_path).eval()
    t = torch.tensor([0.3, 0.8])
    assert _max_rel_err(_run(back, x, t).sample, _run(ref, x, t).sample) <= 1e-5


@pytest.mark.parametrize(
    "override, error, words",
    [
        ({"down_block_types": ("DownBlock1DNoSkip", "DownBlockNope", "AttnDownBlock1D")}, UnsupportedConfigError, ["DownBlockNope", "down_block_types"]),
        ({"up_block_types": ("AttnUpBlock1D", "UpResnetBlock1D", "UpBlock1DNoSkip")}, UnsupportedConfigError, ["UpResnetBlock1D", "up_block_types"]),
        ({"mid_block_type": "ValueFunctionMidBlock1D"}, UnsupportedConfigError, ["ValueFunctionMidBlock1D", "mid_block_type"]),
        ({"use_timestep_embedding": True}, UnsupportedConfigError, ["use_timestep_embedding"]),
        ({"out_block_type": "OutConv1DBlock"}, UnsupportedConfigError, ["out_block_type", "OutConv1DBlock"]),
        ({"time_embedding_type": "learned"}, UnsupportedConfigError, ["time_embedding_type", "learned"]),
        ({"time_embedding_type": "fourier", "time_embedding_dim": 15}, ValueError, ["time_embedding_dim"]),
    ],
)
def test_unsupported_config_raises_clear_error(override, error, words):
    with pytest.raises(error) as info:
        fastdiff.UNet1DModel(**{**POSITIONAL, **override})
    for word in words:
        assert word in str(info.value)


def test_unsupported_config_in_a_folder_raises_on_load(tmp_path):
    # the same error through from_pretrained, from a config diffusers itself accepts
    diffusers.UNet1DModel(**{**POSITIONAL, "out_block_type": "OutConv1DBlock", "act_fn": "mish"}).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedConfigError, match="out_block_type"):
        fastdiff.UNet1DModel.from_pretrained(tmp_path)
