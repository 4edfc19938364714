"""The synthetic shapes world: vocabulary, renderer (the dataset generator) and evaluator.

Every image shows one flat shape of one palette colour on a plain background of another palette
colour, captioned "a {color} {shape} on a {background} background". Generation and scoring share
the tables below, so the evaluator checks an image against the same ground truth that drew the
training data.

    >>> sample = dataset(1, seed=0)[0]
    >>> score(sample.image, sample.caption)["ok"]
    True

Seeded and download-free: `dataset(n, seed)` is a pure function of its arguments, and its first k
samples equal `dataset(k, seed)`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 64
# Shapes span 18-40 px so they stay recognisable after an 8x-downsampling VAE, and sit at least
# MARGIN px inside the frame so the border is pure background (the evaluator reads it there).
SIZE_RANGE = (18.0, 40.0)
MARGIN = 2.0
# Each pixel's coverage is the fraction of its 4x4 sub-pixel centres inside the shape: smooth
# (anti-aliased) edges, and exact geometry where PIL's ImageDraw would round vertices to pixels.
SUPERSAMPLE = 4

# Near the corners of the RGB cube, but not at them, so nothing saturates; purple sits on the
# red-blue face. The closest pair (purple, blue) is ~135 apart, so a colour shifted by up to ~65
# still snaps to the right name. No colour starts with a vowel, so the article is always "a".
PALETTE = {
    "red": (220, 30, 30),
    "yellow": (240, 220, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "purple": (160, 40, 230),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
COLORS = tuple(PALETTE)


# Each shape is a test on offsets (dx, dy) from its centre, y pointing down, for half size h:
# it fills the box [-h, h]^2 by a fraction the evaluator measures (pi/4, 1, 1/2).
def _circle(dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    return dx * dx + dy * dy <= h * h


def _square(dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    return (np.abs(dx) <= h) & (np.abs(dy) <= h)


def _triangle(dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    # Apex up at (0, -h), base from (-h, h) to (h, h): half-width grows from 0 to h downwards.
    return (dy <= h) & (2 * np.abs(dx) <= dy + h)


# A new shape also needs a rule in `classify_shape` that tells it apart from the others.
SHAPE_TABLE = {"circle": _circle, "square": _square, "triangle": _triangle}
SHAPES = tuple(SHAPE_TABLE)

# Every word a caption can contain, in a fixed order (the tokenizer builds its vocabulary from it).
VOCABULARY = ("a", "on", "background") + SHAPES + COLORS


@dataclass(frozen=True)
class Sample:
    shape: str
    color: str
    background: str
    caption: str
    image: Image.Image
    center: tuple[float, float]
    size: float


def caption(shape: str, color: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


_CAPTION_RE = re.compile(r"an? (\w+) (\w+) on an? (\w+) background")


def parse_caption(text: str) -> tuple[str, str, str] | None:
    """(shape, color, background) of a caption of this world, else None.

    Case, extra spaces and a trailing full stop are tolerated; a shape on its own colour is not a
    scene of this world (nothing to see), so it does not parse either.
    """
    words = " ".join(text.lower().split()).rstrip(".")
    match = _CAPTION_RE.fullmatch(words)
    if match is None:
        return None
    color, shape, background = match.groups()
    if shape not in SHAPE_TABLE or color not in PALETTE or background not in PALETTE or color == background:
        return None
    return shape, color, background


# ---------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------


def render(shape: str, color: str, background: str, center: tuple[float, float], size: float,
           image_size: int = IMAGE_SIZE) -> Image.Image:
    """One RGB image: `shape` of bounding-box side `size` px centred at `center` (x, y), in px.

    Pixel (i, j) covers [j, j+1) x [i, i+1), so a shape spans exactly [c - size/2, c + size/2].
    """
    k = SUPERSAMPLE
    sub = (np.arange(image_size * k) + 0.5) / k  # sub-pixel centres, in output pixels
    inside = SHAPE_TABLE[shape](sub[None, :] - center[0], sub[:, None] - center[1], size / 2)
    coverage = inside.reshape(image_size, k, image_size, k).mean(axis=(1, 3))[..., None]
    fg, bg = np.array(PALETTE[color], dtype=np.float64), np.array(PALETTE[background], dtype=np.float64)
    pixels = bg + coverage * (fg - bg)
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def _uniform(rng: random.Random, low: float, high: float) -> float:
    # Only rng.random() is guaranteed the same stream across Python versions; build on it alone.
    return low + (high - low) * rng.random()


def _pick(rng: random.Random, choices):
    return choices[int(rng.random() * len(choices))]


def random_sample(rng: random.Random, image_size: int = IMAGE_SIZE) -> Sample:
    shape, color = _pick(rng, SHAPES), _pick(rng, COLORS)
    background = _pick(rng, tuple(c for c in COLORS if c != color))
    size = _uniform(rng, *SIZE_RANGE)
    low, high = MARGIN + size / 2, image_size - MARGIN - size / 2
    center = (_uniform(rng, low, high), _uniform(rng, low, high))
    image = render(shape, color, background, center, size, image_size)
    return Sample(shape, color, background, caption(shape, color, background), image, center, size)


def dataset(n: int, seed: int, image_size: int = IMAGE_SIZE) -> list[Sample]:
    """`n` samples, a pure function of `seed`; shape, colours, position and size are uniform."""
    rng = random.Random(seed)
    return [random_sample(rng, image_size) for _ in range(n)]


def to_tensor(images):
    """float32 tensor (N, 3, H, W) in [-1, 1] from PIL images, the range the VAE trains on."""
    import torch  # only the training side needs torch

    array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ---------------------------------------------------------------------------------------------
# Evaluator
# ---------------------------------------------------------------------------------------------

_PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float32)
# Below this distance from the background nothing counts as a shape (blank or washed-out image).
# It is a third of the closest palette pair, far above pixel noise.
MIN_CONTRAST = 45.0
# A connected blob narrower or shorter than this is noise, not a shape (shapes start at 18 px).
MIN_SIDE = 6


def nearest_color(rgb) -> str:
    distances = np.linalg.norm(_PALETTE_RGB - np.asarray(rgb, dtype=np.float32), axis=-1)
    return COLORS[int(np.argmin(distances))]


def _border(pixels: np.ndarray, width: int = 2) -> np.ndarray:
    top, bottom = pixels[:width].reshape(-1, 3), pixels[-width:].reshape(-1, 3)
    left, right = pixels[width:-width, :width].reshape(-1, 3), pixels[width:-width, -width:].reshape(-1, 3)
    return np.concatenate([top, bottom, left, right])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected region of `mask`: strays and specks of a generated image drop out."""
    if not mask.any():
        return mask
    # Every pixel starts with its own label; repeatedly take the largest label among 4-neighbours
    # inside the mask, until each region carries one label (its largest index).
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), -1)
    while True:
        padded = np.pad(labels, 1, constant_values=-1)
        neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:], labels])
        spread = np.where(mask, neighbours.max(axis=0), -1)
        if np.array_equal(spread, labels):
            break
        labels = spread
    counts = np.bincount(labels[mask])
    return labels == int(np.argmax(counts))


def measure(image: Image.Image) -> dict:
    """The evaluator's raw readings: background and foreground colour, shape box, fill, top share.

    background = per-channel median of the 2-px border; foreground colour = median of the pixels
    farthest from it; shape mask = pixels at least halfway from background to foreground colour,
    largest connected region; fill = mask area / box area; top share = part of the mask area in
    the upper half of the box.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = np.median(_border(pixels), axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    reading = {"background_rgb": background, "color_rgb": None, "box": None, "fill": None, "top_share": None}
    # The smallest shape (an 18-px triangle) covers 4% of the image, so the top 1% is inside it.
    far = np.percentile(distance, 99)
    if far < MIN_CONTRAST:
        return reading
    foreground = np.median(pixels[distance >= 0.7 * far], axis=0)
    # Coverage of each pixel along the background -> foreground line (1 = pure foreground).
    step = foreground - background
    coverage = (pixels - background) @ step / float(step @ step)
    rows, cols = np.nonzero(_largest_component(coverage > 0.5))
    if len(rows) == 0:
        return reading
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    # Rows straddling the middle line (odd box height) count half.
    middle = (top + bottom) / 2
    upper = np.sum(rows + 1 <= middle) + 0.5 * np.sum((rows < middle) & (rows + 1 > middle))
    reading.update(color_rgb=foreground, box=(int(left), int(top), int(right), int(bottom)),
                   fill=len(rows) / float((bottom - top) * (right - left)), top_share=upper / len(rows))
    return reading


# Ideal values: top share 1/4 for the apex-up triangle, 1/2 for the symmetric shapes; fill pi/4
# for the circle, 1 for the square. Measured on renders (seeds 1 and 12345): small circles
# quantise up to fill 0.84; blur erodes square corners (fill down to 0.87 at blur radius 1.5, 0.77
# at 2) and the triangle's apex (top share up to 0.33 at radius 1.5, 0.39 at 2, while the
# symmetric shapes stay above 0.46). The cuts sit in those gaps, not at the ideal midpoints.
TRIANGLE_MAX_TOP_SHARE = 0.43
SQUARE_MIN_FILL = 0.86


def classify_shape(fill: float, top_share: float) -> str:
    if top_share < TRIANGLE_MAX_TOP_SHARE:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def analyse(image: Image.Image) -> tuple[str | None, str | None, str]:
    """(shape, color, background) read back from an image; shape and color are None if no shape."""
    reading = measure(image)
    background = nearest_color(reading["background_rgb"])
    if reading["fill"] is None:
        return None, None, background
    left, top, right, bottom = reading["box"]
    color = nearest_color(reading["color_rgb"])
    if min(right - left, bottom - top) < MIN_SIDE:
        return None, color, background
    return classify_shape(reading["fill"], reading["top_share"]), color, background


def score(image: Image.Image, text: str) -> dict:
    """Prompt adherence of one image: which of shape, colour and background match `text`."""
    truth = parse_caption(text)
    if truth is None:
        raise ValueError(f"not a caption of the shapes world: {text!r}")
    found = analyse(image)
    result = {name + "_ok": want == got for name, want, got in zip(("shape", "color", "background"), truth, found)}
    result["ok"] = all(result.values())
    return result
