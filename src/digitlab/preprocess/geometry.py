"""MNIST's geometry: the ink's box resized to 20 pixels, then placed in 28x28 with its centre of mass centred."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from digitlab.preprocess.constants import BOX_LEVEL, CANVAS, CENTER, MARGIN, TARGET_BOX
from digitlab.preprocess.morphology import _bbox


def _window(a: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """The region [top:bottom, left:right] of `a`, with zeros where it reaches outside."""
    out = np.zeros((bottom - top, right - left), dtype=a.dtype)
    y0, y1, x0, x1 = max(top, 0), min(bottom, a.shape[0]), max(left, 0), min(right, a.shape[1])
    if y0 < y1 and x0 < x1:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
    return out


def _scale_to_box(soft: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Resample so the ink's box has its longer side TARGET_BOX pixels; also returns where the box is."""
    top, bottom, left, right = _bbox(soft >= BOX_LEVEL)
    scale = TARGET_BOX / max(bottom - top, right - left)
    out_h = math.ceil((bottom - top) * scale) + 2 * MARGIN
    out_w = math.ceil((right - left) * scale) + 2 * MARGIN
    src_top = (top + bottom - out_h / scale) / 2  # the source region, centred on the box
    src_left = (left + right - out_w / scale) / 2
    y0, x0 = math.floor(src_top), math.floor(src_left)
    region = _window(soft.astype(np.float32, copy=False), y0, math.ceil(src_top + out_h / scale) + 1,
                     x0, math.ceil(src_left + out_w / scale) + 1)
    box = (src_left - x0, src_top - y0, src_left - x0 + out_w / scale, src_top - y0 + out_h / scale)
    small = np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.LANCZOS, box=box))
    inner_top, inner_left = (out_h - (bottom - top) * scale) / 2, (out_w - (right - left) * scale) / 2
    inner = (inner_top, out_h - inner_top, inner_left, out_w - inner_left)
    return np.clip(small, 0, None), inner


def _center(small: np.ndarray, inner: tuple[float, float, float, float]) -> np.ndarray:
    """Paste into the 28x28 field with the centre of mass on CENTER (whole-pixel shift, box kept inside)."""
    mass = small.sum()
    cy = small.sum(axis=1) @ np.arange(small.shape[0]) / mass
    cx = small.sum(axis=0) @ np.arange(small.shape[1]) / mass
    top, bottom, left, right = inner
    dy = int(np.clip(round(CENTER - cy), math.ceil(-top - 1e-6), math.floor(CANVAS - bottom + 1e-6)))
    dx = int(np.clip(round(CENTER - cx), math.ceil(-left - 1e-6), math.floor(CANVAS - right + 1e-6)))
    return _window(small, -dy, CANVAS - dy, -dx, CANVAS - dx)
