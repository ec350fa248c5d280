"""Checks that attributions can be trusted, as the literature makes them.

- Model randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): re-initialise the model's
  weights and explain the same images for the same classes. A map that still looks the same shows the input,
  not what the model learned. Reported: the Spearman rank correlation, trained vs randomised, per image, of
  the signed maps, of their absolute values (the paper's "ABS" variant) over all 784 pixels, and of the
  absolute values over the ink pixels only; near 0 passes, near 1 fails. The absolute maps of IG (and any
  gradient x input method) are 0 wherever the input is background, for every model, so over all pixels they
  correlate through the ink's outline alone: the paper's finding that such maps partly show the input. The
  ink-only figure removes that shared mask. `randomised(model, top=k)`
  re-initialises only the last k parametrised layers: k = 1, 2, ... is their cascading test.
- Deletion (Petsiuk et al. 2018, RISE; Samek et al. 2017): set the top-k% attributed pixels to background
  (black, MNIST's 0) and watch the probability of the predicted class, against the same fraction of random
  pixels. The area under each curve (mean over the fractions, so 1.0 is "never moved") must be lower for the
  map's order than for random: the map found the pixels the model needs.
- Ink share: the share of a map's positive mass (what speaks for the class) on or near the ink, i.e. within
  INK_RADIUS pixels of a pixel brighter than INK_THRESHOLD. An MNIST digit is decided by its strokes, and a map
  whose mass sits in an empty corner shows something the model does not use (Grad-CAM on a feature map the
  network only partly reads did that). Reported beside the chance level: the share of the image near the ink,
  what a map spread evenly would score, and beside the randomised model's maps' share: a map that finds the ink
  without the trained weights (IG: input x gradient is 0 on black pixels) shows the input as much as the model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from digitlab.attribution.attributions import attribute

FRACTIONS = np.round(np.arange(0, 0.51, 0.02), 2)  # 0..50% of the 784 pixels: a digit's ink is 10-25% of them
INK_THRESHOLD = 64  # ink: brighter than a quarter of full intensity (the faint anti-aliased fringe is in the radius)
INK_RADIUS = 2  # "near the ink": within 2 pixels, diagonals included; half a cell of a 7x7 Grad-CAM grid on 28x28


def parametrised_layers(model: nn.Module) -> list[nn.Module]:
    """Leaf modules with weights of their own and a reset_parameters, in registration (= call) order."""
    return [m for m in model.modules() if not list(m.children()) and hasattr(m, "reset_parameters")
            and any(True for _ in m.parameters(recurse=False))]


def randomised(model: nn.Module, top: int | None = None, seed: int = 0) -> nn.Module:
    """A copy of `model` with its last `top` parametrised layers (all if None) re-initialised as PyTorch
    initialises them when a model is built (BatchNorm: weight 1, bias 0, running statistics reset)."""
    clone = copy.deepcopy(model)
    layers = parametrised_layers(clone)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for layer in layers[-top:] if top else layers:
            layer.reset_parameters()
    return clone.eval()


def rank(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (scipy.stats.rankdata's 'average')."""
    order = np.argsort(a, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(a.size)
    sorted_a = a[order]
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = np.cumsum(starts)[inverse]
    bounds = np.r_[np.flatnonzero(starts), a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps; NaN when either is constant (nothing to rank)."""
    ra, rb = rank(np.ravel(a)), rank(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def maps_for(explainer, model: nn.Module, images: np.ndarray, targets: np.ndarray, method: str) -> np.ndarray:
    return attribute(model, explainer.to_input(images), targets.tolist(), method, explainer.background,
                     f"model {explainer.name!r}")


def randomisation(explainer, images: np.ndarray, targets: np.ndarray, method: str, top: int | None = None,
                  trained_maps: np.ndarray | None = None, seed: int = 0) -> dict:
    """Spearman of |map| between the trained and the randomised model, per image, summarised."""
    trained = maps_for(explainer, explainer.model, images, targets, method) if trained_maps is None else trained_maps
    random_model = explainer.memory_format_model(randomised(explainer.model, top, seed))
    random = maps_for(explainer, random_model, images, targets, method)
    ink = images.reshape(trained.shape) > 0
    variants = {"signed": [spearman(a, b) for a, b in zip(trained, random)],
                "abs": [spearman(np.abs(a), np.abs(b)) for a, b in zip(trained, random)],
                "abs_ink": [spearman(np.abs(a)[k], np.abs(b)[k]) for a, b, k in zip(trained, random, ink)]}
    out: dict = {}
    for name, values in variants.items():
        rs = np.array(values)
        valid = rs[np.isfinite(rs)]
        out[f"spearman_{name}"] = round(float(valid.mean()), 4) if valid.size else None  # None: every map constant
        out[f"spearman_{name}_sd"] = round(float(valid.std()), 4) if valid.size else None
    out["constant_maps"] = int(np.sum(~np.isfinite(variants["signed"])))  # e.g. Grad-CAM's ReLU zeroing a map
    out["ink_share_randomised"] = ink_check(images, random)["ink_share"]  # how much of the ink share is the input's
    return out


def near_ink(images: np.ndarray, threshold: int = INK_THRESHOLD, radius: int = INK_RADIUS) -> np.ndarray:
    """(N, 28, 28) bool: pixels brighter than `threshold`, grown by `radius` pixels every way (square dilation)."""
    ink = np.asarray(images).reshape(-1, 28, 28) > threshold
    padded = np.pad(ink, ((0, 0), (radius, radius), (radius, radius)))
    near = np.zeros_like(ink)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            near |= padded[:, dy:dy + 28, dx:dx + 28]
    return near


def ink_share(maps: np.ndarray, images: np.ndarray, threshold: int = INK_THRESHOLD,
              radius: int = INK_RADIUS) -> np.ndarray:
    """(N,) the share of each map's positive mass on or near its image's ink; NaN where a map has none."""
    positive = np.clip(np.asarray(maps, np.float64).reshape(-1, 28, 28), 0, None)
    total = positive.sum(axis=(1, 2))
    on_ink = (positive * near_ink(images, threshold, radius)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on_ink / total, np.nan)


def ink_check(images: np.ndarray, maps: np.ndarray) -> dict:
    """Mean ink share of the maps (those with positive mass), its spread, and the chance level."""
    shares = ink_share(maps, images)
    valid = shares[np.isfinite(shares)]
    return {"ink_share": round(float(valid.mean()), 4) if valid.size else None,
            "ink_share_sd": round(float(valid.std()), 4) if valid.size else None,
            "ink_chance": round(float(near_ink(images).mean()), 4),
            "ink_maps_without_mass": int(shares.size - valid.size)}


@dataclass
class Deletion:
    fractions: np.ndarray
    attributed: np.ndarray  # (F,) mean probability of the target with the top-f attributed pixels removed
    random: np.ndarray  # (F,) the same with random pixels

    def auc(self, curve: np.ndarray) -> float:
        """Mean probability over the fractions (the area under the curve divided by its width)."""
        return float(np.trapezoid(curve, self.fractions) / (self.fractions[-1] - self.fractions[0]))


def removed(images: np.ndarray, orders: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """(N, F, 28, 28): each image with the first round(f * 784) pixels of its order set to 0 (background)."""
    n = images.shape[0]
    out = np.repeat(images.reshape(n, 1, 784), len(fractions), axis=1)
    for j, f in enumerate(fractions):
        k = int(round(f * 784))
        rows = np.repeat(np.arange(n), k)
        out[rows, j, orders[:, :k].ravel()] = 0
    return out.reshape(n, len(fractions), 28, 28)


def deletion(explainer, images: np.ndarray, targets: np.ndarray, maps: np.ndarray,
             fractions: np.ndarray = FRACTIONS, seed: int = 0) -> Deletion:
    """Deletion curves for `maps` (N, 28, 28) explaining `targets` against random orders (seeded)."""
    n = images.shape[0]
    rng = np.random.default_rng(seed)
    # ties (IG's zeros on the background, Grad-CAM's ReLU'd zeros) in random order, not top-left first
    by_map = np.lexsort((rng.random((n, 784)), -maps.reshape(n, 784)), axis=1)
    by_chance = np.stack([rng.permutation(784) for _ in range(n)])
    curves = []
    for orders in (by_map, by_chance):
        batch = removed(images, orders, fractions).reshape(-1, 28, 28)
        probs = np.concatenate([explainer.probabilities(batch[i:i + 2000]) for i in range(0, len(batch), 2000)])
        chosen = probs.reshape(n, len(fractions), -1)[np.arange(n), :, targets]  # (N, F)
        curves.append(chosen.mean(axis=0))
    return Deletion(np.asarray(fractions, np.float64), curves[0], curves[1])


def run_checks(explainer, images: np.ndarray, methods: list[str], seed: int = 0) -> dict[str, dict]:
    """The three checks for each method on uint8 (N, 28, 28) images, explaining each image's predicted class."""
    targets = explainer.probabilities(images).argmax(1)
    results = {}
    for method in methods:
        maps = maps_for(explainer, explainer.model, images, targets, method)
        d = deletion(explainer, images, targets, maps, seed=seed)
        results[method] = {**randomisation(explainer, images, targets, method, trained_maps=maps, seed=seed),
                           **ink_check(images, maps),
                           "fractions": d.fractions.tolist(), "attributed_curve": d.attributed.tolist(),
                           "random_curve": d.random.tolist(), "auc_attributed": d.auc(d.attributed),
                           "auc_random": d.auc(d.random)}
    return results
