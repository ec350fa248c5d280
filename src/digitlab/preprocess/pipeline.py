"""The whole pipeline, in order, and its two entry points: to_mnist (any picture) and canvas_to_mnist."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from digitlab.errors import ImageError
from digitlab.preprocess.constants import BOX_LEVEL, MAX_IMAGE_SIDE, WORK_SIDE
from digitlab.preprocess.geometry import _center, _scale_to_box
from digitlab.preprocess.morphology import _bbox
from digitlab.preprocess.polarity import _ink_strength
from digitlab.preprocess.reading import (ImageSource, _array_pixels, _check_size, _image_pixels, _is_tensor,
                                         _resolve_alpha, _shrink, load_image)
from digitlab.preprocess.strip import _is_strip, _stroke_strength
from digitlab.preprocess.strokes import BlankImageError, _soft_ink

if TYPE_CHECKING:
    import torch


def _read_ink(pixels: np.ndarray, ink: str) -> np.ndarray:
    """The soft ink (_soft_ink) under the first reading of the paper that finds any; BlankImageError if none does.

    1. the paper at the picture's edges (most pictures: a margin, or a close crop that the ink touches here
       and there); 2. for a strip, a stroke along it (a thin 1 cut to its ink: no paper anywhere, and its
       majority is ink); 3. the paper as the picture's majority (a close crop whose strokes run along its
       edges). A picture that one reading finds ink in is never read by the next, so the later ones change
       nothing that the first could read.
    """
    readings = [lambda: _ink_strength(pixels, ink)]
    if _is_strip(pixels.shape):
        readings.append(lambda: _stroke_strength(pixels, ink))
    readings.append(lambda: _ink_strength(pixels, ink, from_edges=False))
    for i, reading in enumerate(readings):
        try:
            return _soft_ink(*reading())
        except BlankImageError:
            if i == len(readings) - 1:
                raise
    raise AssertionError("unreachable")


def ink_extent(soft: np.ndarray) -> float:
    """The ink box's longer side as a share of the picture's longer side: a dot or a tiny mark is a small share."""
    top, bottom, left, right = _bbox(soft >= BOX_LEVEL)
    return max(bottom - top, right - left) / max(soft.shape)


def _mnist_from_pixels(pixels: np.ndarray, ink: str) -> np.ndarray:
    """The whole pipeline on float (H, W, C) pixels in [0, 1]."""
    return _measured_from_pixels(pixels, ink)[0]


def _measured_from_pixels(pixels: np.ndarray, ink: str) -> tuple[np.ndarray, float]:
    """The whole pipeline, and the ink's extent in the picture before it was enlarged (ink_extent)."""
    if ink not in ("auto", "bright", "dark"):
        raise ImageError(f"ink must be 'auto', 'bright' or 'dark', not {ink!r}")
    pixels, ink = _resolve_alpha(pixels, ink)
    if pixels.shape[2] == 3 and np.ptp(pixels, axis=2).max() < 2 / 255:  # grey stored as RGB
        pixels = pixels.mean(axis=2, keepdims=True)
    soft = _read_ink(_shrink(pixels, WORK_SIDE), ink)
    field = _center(*_scale_to_box(soft))
    image = np.round(field / field.max() * 255).astype(np.uint8)  # thin strokes still peak at 255, like MNIST
    return image, ink_extent(soft)


def to_mnist(image: ImageSource | np.ndarray | torch.Tensor, ink: str = "auto",
             max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:  # ink: "auto" (detect), "bright" or "dark"
    """Any digit picture (file, bytes, PIL image, array, tensor) -> the (28, 28) uint8 MNIST would make."""
    if isinstance(image, np.ndarray) or _is_tensor(image):
        pixels = _array_pixels(image, max_side)
    else:
        pixels = _image_pixels(load_image(image, max_side))
    return _mnist_from_pixels(pixels, ink)


def canvas_to_mnist(pixels: object) -> np.ndarray:
    """Web-canvas pixels (2-D, 0..255, bright ink on black) -> (28, 28) uint8 through the same pipeline."""
    return canvas_to_mnist_measured(pixels)[0]


def canvas_to_mnist_measured(pixels: object) -> tuple[np.ndarray, float]:
    """canvas_to_mnist, and the ink's extent on the canvas (ink_extent): how large it was drawn, for "too small"."""
    try:
        a = (pixels.detach().cpu().numpy() if _is_tensor(pixels) else np.asarray(pixels))
        a = a.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise ImageError(f"canvas pixels must be a 2-D array of numbers ({e})") from None
    if a.ndim != 2:
        raise ImageError(f"canvas pixels must be 2-D (height, width), not shape {a.shape}")
    _check_size(a.shape[0], a.shape[1], "canvas", MAX_IMAGE_SIDE)
    if not np.isfinite(a).all():
        raise ImageError("canvas pixels contain NaN or infinity")
    if a.min() < 0 or a.max() > 255:
        raise ImageError(f"canvas pixels must lie in 0..255, got {a.min():g}..{a.max():g}")
    return _measured_from_pixels(a[..., None] / 255, ink="bright")
