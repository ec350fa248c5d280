"""Strips: a picture much longer than wide, read as a stroke along it (a thin 1 cut to its ink has no paper)."""
from __future__ import annotations

import math

import numpy as np

from digitlab.preprocess.constants import MIN_CONTRAST, STRIP, STROKE_SNR
from digitlab.preprocess.morphology import _mean3
from digitlab.preprocess.stats import _bright_direction, _median
from digitlab.preprocess.strokes import BlankImageError


def _is_strip(shape: tuple[int, ...]) -> bool:
    """At least STRIP times longer than wide: a thin stroke (a 1) cropped to its ink, or a strip of paper."""
    return max(shape[0], shape[1]) >= STRIP * min(shape[0], shape[1])


def _brightness(pixels: np.ndarray) -> np.ndarray:
    """(H, W) along the colour direction the pixels vary most in, oriented so that larger is brighter."""
    if pixels.shape[2] == 1:
        return pixels[..., 0]
    return pixels @ _bright_direction(pixels.reshape(-1, pixels.shape[2])).astype(np.float32)


def _stroke_strength(pixels: np.ndarray, ink: str) -> tuple[np.ndarray, float, np.ndarray]:
    """A strip read as a stroke along it: what _ink_strength returns, or BlankImageError.

    A tight crop of a thin upright 1 is nearly all ink: its edges hold no paper, so the edge-based paper level
    and noise are the stroke's own rim and the digit looks uniform. Averaged along the strip, though, a stroke
    leaves a cross-section whose middle departs from its two ends (the rim, nearest the paper), while blank
    paper, uniform or noisy, averages to a flat or straight one (a lighting ramp across is straight too). The
    strip is a stroke when that departure is at least MIN_CONTRAST and STROKE_SNR times the pixels' spread
    about the cross-section, a spread that is the paper's noise however blurred, and an upper bound on it
    beside a stroke that wobbles.
    """
    tall = pixels.shape[0] >= pixels.shape[1]
    grey = _brightness(pixels if tall else pixels.transpose(1, 0, 2))  # (long, short): the stroke runs down
    profile = grey.mean(axis=0)
    ends = np.linspace(profile[0], profile[-1], len(profile), dtype=np.float32)  # the straight line between rims
    departure = profile - ends
    if ink == "auto":
        ink = "bright" if departure.max() >= -departure.min() else "dark"
    sign = 1 if ink == "bright" else -1
    contrast = float((sign * departure).max())
    spread = 1.4826 * float(_median(np.abs(grey - profile).ravel()))
    if contrast < max(MIN_CONTRAST, STROKE_SNR * spread):
        raise BlankImageError(f"no digit found: the image is blank or uniform (a strip with no stroke along it: "
                              f"contrast {max(contrast, 0):.3f}, noise {spread:.3f})")
    strength = sign * (grey - ends)
    strength = np.ascontiguousarray(strength if tall else strength.T, dtype=np.float32)
    # the paper's noise for the ink's floor: pixel to pixel along the stroke, where the stroke itself is smooth
    along = np.abs(np.diff(strength, axis=0 if tall else 1)).ravel()
    noise = 1.4826 * float(_median(along)) / math.sqrt(2) if along.size else 0.0
    return strength, noise, _mean3(strength)
