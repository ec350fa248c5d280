"""Masks and small grids on numpy alone (no SciPy): dilation, the 3x3 mean, connected components, bounding box."""
from __future__ import annotations

import numpy as np


def _zero_padded(a: np.ndarray, before: int, after: int, dtype: type | np.dtype | None = None) -> np.ndarray:
    """`a` inside a border of zeros (np.pad's constant mode, without its Python overhead)."""
    h, w = a.shape
    out = np.zeros((h + before + after, w + before + after), dtype or a.dtype)
    out[before:before + h, before:before + w] = a
    return out


def _dilate_rows(mask: np.ndarray, r: int) -> np.ndarray:
    """Along axis 0, pixels within r of a True pixel: ORs of windows doubling in width, log2(2r + 1) passes."""
    n, width, k = mask.shape[0], 2 * r + 1, 1
    p = np.zeros((n + 2 * r,) + mask.shape[1:], dtype=bool)
    p[r:r + n] = mask
    while 2 * k <= width:
        p = p[:-k] | p[k:]  # p[i]: any True in the original p[i:i + 2k]
        k *= 2
    return p[:n] | p[width - k:width - k + n]  # two overlapping k-wide windows cover the 2r+1 window


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within r (a square window) of a True pixel: the window along rows, then along columns.

    Boolean ORs of shifted slices; a summed-area table (two int64 cumulative sums) took 30 ms at 1024 px.
    """
    return _dilate_rows(_dilate_rows(mask, r).T, r).T


def _grow1(mask: np.ndarray) -> np.ndarray:
    """Cells within one cell (8 neighbours) of a True cell: a 3x3 OR done as two 3-wide passes."""
    p = _zero_padded(mask, 1, 1)
    rows = p[:-2] | p[1:-1] | p[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def _mean3(a: np.ndarray) -> np.ndarray:
    """3x3 mean, zeros outside: noise and JPEG blocks shrink, strokes stay."""
    p = _zero_padded(a, 1, 1)
    rows = p[:-2] + p[1:-1]
    rows += p[2:]  # in place: the same sums, fewer temporary arrays on a large image
    out = rows[:, :-2] + rows[:, 1:-1]
    out += rows[:, 2:]
    out /= 9
    return out


def _find(parent: list[int], i: int) -> int:
    """The root of i's set in a union-find forest, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a small grid: (labels 0..count-1, `count` off the mask; count).

    Works on runs of consecutive True cells in a row, not on cells: a digit on the 32x32 cell grid is about a
    hundred runs, so joining touching runs of neighbouring rows with a union-find is a short Python loop, where
    spreading labels cell by cell took up to 20 whole-grid passes.
    """
    h, w = mask.shape
    step = np.diff(_run_edges(mask), axis=1)  # +1 where a run starts, -1 just after it ends
    run_row, start = np.nonzero(step == 1)  # a run covers columns start .. end - 1 of its row
    end = np.nonzero(step == -1)[1]
    # runs in adjacent rows touch (8 neighbours) when their column ranges, widened by one, overlap
    touch = ((run_row[:, None] + 1 == run_row[None, :])
             & (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None]))
    parent = list(range(len(start)))
    for a, b in zip(*(i.tolist() for i in np.nonzero(touch))):
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([_find(parent, i) for i in range(len(parent))], dtype=np.intp)
    ids = np.unique(roots, return_inverse=True)[1].reshape(-1)
    count = int(ids.max()) + 1 if len(ids) else 0
    labels = np.full(h * w, count, dtype=np.intp)
    labels[np.flatnonzero(mask)] = np.repeat(ids, end - start)  # runs list the True cells in row-major order
    return labels.reshape(h, w), count


def _run_edges(mask: np.ndarray) -> np.ndarray:
    """The mask as int8 with a False column on each side, so that every run has a start and an end."""
    out = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    out[:, 1:-1] = mask
    return out


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the True pixels, bottom and right exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
