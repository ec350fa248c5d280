"""Ink strength to soft ink in [0, 1]: the strokes kept, specks dropped, soft edges kept; no ink is BlankImageError."""
from __future__ import annotations

import math

import numpy as np

from digitlab.errors import ImageError
from digitlab.preprocess.constants import LABEL_GRID, MIN_CONTRAST, SPECK_FRACTION, TARGET_BOX
from digitlab.preprocess.morphology import _bbox, _components, _dilate, _grow1
from digitlab.preprocess.stats import _otsu, _percentile


class BlankImageError(ImageError):
    """The picture holds no ink: blank, uniform or noise only."""


def _main_cells(strong: np.ndarray) -> np.ndarray:
    """Coarse cells holding the main strokes: groups of strong ink that are not specks beside the largest."""
    h, w = strong.shape
    f = max(2, math.ceil(max(h, w) / LABEL_GRID))  # cells of f x f pixels; they bridge gaps of a pixel or two
    cells = strong
    if h % f or w % f:
        cells = np.zeros((h + -h % f, w + -w % f), bool)
        cells[:h, :w] = strong
    mass = cells.reshape(cells.shape[0] // f, f, cells.shape[1] // f, f).sum(axis=(1, 3))
    labels, count = _components(mass > 0)
    totals = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=count + 1)
    keep = totals >= SPECK_FRACTION * totals[:-1].max()
    keep[-1] = False  # the label of empty cells
    kept = _grow1(keep[labels])  # and their neighbours
    return kept.repeat(f, axis=0).repeat(f, axis=1)[:h, :w]


def _soft_ink(strength: np.ndarray, noise: float, smooth: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] on 0 (`noise`: the paper's sigma, `smooth`: the 3x3 mean of `strength`): specks removed,
    soft edges kept, strokes at 1."""
    peak = float(smooth.max())
    if peak < max(MIN_CONTRAST, 4 * noise):
        raise BlankImageError(f"no digit found: the image is blank or uniform (ink contrast {max(peak, 0):.3f}, "
                         f"noise {noise:.3f})")
    floor = max(3 * noise, 1 / 255)
    threshold = _otsu(smooth[smooth > max(floor, 0.05 * peak)])
    above = smooth > threshold
    cells = _main_cells(above)
    strong = above & cells
    top, bottom, left, right = _bbox(strong)
    reach = max(1, round(max(bottom - top, right - left) / TARGET_BOX))  # source pixels per MNIST pixel
    near = _dilate((strength > threshold / 2) & cells, reach)  # thin stroke ends are weak when smoothed
    level = max(float(_percentile(strength[strong], 90)), floor + 1e-3)  # the strokes' typical strength
    return np.clip((strength - floor) / (level - floor), 0, 1) * near
