"""The paper under the ink: a quadratic surface fitted to the samples that are paper, found from the edges."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from digitlab.preprocess.constants import FIT_GRID, FIT_ROUNDS, INK_LIKE, MIXED_EDGE
from digitlab.preprocess.paper_check import _paper_class
from digitlab.preprocess.stats import _median, _percentile


def _first(n: int, step: int) -> int:
    """Where sampling every `step`-th pixel starts: mid-block, but inside an axis thinner than a block."""
    return min(step // 2, n - 1)


def _coords(n: int, step: int = 1) -> np.ndarray:
    """Pixel-centre coordinates of every `step`-th pixel of an axis of length n, scaled to [-1, 1]."""
    return ((np.arange(_first(n, step), n, step) + 0.5) / n * 2 - 1).astype(np.float32)


def _ring(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) mask of the outermost rows and columns: mostly paper even when the ink touches the edges."""
    ring = np.ones(shape, dtype=bool)
    ring[1:-1, 1:-1] = False
    return ring


class _FitLayout(NamedTuple):
    """Where the background fit samples an image of one size, and the quadratic basis there."""

    row_step: int  # every row_step-th row and col_step-th column is sampled
    col_step: int
    row0: int  # the first sampled row and column
    col0: int
    basis: np.ndarray  # (n, 6) float32: 1, x, y, x*x, x*y, y*y at each sample
    basis64: np.ndarray  # the same in float64, as numpy would convert it to multiply with the float64 fit
    edge: np.ndarray  # (n,) bool: the sample lies on the outermost sampled rows or columns
    flat: np.ndarray  # (n,) flat index of each sample's pixel in the (H, W) image
    y: np.ndarray  # (H, 1, 1) and (1, W, 1) coordinates of every pixel, for the full-size surface
    x: np.ndarray


@functools.lru_cache(maxsize=16)
def _fit_layout(h: int, w: int) -> _FitLayout:
    """The fit's sampling layout for an h x w image, cached: a folder of photos is mostly one size, and building
    the basis costs as much as the fit on a small image. The arrays are read-only, so the cache stays intact."""
    step = max(1, max(h, w) // FIT_GRID)
    # a quadratic needs three samples across an axis: a strip under three steps wide is sampled at every pixel
    # across (a 400x12 strip gave one column, and the fit's slope across it was whatever the ridge left)
    row_step = step if len(range(_first(h, step), h, step)) >= 3 else 1
    col_step = step if len(range(_first(w, step), w, step)) >= 3 else 1
    rows, cols = np.arange(_first(h, row_step), h, row_step), np.arange(_first(w, col_step), w, col_step)
    y, x = np.meshgrid(_coords(h, row_step), _coords(w, col_step), indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    layout = _FitLayout(row_step, col_step, int(rows[0]), int(cols[0]), basis, basis.astype(np.float64),
                        _ring((len(rows), len(cols))).ravel(),
                        (rows[:, None] * w + cols[None, :]).ravel(),
                        _coords(h)[:, None, None], _coords(w)[None, :, None])
    for a in layout[4:]:
        a.setflags(write=False)
    return layout


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between the colours (n, c) and b, per row; for grey, |a - b| (the same numbers)."""
    if a.shape[1] == 1:
        return np.abs(a - b)[:, 0]
    return np.linalg.norm(a - b, axis=1)


def _paper_level(edge: np.ndarray) -> np.ndarray:
    """The paper's colour from the edge samples (n, c): the densest cluster, found by narrowing the median.

    The plain median lands on the grey rim of the ink when ink and its rim take half of the edge (a tight crop
    of thick strokes); re-taking the median of the samples nearest to it moves it onto the paper's plateau.
    """
    level = _median(edge)
    for _ in range(4):
        dist = _distance(edge, level)
        level = _median(edge[dist <= _median(dist)])
    return level


def _kept_rows(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """a[keep] for a 2-D array, each row moved as one opaque item: numpy's row-wise boolean indexing is several
    times slower on rows of a few numbers (59 against 8 us for the 64x64 fit's basis)."""
    a = np.ascontiguousarray(a)
    rows = a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)
    return rows[keep].view(a.dtype).reshape(-1, a.shape[1])


def _fit_paper(basis: np.ndarray, sample: np.ndarray,
               keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares quadratic (6, c) through the kept samples, and the kept samples' range per channel."""
    b, kept = _kept_rows(basis, keep), _kept_rows(sample, keep)
    coef = np.linalg.solve(b.T @ b + 1e-6 * np.eye(6), b.T @ kept)
    return coef, kept.min(axis=0), kept.max(axis=0)


def _background(pixels: np.ndarray, from_edges: bool = True,
                ink: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The paper under the ink: a quadratic surface per channel, refitted without outliers (the ink).

    Also returns the flat pixel indices of the samples it took for paper. The paper is found from the image's
    edges, not from the majority of its pixels: in a close crop or under a marker pen most pixels are ink,
    but the ink only touches the edges here and there, so most of the edge is still paper. `from_edges=False`
    takes it from all the samples instead, for a tight crop whose strokes run along its edges (a 5's bar, stem
    and bowl), where the edges are mostly ink but the picture is mostly paper. Where the surface found from the
    edges leaves much of the edge far from it (ink covers much of a close crop's edges), _paper_class checks
    it against the picture's two levels and the digit's shape, and the fit starts again from the paper there.
    """
    h, w, c = pixels.shape
    fit = _fit_layout(h, w)
    sample = pixels[fit.row0::fit.row_step, fit.col0::fit.col_step].reshape(-1, c)
    level, coef, low, high, keep, resid = _fit_surface(fit, sample, fit.edge if from_edges else slice(None))
    if from_edges:
        if resid is None:
            resid = _distance(sample, np.clip(fit.basis64 @ coef, low, high))
        if (resid[fit.edge] > INK_LIKE * resid.max()).mean() >= MIXED_EDGE:  # the ink's share of the edge
            paper = _paper_class(sample, (len(range(fit.row0, h, fit.row_step)), -1), level, ink)
            if paper is not None:
                level, coef, low, high, keep, _ = _fit_surface(fit, sample, paper)
    coef = coef.astype(np.float32)
    y, x = fit.y, fit.x
    # the same six terms, grouped so that only the x*y term is computed at full size
    surface = (coef[0] + coef[1] * x + coef[3] * x * x) + (coef[2] * y + coef[5] * y * y) + coef[4] * (x * y)
    return np.clip(surface, low, high), fit.flat[keep]


def _fit_surface(fit: _FitLayout, sample: np.ndarray, seed: np.ndarray | slice) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The quadratic through the samples that are paper, starting from the flat level of the `seed` samples:
    (that level, coefficients, the kept samples' range per channel, which samples it kept, and each sample's
    distance from the final surface where the last round computed it, else None)."""
    level = _paper_level(sample[seed])
    resid = _distance(sample, level)  # start from a flat page
    keep = resid <= 6 * _percentile(resid[seed], 25) + 2 / 255  # ink is far from the surface
    for i in range(FIT_ROUNDS):
        coef, low, high = _fit_paper(fit.basis, sample, keep)
        if i == FIT_ROUNDS - 1:
            return level, coef, low, high, keep, None
        # between slivers of paper (a thick 1 cropped close) a quadratic can swing far: keep it in the paper's range
        resid = _distance(sample, np.clip(fit.basis64 @ coef, low, high))
        refit = resid <= 6 * _percentile(resid[seed], 25) + 2 / 255
        if np.array_equal(refit, keep):  # the same samples would give the same fit again
            return level, coef, low, high, keep, resid
        keep = refit
    raise AssertionError("unreachable")
