"""Synthetic training digits: pen.py's handwriting styles, read through to_mnist as users' pictures are.

MNIST's writers rarely wrote a European 1 with a flag or a hook, so a model trained on MNIST alone takes it
for a 7. Appending procedural digits in those styles to the training set teaches them without touching the
benchmark: the digits come from seeds in pen.TRAIN_SEEDS only (pen.check_training_range refuses the
benchmark's range), and never from fonts (an independent evaluation uses handwriting fonts).

    images, labels = pen_training_set(10_000, seed=0)     # uint8 (10000, 28, 28), int64 (10000,)

Each digit is rendered 64x64 (dark on light) and passed through preprocess.to_mnist, exactly as a picture
sent to `digitlab predict` is, so training sees what prediction will see. Rendering costs about 5-13 ms a
digit, so the result is cached under ~/.cache/digitlab/pen/ (DIGITLAB_CACHE overrides the root) in chunks of
CHUNK consecutive seeds, one .npz each, named by the generator's version: a hash of pen.py and the
preprocess package's modules, so changing any of them never reuses stale digits. Missing chunks render in
parallel processes.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from digitlab import pen, preprocess

CHUNK = 1000  # seeds per cache file: a set of any size reuses the chunks another set rendered


def cache_root() -> Path:
    """Where rendered chunks are kept: $DIGITLAB_CACHE/pen, else ~/.cache/digitlab/pen."""
    base = os.environ.get("DIGITLAB_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "digitlab") / "pen"


def pen_version() -> str:
    """A hash of the code that makes a training digit (generator and preprocessing): the cache key's version."""
    digest = hashlib.sha256()
    # the preprocess package is several modules: every one of them shapes the digits
    for path in [Path(pen.__file__), *sorted(Path(preprocess.__file__).parent.glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def render_chunk(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeds start .. stop - 1 rendered and read through to_mnist: uint8 (n, 28, 28) and int64 labels."""
    images, labels, _ = pen.generate(stop - start, start)
    return np.stack([preprocess.to_mnist(im) for im in images]) if len(images) else \
        np.zeros((0, 28, 28), np.uint8), labels


def chunk_path(index: int, version: str) -> Path:
    return cache_root() / f"chunk{CHUNK}-{index:06d}-{version}.npz"


def load_chunk(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A cached chunk, or None if it is missing or unreadable (a half-written file is rendered again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError):
        return None
    if images.shape != (CHUNK, 28, 28) or images.dtype != np.uint8 or labels.shape != (CHUNK,):
        return None
    return images, labels


def save_chunk(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write through a temporary file and rename, so a reader never sees half a chunk. A cache that cannot be
    written (read-only home, full disk) only costs rendering again next time, so it never stops training."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached_chunks(indices: list[int], workers: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The chunks with these indices, from the cache or rendered (in `workers` processes) and cached."""
    version = pen_version()
    found = {i: load_chunk(chunk_path(i, version)) for i in indices}
    missing = [i for i, c in found.items() if c is None]
    if missing:
        with ProcessPoolExecutor(max(1, min(workers, len(missing)))) as pool:
            rendered = pool.map(render_chunk, [i * CHUNK for i in missing], [(i + 1) * CHUNK for i in missing])
            for i, (images, labels) in zip(missing, rendered):
                save_chunk(chunk_path(i, version), images, labels)
                found[i] = (images, labels)
    return found


def pen_training_set(n: int, seed: int = 0, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pen digits of seeds seed .. seed + n - 1 (all in pen.TRAIN_SEEDS, or a PenError) as MNIST images:
    uint8 (n, 28, 28) bright ink on black, and int64 labels (seed % 10: balanced to within one per class)."""
    seeds = pen.check_training_range(seed, n)
    if not n:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    first, last = seeds.start // CHUNK, (seeds.stop - 1) // CHUNK
    chunks = cached_chunks(list(range(first, last + 1)), workers or os.cpu_count() or 1)
    images = np.concatenate([chunks[i][0] for i in range(first, last + 1)])
    labels = np.concatenate([chunks[i][1] for i in range(first, last + 1)])
    offset = seeds.start - first * CHUNK
    return images[offset:offset + n], labels[offset:offset + n]


def with_pen_digits(images: torch.Tensor, labels: torch.Tensor, n: int,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images and labels with n pen digits appended (n = 0: the tensors themselves).

    Called on the training tensors after any validation hold-out is taken out of them, so the hold-out stays
    MNIST and the pen digits only ever train.
    """
    if not n:
        return images, labels
    extra_x, extra_y = pen_training_set(n, seed)
    return (torch.cat([images, torch.from_numpy(extra_x).to(images.device)]),
            torch.cat([labels, torch.from_numpy(extra_y).to(labels.device, labels.dtype)]))
