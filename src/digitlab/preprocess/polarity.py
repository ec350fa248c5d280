"""Polarity and levelling: each pixel's departure from the paper along the ink's colour, the ink made positive."""
from __future__ import annotations

import numpy as np

from digitlab.preprocess.background import _background
from digitlab.preprocess.constants import DARK_PAPER
from digitlab.preprocess.morphology import _mean3
from digitlab.preprocess.stats import _median


def _ink_direction(dev: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """The colour direction along which the ink departs from the paper: the main axis of strong deviations."""
    if dev.shape[2] == 1:
        return np.ones(1)
    norms = np.linalg.norm(dev, axis=2)
    strong = dev[norms > 4 * _median(norms.ravel()[paper]) + 2 / 255]  # (n, 3); paper's spread, as ink may be most
    if len(strong) == 0:
        return np.ones(3) / np.sqrt(3)
    return np.linalg.eigh(strong.T @ strong)[1][:, -1]


def _ink_strength(pixels: np.ndarray, ink: str, from_edges: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """Levelled ink strength (H, W): about 0 on the paper, positive on the ink, whatever its polarity.

    Also returns the paper's noise (a robust sigma of the strength on the samples taken for paper) and the
    strength's 3x3 mean, which both polarity and the strokes need. `from_edges`: see _background.
    """
    background, paper = _background(pixels, from_edges, ink)
    grey = pixels.shape[2] == 1
    light = background if grey else background.mean(axis=2, keepdims=True)
    top = max(float(light.max()), DARK_PAPER)
    dev = (pixels - background) * (top / np.maximum(light, top / 4))  # light multiplies: undo it on dim parts
    if grey:  # the only direction there is
        strength = dev[..., 0]
    else:
        direction = _ink_direction(dev, paper)
        if direction.sum() < 0:  # make "positive" mean "brighter than the paper"
            direction = -direction
        strength = (dev * direction.astype(np.float32)).sum(axis=2)
    noise = 1.4826 * float(_median(np.abs(strength.ravel()[paper])))
    smooth = _mean3(strength)
    if ink == "auto":  # the ink is the side with the strongest deviations (smoothed: lone pixels don't count)
        ink = "bright" if smooth.max() >= -smooth.min() else "dark"
    return (strength, noise, smooth) if ink == "bright" else (-strength, noise, -smooth)
