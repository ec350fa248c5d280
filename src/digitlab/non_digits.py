"""Procedural non-digits drawn on the page's canvas: what the model should refuse rather than read as a digit.

Users draw letters, scribbles, shapes, a dot or a line and the model used to name a digit for each. This module
makes such drawings so that an abstention can be chosen and measured (digitlab.abstain), *without fonts*: an
independent evaluation renders handwriting fonts, so nothing here may read a font file.

Each sample is drawn as the drawing page draws it: pointer events along strokes on a 280x280 black canvas, a
round white pen 20 px wide, averaged in 10x10 blocks to the 28x28 the page sends, then canvas_to_mnist (what the
server does with it). Kinds (`KINDS`), one per seed in turn (seed % 5):
  letters  A E F H K M N R T W X Y and a e h k m n r w as pen strokes; left out because people write them like
           digits: O/o/D/U (0), I/l/i/j (1), Z/z (2), S/s (5), b/G (6), g/q/P (9), B (8), C/c (an open 0)
  scribbles  a wandering stroke through 6-14 random points, or a zigzag hatch
  shapes   star, plus-shaped cross, smiley, square, triangle, spiral (never a plain circle or oval: that is a 0)
  dots     a tap, two taps, or a mark shorter than the pen is wide a few times over
  lines    a line across the canvas within 35 degrees of horizontal, straight or wavy (near-vertical is a 1)

    from digitlab.non_digits import generate, VALIDATION_SEED_BASE
    images, extents, kinds = generate(1000, VALIDATION_SEED_BASE)   # (1000, 28, 28) uint8 as the model sees them

Seeds: VALIDATION_SEEDS (choose thresholds on these), TEST_SEEDS (report once) and TRAIN_SEEDS (for a training
that learns to refuse), disjoint.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from digitlab.pen import BENCHMARK_SEED_BASE, arc, pointer_samples, pts, stroke_curve, transform
from digitlab.preprocess import canvas_to_mnist_measured

KINDS = ("letters", "scribbles", "shapes", "dots", "lines")
VALIDATION_SEED_BASE = 0
TEST_SEED_BASE = 10**9
VALIDATION_SEEDS = range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + 10**6)
TEST_SEEDS = range(TEST_SEED_BASE, TEST_SEED_BASE + 10**6)
TRAIN_SEEDS = range(2 * 10**9, 2 * 10**9 + 10**6)  # for a training that sees non-digits: never validates or tests
CANVAS_SIDE = 280  # the page's canvas
PEN = 20  # the page's pen width in canvas pixels
SIDE = 28  # what the page sends: the canvas in 10x10 block averages

Rng = np.random.Generator
Skeleton = list  # strokes, each a list of segments of (k, 2) points in a box about 0.6 wide and 1 tall

#### Letters: skeletons in pen.py's coordinates (x 0..0.6, y 0..1 down)

LETTERS: dict[str, Callable[[], Skeleton]] = {
    "A": lambda: [[pts(0, 1, 0.3, 0, 0.6, 1)], [pts(0.12, 0.6, 0.48, 0.6)]],
    "E": lambda: [[pts(0.55, 0, 0, 0, 0, 1, 0.55, 1)], [pts(0, 0.5, 0.45, 0.5)]],
    "F": lambda: [[pts(0.55, 0, 0, 0, 0, 1)], [pts(0, 0.5, 0.45, 0.5)]],
    "H": lambda: [[pts(0, 0, 0, 1)], [pts(0.6, 0, 0.6, 1)], [pts(0, 0.5, 0.6, 0.5)]],
    "K": lambda: [[pts(0, 0, 0, 1)], [pts(0.55, 0, 0, 0.55, 0.6, 1)]],
    "M": lambda: [[pts(0, 1, 0, 0, 0.3, 0.6, 0.6, 0, 0.6, 1)]],
    "N": lambda: [[pts(0, 1, 0, 0, 0.6, 1, 0.6, 0)]],
    "R": lambda: [[pts(0, 1, 0, 0), arc(0.2, 0.25, 0.3, 0.25, -90, 90), pts(0.2, 0.5, 0, 0.5, 0.6, 1)]],
    "T": lambda: [[pts(-0.05, 0, 0.65, 0)], [pts(0.3, 0, 0.3, 1)]],
    "W": lambda: [[pts(-0.1, 0, 0.1, 1, 0.3, 0.35, 0.5, 1, 0.7, 0)]],
    "X": lambda: [[pts(0, 0, 0.6, 1)], [pts(0.6, 0, 0, 1)]],
    "Y": lambda: [[pts(0, 0, 0.3, 0.5, 0.6, 0)], [pts(0.3, 0.5, 0.3, 1)]],
    "a": lambda: [[arc(0.3, 0.7, 0.25, 0.3, -20, 340)], [pts(0.55, 0.4, 0.55, 1)]],
    "e": lambda: [[pts(0.05, 0.65, 0.55, 0.65), arc(0.3, 0.7, 0.26, 0.3, -5, -320)]],
    "h": lambda: [[pts(0, 0, 0, 1)], [pts(0, 0.6), arc(0.28, 0.62, 0.28, 0.22, 180, 360), pts(0.56, 0.62, 0.56, 1)]],
    "k": lambda: [[pts(0, 0, 0, 1)], [pts(0.45, 0.4, 0, 0.72, 0.5, 1)]],
    "m": lambda: [[pts(0, 1, 0, 0.45), arc(0.15, 0.55, 0.15, 0.12, 180, 360), pts(0.3, 0.55, 0.3, 1)],
                  [pts(0.3, 0.55), arc(0.45, 0.55, 0.15, 0.12, 180, 360), pts(0.6, 0.55, 0.6, 1)]],
    "n": lambda: [[pts(0, 1, 0, 0.45), arc(0.28, 0.6, 0.28, 0.18, 180, 360), pts(0.56, 0.6, 0.56, 1)]],
    "r": lambda: [[pts(0, 1, 0, 0.45), arc(0.25, 0.6, 0.25, 0.15, 180, 300)]],
    "w": lambda: [[pts(-0.1, 0.4, 0.08, 1, 0.3, 0.6, 0.52, 1, 0.7, 0.4)]],
}
LEFT_OUT = {"0": "O o D U C c", "1": "I l i j", "2": "Z z", "5": "S s", "6": "b G", "8": "B", "9": "g q P"}


def letter(r: Rng) -> Skeleton:
    """One letter of LETTERS, jittered, slanted and rotated as pen.py writes digits."""
    name = sorted(LETTERS)[int(r.integers(len(LETTERS)))]
    return transform(LETTERS[name](), r)


#### Scribbles, shapes, dots and lines: in a unit box centred on 0


def scribble(r: Rng) -> Skeleton:
    """A wandering stroke through random points, or a zigzag hatch back and forth."""
    if r.random() < 0.6:
        return [[r.uniform(-0.5, 0.5, (int(r.integers(6, 15)), 2))]]
    n, tilt = int(r.integers(5, 10)), r.uniform(-0.3, 0.3)
    x = np.where(np.arange(n) % 2 == 0, -0.5, 0.5) + r.normal(0, 0.05, n)
    y = np.linspace(-0.5, 0.5, n) + tilt * x
    return [[np.stack([x, y], axis=1)]]


def star(r: Rng) -> Skeleton:
    """A five-pointed star in one stroke (every second point of a pentagon)."""
    a = np.radians(-90 + r.uniform(-15, 15) + 144 * np.arange(6))
    return [[p] for p in (np.stack([0.5 * np.cos(a), 0.5 * np.sin(a)], axis=1),)]


def cross(r: Rng) -> Skeleton:
    """A plus sign: a bar across, then one down through its middle."""
    return [[pts(-0.5, 0, 0.5, 0)], [pts(0, -0.5, 0, 0.5)]]


def smiley(r: Rng) -> Skeleton:
    """A face: a round outline, two eyes (taps) and a smiling mouth."""
    eye = r.uniform(0.15, 0.2)
    return [[arc(0, 0, 0.5, 0.5, -90, 275, 15)], [pts(-eye, -0.15, -eye + 0.01, -0.14)],
            [pts(eye, -0.15, eye + 0.01, -0.14)], [arc(0, 0.02, 0.28, 0.25, 20, 160, 15)]]


def square(r: Rng) -> Skeleton:
    """A square (or oblong) in one stroke, its corners kept sharp."""
    h = r.uniform(0.3, 0.5)
    return [[pts(-0.5, -h, 0.5, -h), pts(0.5, -h, 0.5, h), pts(0.5, h, -0.5, h), pts(-0.5, h, -0.5, -h)]]


def triangle(r: Rng) -> Skeleton:
    """A triangle in one stroke."""
    return [[pts(0, -0.5, 0.5, 0.45), pts(0.5, 0.45, -0.5, 0.45), pts(-0.5, 0.45, 0, -0.5)]]


def spiral(r: Rng) -> Skeleton:
    """A spiral of two to three turns from its centre outwards."""
    t = np.linspace(0, 2 * np.pi * r.uniform(2, 3), 60)
    radius = 0.5 * t / t[-1]
    return [[np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)]]


SHAPES = {"star": star, "cross": cross, "smiley": smiley, "square": square, "triangle": triangle, "spiral": spiral}


def shape(r: Rng) -> Skeleton:
    """One of SHAPES, its points jittered a little."""
    skeleton = SHAPES[sorted(SHAPES)[int(r.integers(len(SHAPES)))]](r)
    return [[seg + r.normal(0, 0.015, seg.shape) for seg in stroke] for stroke in skeleton]


#### Drawing on the page's canvas


def canvas_strokes(skeleton: Skeleton, size: float, centre: np.ndarray) -> list[np.ndarray]:
    """Dense paths in canvas pixels: the skeleton scaled so its longer side is `size`, centred at `centre`."""
    curves = [stroke_curve(stroke) for stroke in skeleton]
    allp = np.concatenate(curves)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    scale = size / max(float(max(hi - lo)), 1e-6)
    return [(c - (lo + hi) / 2) * scale + centre for c in curves]


def paint(paths: list[np.ndarray]) -> np.ndarray:
    """The page's canvas after these pointer paths: white round pen PEN wide on black, (280, 280) uint8."""
    canvas = Image.new("L", (CANVAS_SIDE, CANVAS_SIDE), 0)
    draw = ImageDraw.Draw(canvas)
    for path in paths:
        if len(path) > 1:
            draw.line([float(v) for v in path.ravel()], fill=255, width=PEN, joint="curve")
        for x, y in path:
            draw.ellipse([x - PEN / 2, y - PEN / 2, x + PEN / 2, y + PEN / 2], fill=255)
    return np.asarray(canvas)


def page_pixels(canvas: np.ndarray) -> np.ndarray:
    """What the page sends: the canvas averaged in 10x10 blocks, rounded, (28, 28)."""
    f = CANVAS_SIDE // SIDE
    return np.round(canvas.reshape(SIDE, f, SIDE, f).mean(axis=(1, 3))).astype(np.uint8)


def pointer_paths(paths: list[np.ndarray], r: Rng) -> list[np.ndarray]:
    """Pointer events along each path, as a mouse or a finger moves (pen.pointer_samples in canvas pixels)."""
    spacing, jitter = r.uniform(6, 20), r.uniform(0.3, 2.0)
    return [pointer_samples(p, spacing, jitter, r) if len(p) > 1 else p for p in paths]


def drawn(skeleton: Skeleton, r: Rng, low: float = 0.4, high: float = 0.85) -> list[np.ndarray]:
    """A skeleton drawn `low`..`high` of the canvas large, near its centre, as pointer events."""
    size = CANVAS_SIDE * r.uniform(low, high)
    centre = CANVAS_SIDE / 2 + r.normal(0, CANVAS_SIDE * 0.06, 2)
    return pointer_paths(canvas_strokes(skeleton, size, centre), r)


def dots(r: Rng) -> list[np.ndarray]:
    """A tap, two taps, or a tiny mark (at most three pen widths long), anywhere on the canvas."""
    where = r.uniform(40, CANVAS_SIDE - 40, 2)
    choice = r.random()
    if choice < 0.4:
        return [where[None, :]]
    if choice < 0.6:
        return [where[None, :], (where + r.uniform(-30, 30, 2))[None, :]]
    angle, length = r.uniform(0, 2 * np.pi), r.uniform(4, 3 * PEN)
    end = where + length * np.array([math.cos(angle), math.sin(angle)])
    return [np.linspace(where, end, 4)]


def lines(r: Rng) -> list[np.ndarray]:
    """A line across the canvas within 35 degrees of horizontal, straight or wavy."""
    angle, length = math.radians(r.uniform(-35, 35)), CANVAS_SIDE * r.uniform(0.6, 0.95)
    t = np.linspace(-0.5, 0.5, 40)[:, None]
    wave = (r.uniform(0, 0.08) if r.random() < 0.4 else 0.0) * np.sin(2 * np.pi * r.uniform(1, 3) * t)
    direction, normal = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    centre = CANVAS_SIDE / 2 + r.normal(0, CANVAS_SIDE * 0.08, 2)
    path = centre + length * (t * direction + wave * normal)
    return pointer_paths([path], r)


def strokes_of(kind: str, r: Rng) -> list[np.ndarray]:
    """The pointer paths of one sample of `kind`."""
    if kind == "letters":
        return drawn(letter(r), r)
    if kind == "scribbles":
        return drawn(scribble(r), r)
    if kind == "shapes":
        return drawn(shape(r), r)
    if kind == "dots":
        return dots(r)
    return lines(r)


def kind_of(seed: int) -> str:
    """The kind a seed draws: KINDS in turn, so any len(KINDS) consecutive seeds hold each once."""
    return KINDS[seed % len(KINDS)]


def render_pixels(seed: int) -> np.ndarray:
    """The 28x28 pixels the page would send for this seed's drawing."""
    r = np.random.default_rng([seed, 7])
    return page_pixels(paint(strokes_of(kind_of(seed), r)))


def render(seed: int) -> tuple[np.ndarray, float]:
    """This seed's drawing as the model sees it (the page's pixels through canvas_to_mnist, (28, 28) uint8), and
    its ink's extent on the canvas (preprocess.ink_extent)."""
    return canvas_to_mnist_measured(render_pixels(seed))


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Samples of seeds seed .. seed + n - 1: images (n, 28, 28) uint8, ink extents (n,) and each one's kind."""
    if n < 0:
        raise ValueError(f"the number of drawings must be 0 or more, not {n}")
    done = [render(s) for s in range(seed, seed + n)]
    images = np.stack([image for image, _ in done]) if done else np.zeros((0, SIDE, SIDE), np.uint8)
    return images, np.array([e for _, e in done], np.float64), [kind_of(s) for s in range(seed, seed + n)]


def page_digit(seed: int) -> np.ndarray:
    """A real digit drawn on the page the same way (pen.py's styles, 40-85% of the canvas), (28, 28) pixels as sent:
    the digits a refusal must spare, in the page's format rather than MNIST's."""
    from digitlab.pen import STYLES, pick

    _, style, _, r = pick(seed, None, ("mouse",))
    return page_pixels(paint(drawn(transform(STYLES[style][1](r), r), r)))


def page_digits(n: int, seed: int = BENCHMARK_SEED_BASE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n page-drawn digits of pen seeds seed..: the 28x28 the model sees, ink extents, labels (seed % 10)."""
    done = [canvas_to_mnist_measured(page_digit(s)) for s in range(seed, seed + n)]
    return (np.stack([image for image, _ in done]), np.array([e for _, e in done], np.float64),
            np.arange(seed, seed + n) % 10)


def validation_set(n: int = 1000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The drawings abstention thresholds are chosen on."""
    return generate(n, VALIDATION_SEED_BASE)


def test_set(n: int = 1000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The drawings the chosen abstention is reported on, once."""
    return generate(n, TEST_SEED_BASE)
