"""An embedding map of a dataset: what the model's last hidden layer makes of each test image, in 2-D.

    emb = embed(explainer, images, labels, limit=2000)   # Embedding: points (N, 2), labels, predictions

The features are the input of the model's last Linear layer (every registered model ends in one: the
penultimate layer), caught with a forward hook while the model classifies the images in batches. They go
through PCA to 50 dimensions (t-SNE's usual first step: it removes noise and makes the neighbour search
cheap) and then scikit-learn's t-SNE (Barnes-Hut, perplexity 30, PCA initialisation, seeded). The first
`limit` images of the test set are used: t-SNE's time grows faster than linearly, and 2,000 points already
show the clusters and where the mistakes sit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from digitlab.errors import ConfigError
from digitlab.extras import require

PCA_DIMS = 50
BATCH = 500


@dataclass
class Embedding:
    points: np.ndarray  # (N, 2) float32
    labels: np.ndarray  # (N,) true classes
    predictions: np.ndarray  # (N,)
    indices: np.ndarray  # (N,) test-set indices
    seconds: dict  # time spent: features, pca, tsne

    def to_dict(self, classes: tuple[str, ...]) -> dict:
        return {"classes": list(classes), "points": np.round(self.points.astype(np.float64), 3).tolist(),
                "labels": self.labels.tolist(), "predictions": self.predictions.tolist(),
                "indices": self.indices.tolist(), "misclassified": int((self.labels != self.predictions).sum())}


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("the model has no Linear layer whose input could serve as its features")
    return linears[-1]


def features(explainer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate-layer features (N, F), predictions (N,)) of uint8 (N, 28, 28) images."""
    caught: list[torch.Tensor] = []
    hook = last_linear(explainer.model).register_forward_hook(
        lambda _m, inputs, _out: caught.append(inputs[0].detach().float().reshape(inputs[0].shape[0], -1)))
    predictions = []
    try:
        with torch.inference_mode():
            for i in range(0, len(images), BATCH):
                predictions.append(explainer.model(explainer.to_input(images[i:i + BATCH])).argmax(1))
    finally:
        hook.remove()
    return torch.cat(caught).numpy(), torch.cat(predictions).numpy()


def project(feats: np.ndarray, seed: int = 0, threads: int = 1) -> tuple[np.ndarray, dict]:
    """PCA to 50 dimensions, then t-SNE to 2: (points (N, 2), seconds per stage). `threads` caps BLAS and
    OpenMP (scikit-learn's own default takes every core): on this shared 2-core machine at load 14, t-SNE of
    500 points took 6.7 s on 1 thread and 49 s on 2."""
    decomposition = require("explain", "sklearn.decomposition", "the embedding map")
    manifold = require("explain", "sklearn.manifold", "the embedding map")
    threadpoolctl = require("explain", "threadpoolctl", "the embedding map")
    with threadpoolctl.threadpool_limits(threads):
        return _project(feats, seed, decomposition, manifold)


def _project(feats: np.ndarray, seed: int, decomposition, manifold) -> tuple[np.ndarray, dict]:
    seconds = {}
    t = time.perf_counter()
    dims = min(PCA_DIMS, feats.shape[1], feats.shape[0])
    reduced = decomposition.PCA(dims, random_state=seed).fit_transform(feats) if feats.shape[1] > dims else feats
    seconds["pca"] = time.perf_counter() - t
    t = time.perf_counter()
    perplexity = min(30.0, max(2.0, (feats.shape[0] - 1) / 3))  # t-SNE needs perplexity < the number of points
    points = manifold.TSNE(2, perplexity=perplexity, init="pca", random_state=seed,
                           learning_rate="auto").fit_transform(reduced.astype(np.float32))
    seconds["tsne"] = time.perf_counter() - t
    return points.astype(np.float32), seconds


def embed(explainer, images, labels, limit: int = 2000, seed: int = 0, threads: int = 1) -> Embedding:
    """The embedding map of the first `limit` of `images` (uint8 (N, 28, 28)) with their true `labels`."""
    if not isinstance(limit, int) or limit < 5:
        raise ConfigError(f"--limit must be a whole number of at least 5 images, got {limit!r}")
    images = np.asarray(images[:limit], np.uint8)
    labels = np.asarray(labels[:limit]).astype(np.int64)
    t = time.perf_counter()
    feats, predictions = features(explainer, images)
    seconds = {"features": time.perf_counter() - t}
    points, more = project(feats, seed, threads)
    return Embedding(points, labels, predictions.astype(np.int64), np.arange(len(labels)), {**seconds, **more})
