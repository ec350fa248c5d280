"""Synthetic training digits: pen.py's handwriting styles, read through to_mnist as users' pictures are.

MNIST's writers rarely wrote a European 1 with a flag or a hook, so a model trained on MNIST alone takes it
for a 7. Appending procedural digits in those styles to the training set teaches them without touching the
benchmark: the digits come from seeds in pen.TRAIN_SEEDS only (pen.check_training_range refuses the
benchmark's range), and never from fonts (an independent evaluation uses handwriting fonts).

    images, labels = pen_training_set(10_000, seed=0)     # uint8 (10000, 28, 28), int64 (10000,)
    x, y = with_non_digits(x, y, 6000)   # outlier exposure: 6,000 non-digits (label OUTLIER) + 3,000 page digits

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
    """A hash of the code that makes a training sample (generators and preprocessing): the cache key's version."""
    from digitlab import non_digits

    digest = hashlib.sha256()
    # the preprocess package is several modules: every one of them shapes the digits
    for path in [Path(pen.__file__), Path(non_digits.__file__), *sorted(Path(preprocess.__file__).parent.glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def render_pictures(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Pen seeds start .. stop - 1 as pictures (64x64, dark on light) read through to_mnist: uint8 (n, 28, 28)
    and int64 labels: the format of a photo or scan sent to `digitlab predict`."""
    images, labels, _ = pen.generate(stop - start, start)
    return np.stack([preprocess.to_mnist(im) for im in images]) if len(images) else \
        np.zeros((0, 28, 28), np.uint8), labels


def render_page_digits(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Pen seeds start .. stop - 1 drawn on the page's canvas (non_digits.page_digit) and read as the server reads
    them: the page's format (a round pen, nearly no full-brightness ink), labelled seed % 10."""
    from digitlab import non_digits

    images, _, labels = non_digits.page_digits(stop - start, start)
    return images, labels.astype(np.int64)


def render_non_digits(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-digit seeds start .. stop - 1 (non_digits.TRAIN_SEEDS) as the model sees them, labelled OUTLIER."""
    from digitlab import non_digits

    images, _, _ = non_digits.generate(stop - start, start)
    return images, np.full(stop - start, OUTLIER, np.int64)


OUTLIER = -1  # the label of a training image that is no class: its loss pushes the answer towards uniform
RENDERERS = {"pen": render_pictures, "page": render_page_digits, "non-digit": render_non_digits}


def chunk_path(index: int, version: str, kind: str = "pen") -> Path:
    prefix = "" if kind == "pen" else f"{kind}-"
    return cache_root() / f"{prefix}chunk{CHUNK}-{index:06d}-{version}.npz"


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


def cached_chunks(indices: list[int], workers: int, kind: str = "pen") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The chunks of `kind` (RENDERERS) with these indices, from the cache or rendered (in `workers` processes)
    and cached."""
    version = pen_version()
    found = {i: load_chunk(chunk_path(i, version, kind)) for i in indices}
    missing = [i for i, c in found.items() if c is None]
    if missing:
        with ProcessPoolExecutor(max(1, min(workers, len(missing)))) as pool:
            rendered = pool.map(RENDERERS[kind], [i * CHUNK for i in missing], [(i + 1) * CHUNK for i in missing])
            for i, (images, labels) in zip(missing, rendered):
                save_chunk(chunk_path(i, version, kind), images, labels)
                found[i] = (images, labels)
    return found


def chunked_set(kind: str, seeds: range, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The samples of `kind` for these seeds, assembled from cached chunks of CHUNK consecutive seeds."""
    if not len(seeds):
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    first, last = seeds.start // CHUNK, (seeds.stop - 1) // CHUNK
    chunks = cached_chunks(list(range(first, last + 1)), workers or os.cpu_count() or 1, kind)
    images = np.concatenate([chunks[i][0] for i in range(first, last + 1)])
    labels = np.concatenate([chunks[i][1] for i in range(first, last + 1)])
    offset = seeds.start - first * CHUNK
    return images[offset:offset + len(seeds)], labels[offset:offset + len(seeds)]


def pen_training_set(n: int, seed: int = 0, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pen digits of seeds seed .. seed + n - 1 (all in pen.TRAIN_SEEDS, or a PenError) as MNIST images:
    uint8 (n, 28, 28) bright ink on black, and int64 labels (seed % 10: balanced to within one per class)."""
    return chunked_set("pen", pen.check_training_range(seed, n), workers)


def with_pen_digits(images: torch.Tensor, labels: torch.Tensor, n: int,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images and labels with n pen digits appended (n = 0: the tensors themselves).

    Called on the training tensors after any validation hold-out is taken out of them, so the hold-out stays
    MNIST and the pen digits only ever train.
    """
    if not n:
        return images, labels
    return appended(images, labels, *pen_training_set(n, seed))


def appended(images: torch.Tensor, labels: torch.Tensor, extra_x: np.ndarray,
             extra_y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.cat([images, torch.from_numpy(extra_x).to(images.device)]),
            torch.cat([labels, torch.from_numpy(extra_y).to(labels.device, labels.dtype)]))


PAGE_SEED_BASE = 500_000  # page-drawn training digits take pen.TRAIN_SEEDS from here: apart from the pictures'


def with_non_digits(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outlier exposure: n generated non-digits (non_digits.TRAIN_SEEDS, label OUTLIER) and n // 2 real digits
    drawn the same way on the page's canvas, appended to the training images.

    Why the page digits: every non-digit is drawn with the page's round pen, whose strokes look unlike MNIST's
    scans; without digits in that format the model could learn "drawn on the page" as "not a digit" and refuse
    the page's users' digits."""
    if not n:
        return images, labels
    from digitlab import non_digits

    others = chunked_set("non-digit", range(non_digits.TRAIN_SEEDS.start, non_digits.TRAIN_SEEDS.start + n))
    page = chunked_set("page", pen.check_training_range(PAGE_SEED_BASE, n // 2))
    return appended(*appended(images, labels, *others), *page)
