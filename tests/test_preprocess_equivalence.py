"""preprocess's fast helpers give the same numbers as the numpy functions and the algorithms they replace.

to_mnist must not change when it gets faster: each helper here stands in for a slower reference (np.median,
np.percentile, np.histogram, np.linalg.norm, labelling cell by cell) and must agree with it exactly, on the
awkward cases too (even and odd sizes, ties, one element, values on bin edges, masks of every density).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from digitlab.preprocess import background, morphology, stats

pytestmark = pytest.mark.quick  # every test here is in the quick subset

SIZES = [1, 2, 3, 4, 5, 10, 251, 252, 4096]


def arrays(dtype: type) -> list[np.ndarray]:
    """Random 1-D arrays of SIZES, with and without ties (values on a coarse grid)."""
    rng = np.random.default_rng(0)
    out = []
    for n in SIZES:
        out.append(rng.random(n).astype(dtype))
        out.append((rng.integers(0, 4, n) / 3).astype(dtype))
        out.append(np.abs(rng.normal(0, 0.02, n)).astype(dtype))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_is_numpys(dtype: type):
    for a in arrays(dtype):
        expected = np.median(a)
        got = stats._median(a.copy())
        assert got == expected and np.asarray(got).dtype == np.asarray(expected).dtype, (a.size, got, expected)
        columns = np.stack([a, a[::-1] * 2, a ** 2], axis=1)  # (n, 3): one median per channel
        assert np.array_equal(stats._median(columns), np.median(columns, axis=0)), a.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("q", [0, 10, 25, 50, 75, 90, 99.5, 100])
def test_percentile_is_numpys(dtype: type, q: float):
    for a in arrays(dtype):
        expected = np.percentile(a, q)
        got = stats._percentile(a.copy(), q)
        assert got == expected and np.asarray(got).dtype == np.asarray(expected).dtype, (a.size, q, got, expected)


def test_histogram_is_numpys():
    rng = np.random.default_rng(1)
    cases = [a for a in arrays(np.float32) + arrays(np.float64) if np.ptp(a) > 0]
    for _ in range(20):  # values on the bin edges and one float away, where the division lands a bin off
        low, high = np.float32(rng.random()), np.float32(rng.random() + 1)
        edges = np.linspace(low, high, 129, dtype=np.float32)
        near = np.concatenate([edges, np.nextafter(edges, low - 1), np.nextafter(edges, high + 1)])
        cases.append(near[(near >= low) & (near <= high)])
    for a in cases:
        for bins in (128, 7):
            hist, e = stats._histogram(a, bins)
            want_hist, want_e = np.histogram(a, bins=bins)
            assert np.array_equal(hist, want_hist) and np.array_equal(e, want_e), (a.size, bins)
            assert e.dtype == want_e.dtype


def test_grey_distance_is_the_norm():
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        a = (rng.normal(0, 1, (5000, 1)) * 10.0 ** rng.integers(-6, 3, (5000, 1))).astype(dtype)
        b = np.array([0.37], dtype)
        assert np.array_equal(background._distance(a, b), np.linalg.norm(a - b, axis=1))
        colour = rng.random((100, 3)).astype(dtype)
        assert np.array_equal(background._distance(colour, b), np.linalg.norm(colour - b, axis=1))


def flood_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference labelling: breadth-first flood over 8 neighbours, components numbered in row-major order of
    their first cell, `count` off the mask; and count."""
    h, w = mask.shape
    labels = np.full((h, w), -1)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x] >= 0:
            continue
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                    if mask[ny, nx] and labels[ny, nx] < 0:
                        labels[ny, nx] = count
                        queue.append((ny, nx))
        count += 1
    labels[labels < 0] = count
    return labels, count


def test_components_match_a_flood_fill():
    rng = np.random.default_rng(3)
    masks = [np.zeros((5, 5), bool), np.ones((32, 32), bool), np.eye(16, dtype=bool),  # a diagonal: corners join
             np.indices((32, 32)).sum(axis=0) % 2 == 0, np.ones((1, 32), bool), np.ones((32, 1), bool)]
    for density in (0.05, 0.2, 0.4, 0.5, 0.6, 0.8):
        for shape in ((32, 32), (14, 14), (3, 32), (32, 2)):
            masks.append(rng.random(shape) < density)
    for mask in masks:
        labels, count = morphology._components(mask)
        want, want_count = flood_labels(mask)
        assert count == want_count and np.array_equal(labels, want), (mask.shape, mask.mean())


def test_fit_layout_cache_cannot_be_changed():
    layout = background._fit_layout(64, 64)
    with pytest.raises(ValueError):
        layout.basis[0, 0] = 5
    assert background._fit_layout(64, 64) is layout


def square_dilation(mask: np.ndarray, r: int) -> np.ndarray:
    """Reference: a pixel is set when any True pixel lies within r rows and r columns of it."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask)):
        out[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1] = True
    return out


@pytest.mark.parametrize("r", [1, 2, 3, 4, 7, 8, 35])
def test_dilation_is_the_square_window(r: int):
    rng = np.random.default_rng(r)
    for shape in ((64, 64), (5, 90), (90, 3), (1, 1)):
        for density in (0.0, 0.002, 0.02, 0.3):
            mask = rng.random(shape) < density
            assert np.array_equal(morphology._dilate(mask, r), square_dilation(mask, r)), (shape, density)


def test_kept_rows_are_boolean_indexing():
    rng = np.random.default_rng(4)
    layout = background._fit_layout(64, 64)
    for a in (layout.basis, rng.random((300, 3)).astype(np.float32), rng.random((50, 1)),
              rng.random((40, 6))[::2]):  # read-only, colour, float64, not contiguous
        for density in (0.0, 0.5, 1.0):
            keep = rng.random(len(a)) < density
            kept = background._kept_rows(a, keep)
            assert np.array_equal(kept, a[keep]) and kept.dtype == a.dtype
