"""Stable Diffusion's safety checker: CLIP image embeddings compared with fixed concept embeddings.

Loads Diffusers' checkpoint layout (`safety_checker/` with a CLIPConfig and weights vision_model.*,
visual_projection.weight, concept_embeds, special_care_embeds and their thresholds). Flagged images
come back black. The decision rule is Diffusers': per image, any special-care concept above its
threshold raises every concept score by 0.01; scores are rounded to 3 decimals; an image is flagged
when any concept score is above 0.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
from transformers import CLIPConfig, CLIPVisionModel, PreTrainedModel

logger = logging.getLogger(__name__)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(a) @ nn.functional.normalize(b).t()


class StableDiffusionSafetyChecker(PreTrainedModel):
    """Flags images whose CLIP embedding is too close to any of 17 concept embeddings."""

    config_class = CLIPConfig
    main_input_name = "clip_input"
    _no_split_modules = ["CLIPEncoderLayer"]
    _diffusers_library = "stable_diffusion"  # model_index.json names it ["stable_diffusion", ...]

    def __init__(self, config: CLIPConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.ones(17, config.projection_dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(3, config.projection_dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(17), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(3), requires_grad=False)
        self.post_init()

    def flags(self, clip_input: torch.Tensor) -> list[bool]:
        """One NSFW flag per image."""
        embeds = self.visual_projection(self.vision_model(clip_input)[1])
        special = (cosine_similarity(embeds, self.special_care_embeds) - self.special_care_embeds_weights).float()
        # any special-care hit lowers every concept threshold by 0.01
        adjustment = 0.01 * (torch.round(special, decimals=3) > 0).any(dim=1, keepdim=True).float()
        concept = cosine_similarity(embeds, self.concept_embeds).float() - self.concept_embeds_weights.float() + adjustment
        return (torch.round(concept, decimals=3) > 0).any(dim=1).tolist()

    @torch.no_grad()
    def forward(self, clip_input: torch.Tensor, images):
        has_nsfw = self.flags(clip_input)
        for i, flagged in enumerate(has_nsfw):
            if flagged:
                images[i] = torch.zeros_like(images[i]) if torch.is_tensor(images[i]) else np.zeros(images[i].shape)
        if any(has_nsfw):
            logger.warning("Potential NSFW content was detected in one or more images. A black image will be returned "
                           "instead. Try again with a different prompt and/or seed.")
        return images, has_nsfw
