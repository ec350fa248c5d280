"""Procedural handwritten digits: stroke skeletons in the styles people write, drawn by a simulated pen.

MNIST's writers (American census staff and students, 1990s) wrote a narrow set of styles. A model trained
on them misreads digits written otherwise: a European 1 with a long flag, a crossed 7, an open-top 4, a 9
with a straight tail. This module draws digits in those styles *without* MNIST digits and *without fonts*
(an independent evaluation renders digits from installed handwriting fonts; nothing here may read a font
file, or that figure would stop being independent).

Each digit style is a skeleton of strokes through control points (`STYLES`: name -> (label, builder)).
A sample is made from its own seed:
  1. the label is `seed % 10` (any 10 consecutive seeds hold every digit once), the style is drawn among
     that digit's styles, the input mode among `modes` ("pen", "mouse", "finger");
  2. the skeleton's own proportions are drawn (flag length, loop sizes, how open a 4 is...), every control
     point is jittered, and the whole digit is slanted (shear), rotated and stretched (aspect ratio);
  3. each stroke is a smooth curve through its points (centripetal Catmull-Rom), kept sharp at corners;
  4. "pen": the dense curve is drawn anti-aliased (PIL at 4x, box-averaged down) with a width from a thin
     pencil to a thick marker, pencil lighter than ink; "mouse" and "finger" resample the curve at the
     pointer-event rate of a moving hand (sparse, jittery points joined by straight lines, thick strokes),
     like the drawing page's canvas;
  5. the digit is scaled so its longer side fills 55-80% of a `size` x `size` field, placed near the centre,
     and written dark on light (`polarity="dark"`) or light on dark (`"light"`).

Seed ranges, so that a training set can never contain a benchmark digit:
  TRAIN_SEEDS     = range(0, 10**6)               training and tuning may use these
  BENCHMARK_SEEDS = range(10**9, 10**9 + 10**6)   held out: benchmarks/style_shift.py uses the first N
`generate(n, seed)` makes the samples of seeds seed, seed + 1, ..., seed + n - 1, so a seed range *is* a set;
`check_disjoint` refuses overlapping ranges.

    from digitlab.pen import generate, BENCHMARK_SEED_BASE
    images, labels, styles = generate(5000, BENCHMARK_SEED_BASE)      # (5000, 64, 64) uint8, dark on light

Numpy and Pillow only (ImageDraw lines and ellipses, no text).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from digitlab.errors import DigitlabError

TRAIN_SEED_BASE = 0
TRAIN_SEEDS = range(TRAIN_SEED_BASE, 10**6)
BENCHMARK_SEED_BASE = 10**9
BENCHMARK_SEEDS = range(BENCHMARK_SEED_BASE, BENCHMARK_SEED_BASE + 10**6)
MODES = ("pen", "mouse", "finger")
MODE_WEIGHTS = {"pen": 0.7, "mouse": 0.15, "finger": 0.15}  # most pictures are of paper
SUPERSAMPLE = 4  # strokes are drawn at 4x and box-averaged: 16 levels of anti-aliasing

Rng = np.random.Generator
Segment = np.ndarray  # (k, 2) control points (x, y), y down; a digit is about 1 tall
Stroke = list  # list of Segments: smooth inside a segment, a corner where two segments meet
Skeleton = list  # list of Strokes: the pen is lifted between strokes


class PenError(DigitlabError):
    """Bad arguments to the digit generator."""


#### Skeleton helpers


def pts(*xy: float) -> Segment:
    """Control points from a flat list x0, y0, x1, y1, ..."""
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


def arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, step: float = 30.0) -> Segment:
    """Points on an ellipse from angle a0 to a1 in degrees (0 = right, 90 = down: screen coordinates)."""
    n = max(2, int(math.ceil(abs(a1 - a0) / step)) + 1)
    a = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def join(*parts: Segment) -> Segment:
    """One smooth segment through several point lists (a repeated junction point is dropped)."""
    out = [parts[0]]
    for p in parts[1:]:
        out.append(p[1:] if np.allclose(p[0], out[-1][-1]) else p)
    return np.concatenate(out)


#### Skeletons: builder(rng) -> strokes. x about 0..0.6, y 0 (top) .. 1 (bottom).


def zero_oval(r: Rng) -> Skeleton:
    """An oval started at the top and drawn anticlockwise, closing with a small overlap."""
    rx, over = r.uniform(0.2, 0.3), r.uniform(5, 35)
    return [[arc(0.3, 0.5, rx, 0.5, -90 + r.uniform(-10, 25), -450 - over)]]


def zero_open(r: Rng) -> Skeleton:
    """An oval started right of the top, whose end overshoots inside past the start (a loop at the top)."""
    rx = r.uniform(0.22, 0.3)
    start = -60 + r.uniform(-10, 10)
    end = join(arc(0.3, 0.5, rx, 0.5, start, start - 330), pts(0.3 + rx * 0.35, r.uniform(0.02, 0.1)))
    return [[end]]


def one_stick(r: Rng) -> Skeleton:
    """A plain vertical stick."""
    return [[pts(0.3, 0.0, 0.3 + r.uniform(-0.03, 0.03), 0.5, 0.3 + r.uniform(-0.05, 0.05), 1.0)]]


def _flag(r: Rng, long: bool) -> Segment:
    """The flag of a European 1: from low left up to the top of the stem, long and shallow or short."""
    length = r.uniform(0.28, 0.45) if long else r.uniform(0.15, 0.28)
    angle = math.radians(r.uniform(32, 60))  # shallower and longer, and a human reads a 7 too
    return pts(0.3 - length * math.cos(angle), length * math.sin(angle), 0.3, 0.0)


def one_flag(r: Rng) -> Skeleton:
    """European 1: a long straight flag, corner, stem; no base."""
    return [[_flag(r, True), pts(0.3, 0.0, 0.3 + r.uniform(-0.04, 0.04), 1.0)]]


def one_flag_serif(r: Rng) -> Skeleton:
    """European 1 with a flag and a base serif (a separate horizontal stroke)."""
    half = r.uniform(0.12, 0.22)
    return [[_flag(r, r.random() < 0.5), pts(0.3, 0.0, 0.3, 1.0)], [pts(0.3 - half, 1.0, 0.3 + half, 1.0)]]


def one_hook(r: Rng) -> Skeleton:
    """A 1 whose flag is a curved hook rising into the top of the stem."""
    dx, dy = r.uniform(0.12, 0.25), r.uniform(0.12, 0.3)
    hook = pts(0.3 - dx, dy, 0.3 - dx * 0.55, dy * 0.3, 0.3, 0.0)
    return [[hook, pts(0.3, 0.0, 0.3 + r.uniform(-0.04, 0.04), 1.0)]]


def _two_top(r: Rng) -> tuple[Segment, float]:
    """The round top of a 2, from its left tip over to where the diagonal begins; the top's radius."""
    rad = r.uniform(0.24, 0.3)
    return arc(0.3, rad + 0.0, rad, rad, r.uniform(-175, -150), r.uniform(10, 40)), rad


def two_plain(r: Rng) -> Skeleton:
    """A 2: round top, diagonal, corner, flat base."""
    top, rad = _two_top(r)
    base_left = r.uniform(0.0, 0.08)
    curve = join(top, pts(0.3 + rad * 0.3, 0.62, base_left, 1.0))
    return [[curve, pts(base_left, 1.0, r.uniform(0.52, 0.68), 1.0 + r.uniform(-0.04, 0.02))]]


def two_loop(r: Rng) -> Skeleton:
    """A 2 whose diagonal curls into a loop sitting on the base line, then runs right along the base."""
    top, rad = _two_top(r)
    loop_r = r.uniform(0.06, 0.11)
    cx, cy = 0.06 + loop_r, 1.0 - loop_r
    loop = arc(cx, cy, loop_r * r.uniform(0.9, 1.3), loop_r, 40, r.uniform(320, 345), step=40)
    base = pts(loop[-1][0], loop[-1][1], cx + loop_r * 1.6, 1.0, r.uniform(0.55, 0.66), 0.98)
    return [[join(top, pts(0.3 + rad * 0.3, 0.62), loop, base)]]


def three_round(r: Rng) -> Skeleton:
    """A 3 of two round bowls meeting in a point in the middle."""
    mid = r.uniform(0.44, 0.52)
    top = arc(0.3, mid / 2, 0.24, mid / 2, r.uniform(-170, -140), 90)
    top[-1] = (0.3 - r.uniform(0.0, 0.12), mid)
    bottom = arc(0.3, (1 + mid) / 2, r.uniform(0.26, 0.32), (1 - mid) / 2, -90, r.uniform(140, 165))
    bottom[0] = top[-1]
    return [[top, bottom]]


def three_flat(r: Rng) -> Skeleton:
    """A flat-topped 3: a bar, a diagonal down to the middle, then one round bowl."""
    mid = r.uniform(0.38, 0.46)
    bowl = arc(0.3, (1 + mid) / 2 + 0.02, r.uniform(0.26, 0.32), (1 - mid) / 2, -125, r.uniform(140, 165))
    return [[pts(0.03, 0.0, 0.58, 0.0), pts(0.58, 0.0, bowl[0][0], bowl[0][1]), bowl]]


def four_closed(r: Rng) -> Skeleton:
    """A closed 4: a diagonal from the top, the crossbar, then the stem from the top: a triangle."""
    bar, stem = r.uniform(0.6, 0.72), r.uniform(0.38, 0.48)
    first = [pts(stem, 0.0, 0.0, bar), pts(0.0, bar, r.uniform(0.58, 0.66), bar)]
    return [first, [pts(stem, 0.0, stem + r.uniform(-0.03, 0.03), 1.0)]]


def four_open(r: Rng) -> Skeleton:
    """An open-top 4: a near-vertical left stroke, the crossbar, a separate stem; the top stays open."""
    bar, stem = r.uniform(0.5, 0.66), r.uniform(0.42, 0.5)
    left = r.uniform(0.0, 0.12)
    top, right = (left + r.uniform(0.0, 0.1), 0.0), (r.uniform(0.6, 0.68), bar)
    if r.random() < 0.4:  # written fast: the left stroke bends round into the crossbar
        first = [pts(*top, left, bar - 0.12, left + 0.08, bar, *right)]
    else:
        first = [pts(*top, left, bar), pts(left, bar, *right)]
    return [first, [pts(stem, r.uniform(0.0, 0.15), stem + r.uniform(-0.03, 0.03), 1.0)]]


def _five_belly(r: Rng, top: float) -> Segment:
    """The bowl of a 5 from the bottom of its upright round to the bottom left."""
    cy = (1 + top) / 2 + 0.02
    return arc(0.28, cy, r.uniform(0.26, 0.32), (1 - top) / 2, r.uniform(-150, -130), r.uniform(135, 160))


def five_flag(r: Rng) -> Skeleton:
    """A 5 drawn in two strokes: upright and bowl, then the flag on top."""
    top = r.uniform(0.38, 0.48)
    belly = _five_belly(r, top)
    upright = pts(0.1, 0.0, belly[0][0], belly[0][1])
    return [[upright, belly], [pts(0.1, 0.0, r.uniform(0.5, 0.62), r.uniform(-0.04, 0.02))]]


def five_one_stroke(r: Rng) -> Skeleton:
    """A 5 in one stroke: the flag right to left, down the upright, round the bowl."""
    top = r.uniform(0.38, 0.48)
    belly = _five_belly(r, top)
    start = (r.uniform(0.5, 0.62), r.uniform(-0.04, 0.02))
    return [[pts(*start, 0.1, 0.0), pts(0.1, 0.0, belly[0][0], belly[0][1]), belly]]


def _six_loop(r: Rng) -> tuple[Segment, float, float]:
    """The closed bottom loop of a 6, entered on its left side going down; its centre height and radius."""
    ry = r.uniform(0.2, 0.28)
    cy = 1 - ry
    loop = arc(0.32, cy, r.uniform(0.22, 0.28), ry, 180, r.uniform(-170, -140))
    return loop, cy, ry


def six_curved(r: Rng) -> Skeleton:
    """A 6 whose stem is a curve from the top right sweeping into the loop."""
    loop, cy, _ = _six_loop(r)
    stem = pts(r.uniform(0.45, 0.6), r.uniform(0.0, 0.08), 0.3, 0.02, 0.14, 0.22, loop[0][0], cy)
    return [[join(stem, loop)]]


def six_straight(r: Rng) -> Skeleton:
    """A 6 whose stem is a nearly straight diagonal into the loop."""
    loop, cy, _ = _six_loop(r)
    stem = pts(r.uniform(0.38, 0.52), 0.0, (0.38 + loop[0][0]) / 2 - 0.02, cy / 2, loop[0][0], cy)
    return [[join(stem, loop)]]


def seven_plain(r: Rng) -> Skeleton:
    """A 7: the top bar, a corner, a long diagonal (slightly curved) to the bottom."""
    foot = r.uniform(0.12, 0.3)
    return [[pts(0.02, 0.02, 0.6, 0.0), pts(0.6, 0.0, 0.45 + r.uniform(-0.05, 0.05), 0.45, foot, 1.0)]]


def seven_crossed(r: Rng) -> Skeleton:
    """A European 7: the plain 7 with a bar across the middle of its diagonal."""
    strokes = seven_plain(r)
    diag = strokes[0][1]
    y = r.uniform(0.45, 0.58)
    x = float(np.interp(y, diag[:, 1], diag[:, 0]))
    half = r.uniform(0.12, 0.2)
    return strokes + [[pts(x - half, y, x + half * r.uniform(0.8, 1.2), y - 0.01)]]


def seven_hook(r: Rng) -> Skeleton:
    """A 7 that starts with a short downward tick at the left end of its bar."""
    tick = r.uniform(0.1, 0.22)
    strokes = seven_plain(r)
    return [[pts(0.0, tick, 0.02, 0.02)] + strokes[0]] + (seven_crossed(r)[1:] if r.random() < 0.3 else [])


def eight_loops(r: Rng) -> Skeleton:
    """An 8 drawn as two stacked loops (two strokes), the top one smaller."""
    mid = r.uniform(0.42, 0.5)
    top = arc(0.3, mid / 2, r.uniform(0.16, 0.24), mid / 2, 90, 90 - 360 - r.uniform(0, 20))
    bottom = arc(0.3, (1 + mid) / 2, r.uniform(0.22, 0.3), (1 - mid) / 2, -90, 270 + r.uniform(0, 20))
    return [[top], [bottom]]


def eight_figure(r: Rng) -> Skeleton:
    """An 8 in one stroke: from the top right round the top, across, round the bottom and back up."""
    wt, wb = r.uniform(0.18, 0.25), r.uniform(0.22, 0.3)
    mid = r.uniform(0.42, 0.5)
    t = np.linspace(-0.25, 2 * np.pi + r.uniform(0.0, 0.4), 24)
    half = np.where(np.cos(t) > 0, wt, wb)  # top lobe and bottom lobe widths
    x = 0.3 - half * np.sin(2 * t)
    y = np.where(np.cos(t) > 0, mid * (1 - np.cos(t)), mid - (1 - mid) * np.cos(t))
    return [[np.stack([x, y], axis=1)]]


def _nine_head(r: Rng) -> tuple[Segment, float, float]:
    """The head of a 9: a loop from its right side round anticlockwise back to the right; right x, radius."""
    ry = r.uniform(0.16, 0.28)  # small heads on long tails, and big ones
    rx = ry * r.uniform(0.85, 1.25)
    head = arc(0.3, ry, rx, ry, r.uniform(-10, 15), -360 + r.uniform(-5, 15))
    return head, 0.3 + rx, ry


def nine_curved(r: Rng) -> Skeleton:
    """A 9 whose tail comes down from the head and curls left at the bottom."""
    head, right, ry = _nine_head(r)
    tail = pts(right, ry, right - 0.02, 0.65, right - 0.12, 0.93, right - r.uniform(0.3, 0.45), 0.98)
    return [[join(head, tail)]]


def nine_straight(r: Rng) -> Skeleton:
    """A 9 with a straight tail: head, then a straight line down from its right side."""
    head, right, ry = _nine_head(r)
    return [[head, pts(right, ry, right + r.uniform(-0.08, 0.02), 1.0)]]


def nine_two_strokes(r: Rng) -> Skeleton:
    """A 9 as a closed circle plus a separate straight stem on its right, lifted pen."""
    head, right, ry = _nine_head(r)
    return [[head], [pts(right, r.uniform(0.0, ry), right + r.uniform(-0.05, 0.02), 1.0)]]


STYLES: dict[str, tuple[int, Callable[[Rng], Skeleton]]] = {
    "0_oval": (0, zero_oval), "0_open": (0, zero_open),
    "1_stick": (1, one_stick), "1_flag": (1, one_flag), "1_flag_serif": (1, one_flag_serif),
    "1_hook": (1, one_hook),
    "2_plain": (2, two_plain), "2_loop": (2, two_loop),
    "3_round": (3, three_round), "3_flat": (3, three_flat),
    "4_closed": (4, four_closed), "4_open": (4, four_open),
    "5_flag": (5, five_flag), "5_one_stroke": (5, five_one_stroke),
    "6_curved": (6, six_curved), "6_straight": (6, six_straight),
    "7_plain": (7, seven_plain), "7_crossed": (7, seven_crossed), "7_hook": (7, seven_hook),
    "8_loops": (8, eight_loops), "8_figure": (8, eight_figure),
    "9_curved": (9, nine_curved), "9_straight": (9, nine_straight), "9_two_strokes": (9, nine_two_strokes),
}
STYLES_BY_DIGIT: dict[int, list[str]] = {d: [s for s, (label, _) in STYLES.items() if label == d] for d in range(10)}
# The styles MNIST's writers mostly used: the shipped model should read these (tests/test_pen.py)
PLAIN_STYLES = ("0_oval", "1_stick", "2_plain", "3_round", "4_closed", "5_flag", "6_curved", "7_plain",
                "8_loops", "9_curved")


#### Curves


def catmull_rom(p: Segment, per_span: int = 12) -> np.ndarray:
    """A dense smooth curve through the points (centripetal Catmull-Rom: no cusps or self-loops)."""
    if len(p) < 3:
        t = np.linspace(0, 1, per_span + 1)[:, None]
        return p[0] + (p[-1] - p[0]) * t if len(p) == 2 else p.copy()
    ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    p0, p1, p2, p3 = ext[:-3], ext[1:-2], ext[2:-1], ext[3:]
    d01 = np.linalg.norm(p1 - p0, axis=1) ** 0.5 + 1e-9
    d12 = np.linalg.norm(p2 - p1, axis=1) ** 0.5 + 1e-9
    d23 = np.linalg.norm(p3 - p2, axis=1) ** 0.5 + 1e-9
    t0, t1 = np.zeros_like(d01), d01
    t2, t3 = t1 + d12, t1 + d12 + d23
    u = np.linspace(0, 1, per_span, endpoint=False)[None, :]
    t = (t1[:, None] + u * d12[:, None])[..., None]  # (spans, per_span, 1)
    t0, t1, t2, t3 = (a[:, None, None] for a in (t0, t1, t2, t3))
    p0, p1, p2, p3 = (a[:, None, :] for a in (p0, p1, p2, p3))
    a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
    a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
    a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
    b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
    b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
    c = (t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2
    return np.concatenate([c.reshape(-1, 2), p[-1:]])


def stroke_curve(stroke: Stroke) -> np.ndarray:
    """A stroke's dense path: each segment smooth, corners where segments meet."""
    parts = [catmull_rom(seg) for seg in stroke]
    return np.concatenate([parts[0]] + [c[1:] for c in parts[1:]])


def pointer_samples(curve: np.ndarray, spacing: float, jitter: float, r: Rng) -> np.ndarray:
    """Where pointer events land along a curve drawn by a moving hand: slow at the ends, fast between.

    Events come at a fixed rate, so the gap between them is the hand's speed: `spacing` on average,
    less near the stroke's ends (the hand accelerates and brakes). Each event lands `jitter` off the path.
    """
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    length = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(length[-1])
    n = max(2, int(round(total / spacing)) + 1)
    u = np.linspace(0, 1, n)
    s = (u - np.sin(2 * np.pi * u) / (2 * np.pi)) * total  # speed profile 1 - cos: slow, fast, slow
    s += r.normal(0, spacing * 0.15, n) * (np.arange(n) % (n - 1) != 0)  # uneven event timing
    s = np.clip(np.sort(s), 0, total)
    x = np.interp(s, length, curve[:, 0])
    y = np.interp(s, length, curve[:, 1])
    return np.stack([x, y], axis=1) + r.normal(0, jitter, (n, 2))


#### Sampling a digit


@dataclass(frozen=True)
class Sample:
    """One generated digit and how it was made."""

    image: np.ndarray  # (size, size) uint8
    label: int
    style: str
    mode: str
    seed: int


def pick(seed: int, styles: Sequence[str] | None, modes: Sequence[str]) -> tuple[int, str, str, Rng]:
    """The label, style and mode of a seed, and the generator that draws the rest of the sample."""
    r = np.random.default_rng(seed)
    if styles is None:
        label = seed % 10
        style = STYLES_BY_DIGIT[label][int(r.integers(len(STYLES_BY_DIGIT[label])))]
    else:
        style = styles[seed % len(styles)]
        label = STYLES[style][0]
        r.integers(1)  # keep the draws that follow in step with the unfiltered case
    weights = np.array([MODE_WEIGHTS[m] for m in modes])
    mode = modes[int(r.choice(len(modes), p=weights / weights.sum()))]
    return label, style, mode, r


def transform(skeleton: Skeleton, r: Rng) -> Skeleton:
    """Jitter every control point, then slant, stretch and rotate the whole digit around its middle."""
    sigma = r.uniform(0.004, 0.022)
    slant = r.uniform(-0.15, 0.45)  # right-leaning writing is the commonest
    aspect = math.exp(r.uniform(-0.3, 0.25))  # width / height
    angle = math.radians(r.uniform(-10, 10))
    c, s = math.cos(angle), math.sin(angle)
    out = []
    for stroke in skeleton:
        new = []
        for seg in stroke:
            p = seg + r.normal(0, sigma, seg.shape)
            x, y = (p[:, 0] - 0.3) * aspect + slant * (0.5 - p[:, 1]), p[:, 1] - 0.5
            new.append(np.stack([c * x - s * y, s * x + c * y], axis=1))
        # corners must stay joined: a segment starts where the previous one ended
        for a, b in zip(new, new[1:]):
            b[0] = a[-1]
        out.append(new)
    return out


def draw_paths(paths: list[np.ndarray], width: float, size: int, r: Rng, fill: float) -> np.ndarray:
    """Ink coverage in [0, 1] at size x size: the paths fitted into the field, drawn with round pen ends."""
    allp = np.concatenate(paths)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    extent = float(max(hi - lo)) or 1.0
    box = size * r.uniform(0.55, 0.8)
    scale = box / extent
    centre = size / 2 + r.normal(0, size * 0.03, 2)
    px_width = max(width * box, 0.7)  # width is relative to the digit's longer side
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(px_width * SUPERSAMPLE)))
    level = int(round(255 * fill))
    for path in paths:
        q = ((path - (lo + hi) / 2) * scale + centre) * SUPERSAMPLE
        flat = [float(v) for v in q.ravel()]
        if len(q) > 1:
            draw.line(flat, fill=level, width=w, joint="curve")
        # round caps (PIL lines end square); wide lines also get round joins, or their outline beads
        for x, y in (q if w >= 8 else q[[0, -1]]):
            draw.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=level)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255


def render(seed: int, size: int = 64, polarity: str = "dark", styles: Sequence[str] | None = None,
           modes: Sequence[str] = MODES) -> Sample:
    """The digit of one seed (see the module docstring for every step)."""
    label, style, mode, r = pick(seed, styles, modes)
    skeleton = transform(STYLES[style][1](r), r)
    curves = [stroke_curve(stroke) for stroke in skeleton]
    if mode == "pen":
        width = math.exp(r.uniform(math.log(0.03), math.log(0.16)))  # thin pencil .. thick marker
        fill = r.uniform(0.45, 0.8) if width < 0.06 and r.random() < 0.5 else r.uniform(0.85, 1.0)  # pencil grey
        paths = curves
    else:
        spacing, jitter, width = ((r.uniform(0.03, 0.1), r.uniform(0.002, 0.008), r.uniform(0.08, 0.13))
                                  if mode == "mouse" else
                                  (r.uniform(0.05, 0.14), r.uniform(0.005, 0.015), r.uniform(0.12, 0.2)))
        paths = [pointer_samples(c, spacing, jitter, r) for c in curves]
        fill = 1.0
    ink = draw_paths(paths, width, size, r, fill)
    if polarity == "light":
        image = ink * 255
    else:
        paper = r.uniform(225, 255)
        image = paper - ink * (paper - r.uniform(0, 40))
    return Sample(np.round(image).astype(np.uint8), label, style, mode, seed)


def check_args(n: int, size: int, polarity: str, styles: Sequence[str] | None, modes: Sequence[str]) -> None:
    """One clear error for each bad argument."""
    if n < 0:
        raise PenError(f"the number of digits must be 0 or more, not {n}")
    if size < 16:
        raise PenError(f"size must be at least 16 pixels, not {size}")
    if polarity not in ("dark", "light"):
        raise PenError(f"polarity must be 'dark' (dark ink on light paper) or 'light', not {polarity!r}")
    unknown = [s for s in (styles or ()) if s not in STYLES]
    if unknown or (styles is not None and not styles):
        raise PenError(f"unknown style(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(STYLES)}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise PenError(f"unknown mode(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(MODES)}")


def generate_samples(n: int, seed: int, size: int = 64, polarity: str = "dark",
                     styles: Sequence[str] | None = None, modes: Sequence[str] = MODES) -> list[Sample]:
    """The samples of seeds seed .. seed + n - 1, with their styles and modes."""
    check_args(n, size, polarity, styles, modes)
    styles = list(styles) if styles is not None else None
    return [render(seed + i, size, polarity, styles, tuple(modes)) for i in range(n)]


def generate(n: int, seed: int, size: int = 64, polarity: str = "dark", styles: Sequence[str] | None = None,
             modes: Sequence[str] = MODES) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n digits from seeds seed .. seed + n - 1: images (n, size, size) uint8, labels (n,) int64, style names.

    Labels are seed % 10, so n consecutive seeds are balanced to within one per class. `styles` restricts
    (and cycles through) the named styles; `modes` the input modes. polarity "dark": dark ink on light paper.
    """
    samples = generate_samples(n, seed, size, polarity, styles, modes)
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, size, size), np.uint8)
    return images, np.array([s.label for s in samples], dtype=np.int64), [s.style for s in samples]


#### Seed ranges


def seed_range(seed: int, n: int) -> range:
    """The seeds `generate(n, seed)` uses."""
    return range(seed, seed + n)


def overlap(a: range, b: range) -> range:
    """The seeds two ranges share (empty if none)."""
    return range(max(a.start, b.start), min(a.stop, b.stop))


def check_disjoint(a: range, b: range, what: str = "the two seed ranges") -> None:
    """Refuse two seed ranges that share a seed (a training set must never hold a benchmark digit)."""
    shared = overlap(a, b)
    if len(shared):
        raise PenError(f"{what} share {len(shared)} seeds ({shared.start}..{shared.stop - 1}): "
                       "they would hold the same digits")


def check_training_range(seed: int, n: int) -> range:
    """The seed range of a training set, refused unless it lies in TRAIN_SEEDS (so off the benchmark)."""
    seeds = seed_range(seed, n)
    check_disjoint(seeds, BENCHMARK_SEEDS, "the training seeds and the benchmark's")
    if len(seeds) and (seeds.start < TRAIN_SEEDS.start or seeds.stop > TRAIN_SEEDS.stop):
        raise PenError(f"training seeds must lie in [{TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop}), "
                       f"not [{seeds.start}, {seeds.stop})")
    return seeds
