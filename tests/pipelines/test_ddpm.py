"""The vertical slice: a DDPM pipeline saved by diffusers runs in fastdiff with the same images, and back."""

import diffusers
import numpy as np
import pytest
import torch

import fastdiff


def _images(pipe, seed=0, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


@pytest.mark.parametrize("loader", [fastdiff.DDPMPipeline, fastdiff.DiffusionPipeline])
def test_same_images_as_diffusers(ddpm_folder, loader):
    ours = loader.from_pretrained(ddpm_folder)
    assert type(ours) is fastdiff.DDPMPipeline
    theirs = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    a, b = _images(ours, num_inference_steps=20, batch_size=2), _images(theirs, num_inference_steps=20, batch_size=2)
    assert a.shape == b.shape == (2, 8, 8, 3) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a - _images(ours, seed=1, num_inference_steps=20, batch_size=2)).max() > 1e-2, "seed must matter"


def test_generator_list(ddpm_folder):
    ours, theirs = fastdiff.DDPMPipeline.from_pretrained(ddpm_folder), diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    a = ours(batch_size=2, generator=gens(), num_inference_steps=25, output_type="np").images
    b = theirs(batch_size=2, generator=gens(), num_inference_steps=25, output_type="np").images
    assert np.abs(a - b).max() <= 1e-4


def test_output_types(ddpm_folder):
    pipe = fastdiff.DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.set_progress_bar_config(disable=True)
    pil = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (8, 8) and pil[0].mode == "RGB"
    tup = pipe(num_inference_steps=2, output_type="np", return_dict=False)
    assert isinstance(tup, tuple) and tup[0].shape == (1, 8, 8, 3)


def test_saved_by_fastdiff_loads_in_diffusers(ddpm_folder, tmp_path):
    ours = fastdiff.DDPMPipeline.from_pretrained(ddpm_folder)
    ours.save_pretrained(tmp_path)
    theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    a, b = _images(ours, num_inference_steps=10), _images(theirs, num_inference_steps=10)
    assert np.abs(a - b).max() <= 1e-4
    for name, tensor in ours.unet.state_dict().items():
        assert torch.equal(tensor, theirs.unet.state_dict()[name]), name
    reloaded = fastdiff.DDPMPipeline.from_pretrained(tmp_path)
    for name, tensor in ours.unet.state_dict().items():
        assert torch.equal(tensor, reloaded.unet.state_dict()[name]), name
    assert reloaded.scheduler.to_json_string() == ours.scheduler.to_json_string()


def test_bad_batch_size(ddpm_folder):
    pipe = fastdiff.DDPMPipeline.from_pretrained(ddpm_folder)
    with pytest.raises(ValueError, match="batch_size"):
        pipe(batch_size=0)
