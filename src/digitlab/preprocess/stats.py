"""Statistics of pixel values: fast exact median, percentile and histogram, Otsu's threshold, the main colour axis."""
from __future__ import annotations

import math

import numpy as np

# np.median, np.percentile and np.histogram spend 30-140 us each in Python on the few thousand pixels of a
# small image, several times the arithmetic. These give the same numbers (same partition, same float32
# interpolation); tests/test_preprocess_equivalence.py checks them against numpy.


def _median(a: np.ndarray) -> np.ndarray:
    """np.median(a, axis=0): the middle value, or the float mean of the two middle values."""
    n = a.shape[0]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=0)[k]
    part = np.partition(a, (k - 1, k), axis=0)
    return (part[k - 1] + part[k]) / 2


def _percentile(a: np.ndarray, q: float) -> np.floating:
    """np.percentile(a, q) of a 1-D array, numpy's default linear interpolation, in a's dtype."""
    n = a.size
    virtual = (n - 1) * (q / 100)
    i = math.floor(virtual)
    if i >= n - 1:
        return a.max()
    part = np.partition(a, (i, i + 1))
    low, high = part[i], part[i + 1]
    gamma = virtual - i
    diff = high - low
    return high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma


def _histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram(values, bins) for a 1-D float array whose min and max differ: the same edges and counts."""
    first, last = values.min(), values.max()
    edges = np.linspace(first, last, bins + 1, endpoint=True, dtype=np.result_type(first, last, values))
    index = (((values - first) / (last - first)) * bins).astype(np.intp)
    index[index == bins] -= 1
    index[values < edges[index]] -= 1  # the division can land a value one bin off near an edge: correct it
    index[(values >= edges[index + 1]) & (index != bins - 1)] += 1
    return np.bincount(index, minlength=bins), edges


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the cut that best separates `values` into two classes."""
    if values.max() - values.min() < 1e-6:  # one value (a single dot): it is all ink
        return float(values.min()) / 2
    hist, edges = _histogram(values, 128)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(edges[np.nanargmax(between[:-1]) + 1])


def _bright_direction(flat: np.ndarray) -> np.ndarray:
    """The colour direction (c,) that pixels (n, c) vary most in, oriented so that larger is brighter."""
    centred = flat - flat.mean(axis=0)
    direction = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    return -direction if direction.sum() < 0 else direction
