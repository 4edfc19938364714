"""VaeImageProcessor against diffusers': inputs of every kind, resize modes, outputs, the mask path."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor as Reference

from fastdiff import VaeImageProcessor

RNG = np.random.default_rng(0)
PIL_RGB = PIL.Image.fromarray(RNG.integers(0, 255, (37, 53, 3), dtype=np.uint8))
NP_BATCH = RNG.random((2, 20, 28, 3)).astype(np.float32)
PT_BATCH = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0))

INPUTS = {
    "pil": PIL_RGB,
    "pil_list": [PIL_RGB, PIL_RGB.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)],
    "np_hwc": NP_BATCH[0],
    "np_batch": NP_BATCH,
    "np_list": [NP_BATCH[0], NP_BATCH[1]],
    "pt_chw": PT_BATCH[0],
    "pt_batch": PT_BATCH,
    "pt_list": [PT_BATCH[0], PT_BATCH[1]],
    "latents": torch.randn(1, 4, 5, 5),
}


@pytest.mark.parametrize("name", list(INPUTS))
@pytest.mark.parametrize("size", [(None, None), (16, 24)])
def test_preprocess_matches_diffusers(name, size):
    ours = VaeImageProcessor(vae_scale_factor=8).preprocess(INPUTS[name], *size)
    theirs = Reference(vae_scale_factor=8).preprocess(INPUTS[name], *size)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("mode", ["fill", "crop"])
def test_resize_modes_match_diffusers(mode):
    ours = VaeImageProcessor().preprocess(PIL_RGB, 32, 24, resize_mode=mode)
    theirs = Reference().preprocess(PIL_RGB, 32, 24, resize_mode=mode)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("output_type", ["pt", "np", "pil", "latent"])
def test_postprocess_matches_diffusers(output_type):
    x = torch.randn(2, 3, 8, 8) * 1.2
    flags = [True, False]
    ours = VaeImageProcessor().postprocess(x, output_type, do_denormalize=flags)
    theirs = Reference().postprocess(x, output_type, do_denormalize=flags)
    if output_type == "pil":
        assert [np.asarray(i).tolist() for i in ours] == [np.asarray(i).tolist() for i in theirs]
    else:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_mask_processor_matches_diffusers():
    mask = PIL.Image.fromarray((RNG.random((24, 32)) * 255).astype(np.uint8))
    kwargs = dict(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    for value in (mask, np.asarray(mask, dtype=np.float32)[None, ..., None] / 255.0):
        torch.testing.assert_close(VaeImageProcessor(**kwargs).preprocess(value, 16, 24),
                                   Reference(**kwargs).preprocess(value, 16, 24))


def test_crop_region_and_overlay_match_diffusers():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:18, 30:50] = 255
    mask = PIL.Image.fromarray(mask)
    for pad in (0, 4, 30):
        assert VaeImageProcessor.get_crop_region(mask, 16, 16, pad) == Reference.get_crop_region(mask, 16, 16, pad)
    crop = Reference.get_crop_region(mask, 16, 16, 4)
    init = PIL.Image.fromarray(RNG.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    generated = PIL.Image.fromarray(RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    ours = VaeImageProcessor().apply_overlay(mask, init, generated, crop)
    theirs = Reference().apply_overlay(mask, init, generated, crop)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_rgba_and_grayscale_become_rgb_not_latents():
    # the one deliberate difference: diffusers keeps 4 channels here, which img2img then takes for latents
    rgba = PIL.Image.new("RGBA", (16, 16), (10, 20, 30, 40))
    assert VaeImageProcessor().preprocess(rgba).shape == (1, 3, 16, 16)
    assert Reference().preprocess(rgba).shape == (1, 4, 16, 16)
    assert VaeImageProcessor().preprocess(PIL.Image.new("L", (16, 16))).shape == (1, 3, 16, 16)
    assert VaeImageProcessor().preprocess(np.zeros((16, 16, 1), np.float32)).shape == (1, 3, 16, 16)


def test_bad_inputs():
    with pytest.raises(ValueError, match="image must be a PIL image"):
        VaeImageProcessor().preprocess("image.png")
    with pytest.raises(ValueError, match="expects a torch tensor"):
        VaeImageProcessor().postprocess(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="can not both be set"):
        VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
