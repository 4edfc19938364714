"""UNet2DConditionModel against diffusers: SD 1.x / 2.x-like, inpainting, per-block heads, x4 upscaler, LCM,
and the less common config keys; save -> load both ways; low precision; refused keys; no host reads."""

import diffusers
import pytest
import torch

import fastdiff
from fastdiff.models import UnsupportedConfigError
from fastdiff.models.unet_2d_condition import _UNIMPLEMENTED_DEFAULTS

from .parity import LOW_TOL, assert_close, cast_inputs, load_back_into_diffusers, saved_reference

SD15 = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=2,
    norm_num_groups=8, cross_attention_dim=24, attention_head_dim=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

CONFIGS = {
    "sd15": SD15,
    # SD 2.x: linear projections, upcast attention, per-block head counts
    "sd2": dict(SD15, use_linear_projection=True, upcast_attention=True, attention_head_dim=(2, 4, 4)),
    "inpaint": dict(SD15, in_channels=9, layers_per_block=1),
    # stable-diffusion-x4-upscaler: 7 input channels, noise level as class label, only-cross-attention blocks
    "x4_upscaler": dict(SD15, in_channels=7, num_class_embeds=10, use_linear_projection=True, layers_per_block=1,
                        only_cross_attention=(True, True, False),
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    # LCM: guidance embedding through time_cond_proj_dim
    "lcm": dict(SD15, time_cond_proj_dim=8, layers_per_block=1),
    "misc_a": dict(SD15, resnet_time_scale_shift="scale_shift", class_embed_type="timestep",
                   class_embeddings_concat=True, time_embedding_act_fn="silu", timestep_post_act="silu",
                   transformer_layers_per_block=(2, 1, 1), layers_per_block=(1, 2, 1), flip_sin_to_cos=False,
                   freq_shift=1, center_input_sample=True, mid_block_scale_factor=1.2, only_cross_attention=True),
    "misc_b": dict(SD15, act_fn="mish", mid_block_type="UNetMidBlock2D", conv_in_kernel=1, conv_out_kernel=5,
                   cross_attention_dim=(24, 24, 24), time_embedding_type="fourier", class_embed_type="identity",
                   time_embedding_dim=64, norm_eps=1e-6, downsample_padding=0,
                   down_block_types=("AttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")),
    "no_mid_block": dict(SD15, mid_block_type=None, layers_per_block=1),
}


def _inputs(config, batch=2, size=None):
    g = torch.Generator().manual_seed(1)
    h, w = size or (config["sample_size"],) * 2
    inputs = dict(sample=torch.randn(batch, config["in_channels"], h, w, generator=g),
                  timestep=torch.tensor([10, 999]) if config.get("time_embedding_type") != "fourier"
                  else torch.tensor([0.5, 2.0]),
                  encoder_hidden_states=torch.randn(batch, 7, 24, generator=g))
    if config.get("num_class_embeds"):
        inputs["class_labels"] = torch.tensor([3, 9])
    if config.get("class_embed_type") == "timestep":
        inputs["class_labels"] = torch.tensor([20, 500])
    if config.get("class_embed_type") == "identity":
        inputs["class_labels"] = torch.randn(batch, config["time_embedding_dim"], generator=g)
    if config.get("time_cond_proj_dim"):
        inputs["timestep_cond"] = torch.randn(batch, config["time_cond_proj_dim"], generator=g)
    return inputs


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    config = CONFIGS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    ref = saved_reference(diffusers.UNet2DConditionModel, config, folder)
    return config, ref, folder, fastdiff.UNet2DConditionModel.from_pretrained(folder)


def test_forward_matches_diffusers(saved):
    config, ref, folder, model = saved
    inputs = _inputs(config)
    with torch.no_grad():
        expected = ref(**inputs).sample
        assert_close(model(**inputs).sample, expected)
        assert torch.equal(model(**inputs, return_dict=False)[0], model(**inputs).sample)


def test_odd_sizes_and_scalar_timesteps(saved):
    """H, W not multiples of 2**upsamplers take the upsample-to-skip-size path; 0-dim / python timesteps broadcast."""
    config, ref, folder, model = saved
    inputs = _inputs(config, size=(14, 10))
    inputs["timestep"] = torch.tensor(0.75 if config.get("time_embedding_type") == "fourier" else 321)
    with torch.no_grad():
        assert_close(model(**inputs).sample, ref(**inputs).sample)
        inputs["timestep"] = inputs["timestep"].item()
        assert_close(model(**inputs).sample, ref(**inputs).sample)


def test_save_roundtrip_into_diffusers(saved, tmp_path):
    config, ref, folder, model = saved
    back = load_back_into_diffusers(model, ref, tmp_path)
    inputs = _inputs(config)
    with torch.no_grad():
        assert_close(model(**inputs).sample, back(**inputs).sample)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(saved, dtype):
    config, ref, folder, _ = saved
    model = fastdiff.UNet2DConditionModel.from_pretrained(folder, dtype=dtype)
    inputs = _inputs(config)
    with torch.no_grad():
        expected = ref(**inputs).sample
        actual = model(**cast_inputs(inputs, dtype)).sample
    assert actual.dtype == dtype
    assert_close(actual.float(), expected, tol=LOW_TOL[dtype])


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd15_extra")
    ref = saved_reference(diffusers.UNet2DConditionModel, SD15, folder)
    return ref, folder, fastdiff.UNet2DConditionModel.from_pretrained(folder)


def _residuals(model, inputs, seed=3):
    """ControlNet-shaped residuals: one per skip connection, and one for the mid block."""
    g = torch.Generator().manual_seed(seed)
    shapes, hooks = [], []
    with torch.no_grad():
        for block in model.down_blocks:
            hooks.append(block.register_forward_hook(lambda m, i, o: shapes.extend(t.shape for t in o[1])))
        model(**inputs)
    for h in hooks:
        h.remove()
    first = inputs["sample"].shape[:1] + (model.config.block_out_channels[0],) + inputs["sample"].shape[2:]
    down = [torch.randn(s, generator=g) for s in [first] + shapes]
    last = model.config.block_out_channels[-1]
    mid = torch.randn(inputs["sample"].shape[0], last, *shapes[-1][2:], generator=g)
    return down, mid


def test_controlnet_and_adapter_residuals(sd15):
    ref, folder, model = sd15
    inputs = _inputs(SD15)
    down, mid = _residuals(model, inputs)
    with torch.no_grad():
        kw = dict(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        assert_close(model(**inputs, **kw).sample, ref(**inputs, **kw).sample, what="controlnet")
        # T2I-Adapter: one residual per down block (its output resolution), the last also for the mid block
        outs = [down[2], down[5], down[7], down[8]]
        got = model(**inputs, down_intrablock_additional_residuals=list(outs)).sample
        want = ref(**inputs, down_intrablock_additional_residuals=list(outs)).sample
        assert_close(got, want, what="adapter")


def test_num_attention_heads_is_the_head_count(sd15, tmp_path):
    """Diffusers refuses num_attention_heads; fastdiff takes it as the head count it means."""
    ref, folder, model = sd15
    config = dict(model.config)
    config.update(num_attention_heads=config["attention_head_dim"], attention_head_dim=7)
    other = fastdiff.UNet2DConditionModel.from_config(config)
    other.load_state_dict(model.state_dict())
    inputs = _inputs(SD15)
    with torch.no_grad():
        assert torch.equal(other.eval()(**inputs).sample, model(**inputs).sample)


def test_lora_scale_is_accepted_and_has_no_effect(sd15):
    ref, folder, model = sd15
    inputs = _inputs(SD15)
    with torch.no_grad():
        assert torch.equal(model(**inputs, cross_attention_kwargs={"scale": 0.5}).sample, model(**inputs).sample)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attention_mask=torch.ones(2, 256)), "attention_mask"),
    (dict(encoder_attention_mask=torch.ones(2, 7)), "encoder_attention_mask"),
    (dict(cross_attention_kwargs={"gligen": {}}), "gligen"),
    (dict(added_cond_kwargs={"text_embeds": torch.ones(2, 4)}), "text_embeds"),
])
def test_unsupported_forward_arguments(sd15, kwargs, match):
    ref, folder, model = sd15
    with pytest.raises(NotImplementedError, match=match):
        model(**_inputs(SD15), **kwargs)


NON_DEFAULT = {
    "encoder_hid_dim": 32, "encoder_hid_dim_type": "text_proj", "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8, "addition_embed_type_num_heads": 8, "projection_class_embeddings_input_dim": 12,
    "dual_cross_attention": True, "attention_type": "gated", "reverse_transformer_layers_per_block": ((1,), (1,)),
    "resnet_skip_time_act": True, "resnet_out_scale_factor": 2.0, "cross_attention_norm": "group_norm",
    "mid_block_only_cross_attention": True,
}


@pytest.mark.parametrize("key", sorted(_UNIMPLEMENTED_DEFAULTS))
def test_unimplemented_keys_name_the_key(key):
    with pytest.raises(UnsupportedConfigError, match=key):
        fastdiff.UNet2DConditionModel(**dict(SD15, **{key: NON_DEFAULT[key]}))


@pytest.mark.parametrize("key, value", [
    ("class_embed_type", "projection"), ("time_embedding_type", "learned"), ("resnet_time_scale_shift", "spatial"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"), ("norm_num_groups", None),
    ("transformer_layers_per_block", ((1, 1), (1, 1), (1, 1))),
    ("down_block_types", ("SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")),
    ("up_block_types", ("UpBlock2D", "KCrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
])
def test_unsupported_values_name_the_key(key, value):
    with pytest.raises(UnsupportedConfigError, match=key):
        fastdiff.UNet2DConditionModel(**dict(SD15, **{key: value}))


def test_forward_reads_no_tensor_values_on_the_host():
    """The whole forward runs on the meta device: any .item() or python branch on a value would fail there,
    so the same call is safe to capture in a CUDA graph."""
    with torch.device("meta"):
        model = fastdiff.UNet2DConditionModel(**CONFIGS["misc_a"])
        inputs = {k: v.to("meta") for k, v in _inputs(CONFIGS["misc_a"]).items()}
        inputs["timestep"] = torch.tensor(5, device="meta")
        out = model(**inputs).sample
    assert out.shape == (2, 4, 16, 16) and out.is_meta
