"""The paper check: which of a tight crop's two levels is the paper, when ink covers much of its edges."""
from __future__ import annotations

import numpy as np

from digitlab.preprocess.constants import DEPTH_RATIO, LEVEL_SLACK, MIN_CONTRAST, NARROW, PIECE_FRACTION, TWO_LEVELS
from digitlab.preprocess.morphology import _components, _grow1
from digitlab.preprocess.stats import _bright_direction, _median, _otsu


def _grey(sample: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, float]:
    """Samples (n, c) and a colour as one brightness each, along the colour direction the samples vary most in."""
    if sample.shape[1] == 1:
        return sample[:, 0], float(level[0])
    direction = _bright_direction(sample).astype(np.float32)
    return sample @ direction, float(level @ direction)


def _pieces(mask: np.ndarray) -> int:
    """How many 8-connected groups of the mask hold at least PIECE_FRACTION of the grid."""
    labels, count = _components(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[:count]
    return int((sizes >= PIECE_FRACTION * mask.size).sum())


def _depth(mask: np.ndarray) -> int:
    """How many 3x3 erosions the mask survives: half its thickest part (beyond the picture counts as the mask)."""
    depth = 0
    while mask.any() and depth < max(mask.shape):
        mask = mask & ~_grow1(~mask)
        depth += 1
    return depth


def _paper_is_bright(bright: np.ndarray, both: bool) -> bool | None:
    """Which side of a two-level (rows, cols) grid is the paper, from the shapes alone; None if they cannot tell.

    In a crop cut to a connected digit the ink is one piece that reaches the edges, so it splits the paper into
    several (the paper beside a 1's stem, a 0's hole and corners): the side in more pieces is the paper. Where
    both are one piece (a 7 whose stem ends in a corner), the paper is the side with the thickest open part.
    `both`: the side in more pieces must also be the thicker (a 5 whose flag is apart from its body is ink in
    two pieces, on paper in one; thickness alone then tells nothing).
    """
    pieces = _pieces(bright), _pieces(~bright)
    if pieces[0] != pieces[1] and not both:
        return pieces[0] > pieces[1]
    if max(bright.shape) >= NARROW * min(bright.shape):  # a 1's stroke spans the crop: thicker than the paper
        return None
    depths = _depth(bright), _depth(~bright)
    if pieces[0] != pieces[1]:  # `both`: the side in more pieces must be the thicker one too
        agree = depths[0] != depths[1] and (depths[0] > depths[1]) == (pieces[0] > pieces[1])
        return pieces[0] > pieces[1] if agree else None
    return None if max(depths) < DEPTH_RATIO * min(depths) else depths[0] > depths[1]


def _spread(values: np.ndarray, middle: float) -> float:
    """A robust sigma of `values` about their median `middle`."""
    return 1.4826 * float(_median(np.abs(values - middle)))


def _paper_class(sample: np.ndarray, shape: tuple[int, int], level: np.ndarray, ink: str) -> np.ndarray | None:
    """The samples that are paper, where the edges' paper `level` is unreliable; None where it stands.

    Called when much of the edge is far from the surface fitted there: ink covers much of the crop's edges (a
    marker pen cut to its ink), so the edges' densest level can be the ink itself, or the grey rim of thick
    strokes. The samples split into two levels (Otsu), which must stand well apart (noise or a lighting ramp cut
    in two does not); the paper is the side opposite the ink the caller named, or else the one the digit's shape
    says (_paper_is_bright). The edges' level stands when it already lies on the paper's plateau.
    """
    grey, paper_grey = _grey(sample, level)
    if float(grey.max() - grey.min()) < MIN_CONTRAST:
        return None
    bright = grey > _otsu(grey)
    if bright.all() or not bright.any():
        return None
    middles = float(_median(grey[bright])), float(_median(grey[~bright]))
    spread = max(_spread(grey[bright], middles[0]), _spread(grey[~bright], middles[1]))
    if middles[0] - middles[1] < max(MIN_CONTRAST, TWO_LEVELS * spread):
        return None
    # a level at a side's median or beyond it, away from the other side, is on that side's plateau (the median,
    # with the grey rims of the strokes, is nearer the other side); between the two: a rim, never the paper
    slack = LEVEL_SLACK * (middles[0] - middles[1])
    plateau = paper_grey >= middles[0] - slack, paper_grey <= middles[1] + slack
    paper_bright = ink == "dark" if ink != "auto" else _paper_is_bright(bright.reshape(shape), any(plateau))
    if paper_bright is None or plateau[0 if paper_bright else 1]:  # None, or the edges' level is that paper's
        return None
    paper, own, away = (bright, middles[0], 1) if paper_bright else (~bright, middles[1], -1)
    return paper & ((grey - own) * away >= 0)  # its plateau: the half away from the ink, without the rims
