"""`A.from_config(B.config)` across compatible schedulers: the same config and trajectory as diffusers.

Each of the Karras-compatible σ/ᾱ schedulers in this set is built from the configs users actually
swap from (SD 1.5's PNDM, a DDPM, a DPM-Solver++ and an Euler config), because diffusers fills
missing keys with the *target's* defaults (`_use_default_values`), which decides e.g. the spacing.
"""

import itertools

import diffusers
import pytest

import fastdiff

from .harness import assert_same_loop

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SOURCES = [
    ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD)),
    ("DDPMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD)),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, **SD)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1, **SD)),
]
TARGETS = ["DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
           "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
           "KDPM2AncestralDiscreteScheduler"]


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("source,target", list(itertools.product(SOURCES, TARGETS)), ids=str)
def test_from_config_matches_diffusers(source, target):
    name, kwargs = source
    theirs_source = getattr(diffusers, name)(**kwargs)
    ours = getattr(fastdiff, target).from_config(theirs_source.config)
    theirs = getattr(diffusers, target).from_config(theirs_source.config)
    assert _public(ours.config) == _public(theirs.config)
    assert_same_loop(ours, theirs, 7)


def test_compatibles_are_listed_as_in_diffusers():
    for target in TARGETS:
        ours = {c.__name__ for c in getattr(fastdiff, target)().compatibles}
        theirs = {c.__name__ for c in getattr(diffusers, target)().compatibles}
        assert ours == theirs & {n for n in theirs if hasattr(fastdiff, n)}


KARRAS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
          "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
          "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
          "DEISMultistepScheduler", "UniPCMultistepScheduler"]


@pytest.mark.parametrize("b,a", list(itertools.product(KARRAS, KARRAS)))
def test_every_compatible_pair_converts_like_diffusers(b, a):
    """B is built from SD 1.5's scheduler config in each library; then A.from_config(B.config) in each."""
    name, kwargs = SOURCES[0]
    ours_b = getattr(fastdiff, b).from_config(getattr(fastdiff, name)(**kwargs).config)
    theirs_b = getattr(diffusers, b).from_config(getattr(diffusers, name)(**kwargs).config)
    assert _public(ours_b.config) == _public(theirs_b.config)
    ours = getattr(fastdiff, a).from_config(ours_b.config)
    theirs = getattr(diffusers, a).from_config(theirs_b.config)
    assert _public(ours.config) == _public(theirs.config), f"{b} -> {a}"
    assert_same_loop(ours, theirs, 7)
