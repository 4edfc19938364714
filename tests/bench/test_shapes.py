"""The shapes world: captions, a deterministic dataset, and an evaluator that reads renders back.

The evaluator's thresholds were tuned on dataset seeds 1 and 12345; the accuracy tests use other
seeds, so they measure held-out accuracy.
"""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bench import shapes

N_ACCURACY = 300


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a generated image may look like: blurred, noisy, colour-shifted."""
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    pixels = np.asarray(image, dtype=np.float32)
    gain, offset = rng.uniform(0.9, 1.1, size=3), rng.uniform(-15, 15, size=3)
    pixels = pixels * gain + offset + rng.normal(0.0, rng.uniform(0, 12), size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def accuracy(samples, transform=lambda image: image):
    """Fraction of samples whose (shape, color, background) the evaluator recovers, and the misses."""
    misses = []
    for sample in samples:
        found = shapes.analyse(transform(sample.image))
        if found != (sample.shape, sample.color, sample.background):
            misses.append((sample.caption, round(sample.size, 1), found))
    return 1 - len(misses) / len(samples), misses


# --- vocabulary and captions -------------------------------------------------------------------


def test_palette_is_well_separated():
    # Colour is read as the nearest palette entry; a shift of half the closest gap is tolerated.
    rgb = np.array(list(shapes.PALETTE.values()), dtype=float)
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(gaps) > 120
    assert min(gaps) > 2 * shapes.MIN_CONTRAST


def test_captions_parse_back():
    for shape, color, background in itertools.product(shapes.SHAPES, shapes.COLORS, shapes.COLORS):
        text = shapes.caption(shape, color, background)
        expected = None if color == background else (shape, color, background)
        assert shapes.parse_caption(text) == expected, text
        assert set(text.split()) <= set(shapes.VOCABULARY)


@pytest.mark.parametrize("text", ["A  Red circle on a BLUE background.", " a red circle on an blue background "])
def test_parse_caption_tolerates_case_spacing_and_full_stop(text):
    assert shapes.parse_caption(text) == ("circle", "red", "blue")


@pytest.mark.parametrize("text", [
    "a red hexagon on a blue background",  # unknown shape
    "a pink circle on a blue background",  # unknown colour
    "a red circle on a red background",  # nothing to see
    "a red circle on a blue",
    "a circle on a blue background",
    "red circle blue background",
    "",
])
def test_parse_caption_rejects_other_text(text):
    assert shapes.parse_caption(text) is None


# --- dataset -----------------------------------------------------------------------------------


def _fingerprint(samples):
    return [(s.shape, s.color, s.background, s.caption, s.center, s.size, s.image.tobytes()) for s in samples]


def test_dataset_is_deterministic_per_seed():
    first = _fingerprint(shapes.dataset(40, seed=7))
    assert first == _fingerprint(shapes.dataset(40, seed=7))
    assert first[:10] == _fingerprint(shapes.dataset(10, seed=7))  # a prefix of the same stream
    assert first != _fingerprint(shapes.dataset(40, seed=8))


def test_dataset_samples_follow_the_rules():
    samples = shapes.dataset(N_ACCURACY, seed=3)
    low, high = shapes.SIZE_RANGE
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
        assert s.color != s.background and s.caption == shapes.caption(s.shape, s.color, s.background)
        assert low <= s.size <= high
        for c in s.center:  # fully inside the frame, MARGIN px clear of the border
            assert shapes.MARGIN + s.size / 2 <= c <= shapes.IMAGE_SIZE - shapes.MARGIN - s.size / 2
        border = shapes._border(np.asarray(s.image))
        assert (border == shapes.PALETTE[s.background]).all()
        # The shape's pure colour fills its interior (a triangle covers size**2 / 2, less the edges).
        assert (np.asarray(s.image) == shapes.PALETTE[s.color]).all(axis=-1).sum() >= s.size**2 / 4
    assert {s.shape for s in samples} == set(shapes.SHAPES)
    assert {s.color for s in samples} == {s.background for s in samples} == set(shapes.COLORS)


@pytest.mark.parametrize("shape, area", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_render_covers_the_exact_area_with_smooth_edges(shape, area):
    size = 25.5
    image = shapes.render(shape, "white", "black", (30.3, 33.6), size)
    white, black = shapes.PALETTE["white"][0], shapes.PALETTE["black"][0]
    coverage = (np.asarray(image, dtype=float)[..., 0] - black) / (white - black)
    assert coverage.sum() == pytest.approx(area * size**2, rel=0.01)
    # Anti-aliased: the shape sits off the pixel grid, so its edge pixels are partly covered.
    assert np.sum((coverage > 0.02) & (coverage < 0.98)) >= 2 * size


def test_to_tensor_is_in_minus_one_one():
    samples = shapes.dataset(3, seed=0)
    x = shapes.to_tensor([s.image for s in samples])
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    red, green, blue = shapes.PALETTE[samples[0].background]
    corner = x[0, :, 0, 0]
    assert torch.allclose(corner, torch.tensor([red, green, blue]) / 127.5 - 1)


# --- evaluator ---------------------------------------------------------------------------------


def test_evaluator_reads_clean_renders():
    acc, misses = accuracy(shapes.dataset(N_ACCURACY, seed=2024))
    assert acc >= 0.99, misses


def test_evaluator_reads_degraded_renders():
    rng = np.random.default_rng(0)
    acc, misses = accuracy(shapes.dataset(N_ACCURACY, seed=2025), lambda image: degrade(image, rng))
    assert acc >= 0.95, misses


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize("size", [18.0, 40.0])
def test_evaluator_reads_each_shape_at_the_size_extremes(shape, size):
    image = shapes.render(shape, "white", "black", (31.3, 33.7), size)
    assert shapes.analyse(image) == (shape, "white", "black")


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize("size", [18.0, 40.0])
def test_evaluator_reads_each_shape_blurred(shape, size):
    # Blur erodes square corners and the triangle's apex most for small shapes; radius 2 is past
    # `degrade`'s worst case. Sub-pixel offsets change which edge pixels pass the 0.5 cut.
    for offset in (0.0, 0.25, 0.5, 0.75):
        image = shapes.render(shape, "blue", "yellow", (30 + offset, 33 - offset), size)
        image = image.filter(ImageFilter.GaussianBlur(2.0))
        assert shapes.analyse(image) == (shape, "blue", "yellow"), offset


def test_blank_image_has_no_shape():
    image = Image.new("RGB", (64, 64), shapes.PALETTE["green"])
    assert shapes.analyse(image) == (None, None, "green")
    assert shapes.score(image, "a red circle on a green background") == {
        "shape_ok": False, "color_ok": False, "background_ok": True, "ok": False}


def test_a_speck_or_a_thin_line_is_not_a_shape():
    pixels = np.full((64, 64, 3), shapes.PALETTE["blue"], dtype=np.uint8)
    pixels[30:34, 40:44] = shapes.PALETTE["yellow"]  # under 1% of the image: background
    assert shapes.analyse(Image.fromarray(pixels)) == (None, None, "blue")
    pixels[10:13, 8:50] = shapes.PALETTE["yellow"]  # 3 px thin: coloured, but no shape
    assert shapes.analyse(Image.fromarray(pixels)) == (None, "yellow", "blue")


def test_largest_blob_wins_over_stray_pixels():
    image = shapes.render("triangle", "red", "white", (24.0, 30.0), 30.0)
    pixels = np.asarray(image).copy()
    pixels[55:58, 55:58] = shapes.PALETTE["red"]  # a stray speck far from the shape
    assert shapes.analyse(Image.fromarray(pixels)) == ("triangle", "red", "white")


def test_score_names_each_mismatch():
    image = shapes.render("square", "purple", "yellow", (32.0, 32.0), 30.0)
    assert shapes.score(image, "a purple square on a yellow background")["ok"]
    for caption, wrong in [("a purple circle on a yellow background", "shape_ok"),
                           ("a blue square on a yellow background", "color_ok"),
                           ("a purple square on a white background", "background_ok")]:
        result = shapes.score(image, caption)
        assert not result["ok"] and not result[wrong], caption
        assert all(ok for key, ok in result.items() if key not in (wrong, "ok")), caption


def test_score_rejects_a_caption_outside_the_world():
    image = shapes.render("circle", "red", "blue", (32.0, 32.0), 30.0)
    with pytest.raises(ValueError, match="not a caption"):
        shapes.score(image, "a photo of a cat")
