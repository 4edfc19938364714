"""`A.from_config(B.config)` across compatible schedulers: the same config and trajectory as diffusers.

Each of the Karras-compatible σ/ᾱ schedulers in this set is built from the configs users actually
swap from (SD 1.5's PNDM, a DDPM, a DPM-Solver++ and an Euler config), because diffusers fills
missing keys with the *target's* defaults (`_use_default_values`), which decides e.g. the spacing.
"""

import itertools

import diffusers
import pytest

import fastdiff

from .harness import KARRAS, SD, assert_converts_like_diffusers, assert_same_loop, public

SOURCES = [
    ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD)),
    ("DDPMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD)),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, **SD)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1, **SD)),
]
TARGETS = ["DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
           "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
           "KDPM2AncestralDiscreteScheduler"]


@pytest.mark.parametrize("source,target", list(itertools.product(SOURCES, TARGETS)), ids=str)
def test_from_config_matches_diffusers(source, target):
    assert_converts_like_diffusers(target, *source)


@pytest.mark.parametrize("b,a", list(itertools.product(KARRAS, KARRAS)))
def test_every_compatible_pair_converts_like_diffusers(b, a):
    """B is built from SD 1.5's scheduler config in each library; then A.from_config(B.config) in each."""
    name, kwargs = SOURCES[0]
    ours_b = getattr(fastdiff, b).from_config(getattr(fastdiff, name)(**kwargs).config)
    theirs_b = getattr(diffusers, b).from_config(getattr(diffusers, name)(**kwargs).config)
    assert public(ours_b.config) == public(theirs_b.config)
    ours = getattr(fastdiff, a).from_config(ours_b.config)
    theirs = getattr(diffusers, a).from_config(theirs_b.config)
    assert public(ours.config) == public(theirs.config), f"{b} -> {a}"
    assert_same_loop(ours, theirs, 7)
