"""StableDiffusionSafetyChecker: Diffusers' checkpoint layout, decision rule, black images, pipeline flags."""

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker as Reference
from transformers import CLIPConfig, CLIPImageProcessor

import fastdiff

from .conftest import tiny_sd_components


def tiny_checker(seed=0):
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
        projection_dim=8,
    )
    checker = Reference(config).eval()
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
    return checker


def _thresholds_near_median(checker, clip_input):
    """Set each threshold to the median similarity so that some images are flagged and some not."""
    with torch.no_grad():
        emb = checker.visual_projection(checker.vision_model(clip_input)[1])
        norm = torch.nn.functional.normalize
        checker.concept_embeds_weights.copy_((norm(emb) @ norm(checker.concept_embeds).t()).median(dim=0).values + 0.05)
        checker.special_care_embeds_weights.copy_((norm(emb) @ norm(checker.special_care_embeds).t()).median(dim=0).values)


def test_same_flags_and_black_images_as_diffusers(tmp_path):
    clip_input = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reference = tiny_checker()
    _thresholds_near_median(reference, clip_input)
    reference.save_pretrained(tmp_path)
    ours = fastdiff.StableDiffusionSafetyChecker.from_pretrained(tmp_path)
    images = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)
    theirs_images, theirs_flags = reference(clip_input=clip_input, images=images.copy())
    ours_images, ours_flags = ours(clip_input=clip_input, images=images.copy())
    assert ours_flags == theirs_flags and any(ours_flags) and not all(ours_flags)
    for i, flagged in enumerate(ours_flags):
        assert np.array_equal(ours_images[i], theirs_images[i])
        assert (ours_images[i] == 0).all() == flagged


@pytest.fixture(scope="module")
def checked_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd_checked")
    checker = tiny_checker()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # every image is flagged
    extractor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    components = {**tiny_sd_components(), "safety_checker": checker, "feature_extractor": extractor,
                  "requires_safety_checker": True}
    diffusers.StableDiffusionPipeline(**components).save_pretrained(folder)
    return folder


def test_pipeline_with_checker_matches_diffusers(checked_folder):
    ours = fastdiff.StableDiffusionPipeline.from_pretrained(checked_folder)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(checked_folder)
    assert ours.config["safety_checker"] == ("stable_diffusion", "StableDiffusionSafetyChecker")
    kwargs = dict(prompt=["a cat", "a dog"], num_inference_steps=2, output_type="np")
    a = ours(**kwargs, generator=torch.Generator().manual_seed(0))
    b = theirs(**kwargs, generator=torch.Generator().manual_seed(0))
    assert a.nsfw_content_detected == b.nsfw_content_detected == [True, True]
    assert (a.images == 0).all() and np.abs(a.images - b.images).max() <= 1e-4


def test_pipeline_without_checker_reports_none(sd_folder):
    pipe = fastdiff.StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    assert pipe.safety_checker is None
    assert pipe("a cat", num_inference_steps=1, output_type="np").nsfw_content_detected is None
