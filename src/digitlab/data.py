"""Datasets: read MNIST and Fashion-MNIST from their IDX files, verified, into uint8 tensors.

A dataset is held in memory as a uint8 tensor (N, 28, 28) plus int64 labels (N,), so batches are
index slices and no per-sample Python runs while training. Its shape (classes, channels, image size: Dataset.shape)
is what training builds the model for; a colour dataset holds (N, C, H, W). MNIST and Fashion-MNIST are 10
classes of 1x28x28. The four files of a dataset are looked
for in this order, and the first folder that has a file wins for that file:

1. ``data_dir`` argument, or the ``DIGITLAB_DATA`` environment variable
2. the repository's ``data/<name>/`` folder (MNIST ships there, so the default job works offline)
3. the user cache, ``~/.cache/digitlab/<name>/``
4. the system dataset folder ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist``)
5. otherwise the file is downloaded from the public mirrors into the user cache

Every file is checked against the MD5 of its uncompressed content before use. It is read in bounded chunks and
never past the size a file of its name has (IDX_SIZES; its IDX header must promise the same), so a damaged or
hostile file (a gzip bomb: a few MB that inflate to GBs) is refused after reading at most that many bytes, and a
download stops at the published size of its .gz file. A verified file is also kept
decoded, as a .npy under ``~/.cache/digitlab/decoded/<name>/`` named by that MD5 and by the source file's size
and modification time: later loads of the same unchanged file read it back (about 50 ms for MNIST's 55 MB)
instead of unzipping and hashing it again (most of a second, a large share of `fast`'s few seconds); a file
that changed in either misses the copy and is verified again. One copy per file is kept (the newest), so the
cache never grows past one decoded dataset. ``DIGITLAB_DECODED_CACHE=0`` turns it off.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from digitlab.errors import DataError
from digitlab.shapes import InputShape

REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# Bytes of each file uncompressed, its IDX header included: the same for MNIST and Fashion-MNIST. Reading stops
# here, whatever a file's header or gzip stream claims.
IDX_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
READ_CHUNK = 1 << 20  # bytes decompressed (or downloaded) at a time


@dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes one dataset from another: where it lives, what its classes are, what its images are."""

    name: str
    classes: tuple[str, ...]
    md5: dict[str, str]  # file stem -> MD5 of the uncompressed bytes
    mirrors: tuple[str, ...]  # base URLs, tried in order
    gz_sizes: dict[str, int] = field(default_factory=dict)  # file stem -> bytes of the published .gz file
    channels: int = 1
    image_size: tuple[int, int] = (28, 28)  # (height, width)

    @property
    def shape(self) -> InputShape:
        """The shape of the models trained on it."""
        return InputShape(len(self.classes), self.channels, self.image_size)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=tuple(str(i) for i in range(10)),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        gz_sizes={
            "train-images-idx3-ubyte": 9_912_422,
            "train-labels-idx1-ubyte": 28_881,
            "t10k-images-idx3-ubyte": 1_648_877,
            "t10k-labels-idx1-ubyte": 4_542,
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        gz_sizes={
            "train-images-idx3-ubyte": 26_421_880,
            "train-labels-idx1-ubyte": 29_515,
            "t10k-images-idx3-ubyte": 4_422_102,
            "t10k-labels-idx1-ubyte": 5_148,
        },
    ),
}


@dataclass
class Dataset:
    """One dataset in memory: uint8 images and int64 labels, for train and test. Images are (N, H, W) for one
    channel (MNIST's (N, 28, 28)) and (N, C, H, W) for more; `shape` says which, and a dataset built in code
    (a user's own images, a test's) has one through the same property."""

    name: str
    classes: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    sources: dict[str, str] = field(default_factory=dict)  # file stem -> path it was read from

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, labels) pair of the 'train' or 'test' split."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise DataError(f"unknown split {name!r}; choose 'train' or 'test'")

    @property
    def shape(self) -> InputShape:
        """Classes, channels and image size, read from the images themselves: what create_model is given.
        Train and test images must agree, and labels must name classes there are (a DataError otherwise)."""
        dims = tuple(self.train_images.shape[1:])
        if len(dims) not in (2, 3) or tuple(self.test_images.shape[1:]) != dims:
            raise DataError(f"{self.name}: images must be (N, H, W) or (N, C, H, W), the same for train and test; "
                            f"got {tuple(self.train_images.shape)} and {tuple(self.test_images.shape)}")
        for labels in (self.train_labels, self.test_labels):
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.classes):
                raise DataError(f"{self.name}: labels must be 0 to {len(self.classes) - 1}, one per class name")
        return InputShape(len(self.classes), 1 if len(dims) == 2 else dims[0], dims[-2:])


def get_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by name, or a clear error listing the known names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def cache_dir() -> Path:
    """The per-user folder where downloaded datasets are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitlab"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for a dataset's files, in order (see the module docstring)."""
    dirs: list[Path] = []
    explicit = data_dir or os.environ.get("DIGITLAB_DATA")
    if explicit:
        root = Path(explicit).expanduser()
        # Accept both the dataset folder itself and a parent holding one folder per dataset.
        dirs += [root / name, root]
    dirs += [REPO_DATA_DIR / name, cache_dir() / name, SYSTEM_DATA_DIR / name]
    return dirs


def find_file(stem: str, dirs: list[Path]) -> Path | None:
    """The first `stem` or `stem.gz` found in `dirs`, or None."""
    for d in dirs:
        for candidate in (d / f"{stem}.gz", d / stem):
            if candidate.is_file():
                return candidate
    return None


def read_bytes(path: Path, size: int | None = None) -> bytes | bytearray:
    """The uncompressed content of an IDX file, gzipped or not, read in chunks and never past `size` bytes
    (IDX_SIZES of its name by default): a larger file, or one whose header promises another size, is refused
    as soon as that shows. A shorter one is returned as it is, for the checksum to refuse."""
    size = size if size is not None else IDX_SIZES.get(path.name.removesuffix(".gz"))
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                raw.seek(0)
                return read_bounded(raw, path, size, os.fstat(raw.fileno()).st_size)
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as stream:
                return read_bounded(stream, path, size)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib.error: damaged deflate data
        raise DataError(f"{path}: cannot be read ({e}); delete it and let digitlab fetch it again") from e


def read_bounded(stream, path: Path, size: int | None, stored: int | None = None) -> bytes | bytearray:
    """At most `size` bytes of `stream` (all of it when no size is known), checked against the IDX header's
    promise first; `stored` is the file's size on disk when it is not compressed."""
    if size is None:
        return stream.read()
    if stored is not None and stored > size:
        raise too_large(path, size, f"is {stored:,} bytes, more")
    header = stream.read(4)
    if len(header) == 4 and header[:3] == b"\x00\x00\x08":
        header += stream.read(4 * header[3])
        promised = idx_size(header)
        if promised is not None and promised != size:
            raise DataError(f"{path}: its IDX header promises {promised:,} bytes, but a "
                            f"{path.name.removesuffix('.gz')} file has {size:,}; the file is corrupted or not "
                            "the dataset's. Delete it so digitlab can fetch it again, or replace it with the original")
    buf = bytearray(max(size, len(header)))
    buf[:len(header)] = header
    filled = len(header) + read_into(stream, memoryview(buf)[len(header):size])
    if filled > size or stream.read(1):
        raise too_large(path, size, "holds more")
    return buf if filled == len(buf) else buf[:filled]


def read_into(stream, view: memoryview) -> int:
    """Fill `view` from `stream` a chunk at a time (a gzip stream inflates no more than each chunk asks for);
    the bytes read, fewer at the end of the stream."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:filled + READ_CHUNK])
        if not n:
            break
        filled += n
    return filled


def idx_size(header: bytes) -> int | None:
    """The bytes an IDX file of unsigned bytes promises (header included), or None for an incomplete header."""
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return None
    count = 1
    for i in range(ndim):
        count *= int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big")
    return 4 + 4 * ndim + count


def too_large(path: Path, size: int, what: str) -> DataError:
    return DataError(f"{path}: {what} than the {size:,} bytes of a {path.name.removesuffix('.gz')} file "
                     "uncompressed; refused before reading further (a damaged file, or one built to fill memory). "
                     "Delete it so digitlab can fetch it again, or replace it with the original")


def parse_idx(raw: bytes | bytearray, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (uint8 payload) into an array whose shape comes from the header."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{source}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: IDX header is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{source}: has {len(raw)} bytes but its header promises {expected}; "
                        "the file is truncated or corrupted")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def download(spec: DatasetSpec, stem: str, dest_dir: Path, progress: bool = True) -> Path:
    """Fetch `stem.gz` from the first mirror that answers into `dest_dir`, atomically, stopping at the published
    size of the file (download_cap): a mirror sending more is refused before it fills the disk. The progress bar
    shows only on a terminal: redrawn into a log file or a pipe it is noise."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{stem}.gz"
    errors = []
    for base in spec.mirrors:
        url = base + f"{stem}.gz"
        try:
            tmp = fetch_capped(url, dest_dir, f"{stem}.gz", download_cap(spec, stem), progress)
            os.replace(tmp, dest)
            return dest
        except OSError as e:
            errors.append(f"{url}: {e}")
    raise DataError(f"could not download {stem}.gz for {spec.name}: " + "; ".join(errors))


def download_cap(spec: DatasetSpec, stem: str) -> int:
    """The most bytes a download of `stem.gz` may have: its published size, else (a mirror of other files) what
    gzip can make of the file's uncompressed size at worst (stored blocks: a few bytes per 64 KiB, plus headers)."""
    if stem in spec.gz_sizes:
        return spec.gz_sizes[stem]
    size = IDX_SIZES.get(stem, 64 << 20)
    return size + size // 1000 + 1024


class DownloadTooLarge(OSError):
    """A mirror announced or sent more than the file's known size."""


def fetch_capped(url: str, dest_dir: Path, name: str, cap: int, progress: bool) -> str:
    """Download `url` into a temporary file in `dest_dir`, at most `cap` bytes; its path. Anything larger (by
    Content-Length, or by what arrives) is a DownloadTooLarge, and the partial file is removed."""
    from tqdm.auto import tqdm

    from digitlab import bars

    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total is not None and total > cap:
            raise DownloadTooLarge(f"the mirror announces {total:,} bytes, more than the {cap:,} of {name}")
        fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=name,
                                                   disable=not bars.wanted(progress)) as bar:
                received = 0
                while chunk := response.read(min(READ_CHUNK, cap + 1 - received)):
                    received += len(chunk)
                    if received > cap:
                        raise DownloadTooLarge(f"the mirror sent more than the {cap:,} bytes of {name}; stopped")
                    out.write(chunk)
                    bar.update(len(chunk))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return tmp


def locate(name: str, data_dir: str | os.PathLike | None = None, download_missing: bool = True,
           progress: bool = True) -> dict[str, Path]:
    """Paths of the four files of a dataset, downloading the missing ones into the user cache."""
    spec = get_spec(name)
    dirs = search_dirs(name, data_dir)
    paths: dict[str, Path] = {}
    for stem in spec.md5:
        path = find_file(stem, dirs)
        if path is None and download_missing:
            try:
                path = download(spec, stem, cache_dir() / name, progress=progress)
            except DataError as e:
                raise DataError(f"{stem} for {name} was not found in {', '.join(map(str, dirs))} "
                                f"and {e}. Put the four IDX files in one of those folders or pass "
                                "--data-dir.") from None
        if path is None:
            raise DataError(f"{stem} for {name} was not found in {', '.join(map(str, dirs))}")
        paths[stem] = path
    return paths


def read_verified(path: Path, expected_md5: str, size: int | None = None) -> np.ndarray:
    """Read one IDX file (at most `size` bytes uncompressed: read_bytes), refusing it unless its uncompressed MD5
    is the published one."""
    raw = read_bytes(path, size)
    digest = hashlib.md5(raw).hexdigest()
    if digest != expected_md5:
        raise DataError(f"{path}: checksum mismatch (MD5 {digest}, expected {expected_md5}); the file "
                        "is truncated or corrupted. Delete it so digitlab can fetch it again, or replace "
                        "it with the original")
    return parse_idx(raw, str(path))


def decoded_path(name: str, stem: str, md5: str, source: Path) -> Path:
    """Where the decoded copy of a verified file lives: named by the MD5 of its content and by the source file
    as it is now (size, mtime), so a rewritten or damaged source never reads a copy of the good one."""
    st = source.stat()
    stamp = hashlib.sha1(f"{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "decoded" / name / f"{stem}.{md5}.{stamp}.npy"


def read_decoded(path: Path) -> np.ndarray | None:
    """A decoded copy written by write_decoded, or None if there is none or it is not a readable uint8 array."""
    if os.environ.get("DIGITLAB_DECODED_CACHE", "1") == "0" or not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return array if array.dtype == np.uint8 and array.ndim in (1, 3) else None


def write_decoded(path: Path, array: np.ndarray) -> None:
    """Keep a verified array decoded (atomically, so a reader never sees half a file); a read-only or full
    cache only means the next load decodes again."""
    if os.environ.get("DIGITLAB_DECODED_CACHE", "1") == "0":
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return
    stem = path.name.split(".", 1)[0]
    for older in path.parent.glob(f"{stem}.*.npy"):  # one copy per file: copies of the data elsewhere (a test's
        if older != path:  # temporary folder, another checkout) replace it instead of piling up
            with contextlib.suppress(OSError):
                older.unlink()


def read_verified_cached(name: str, stem: str, path: Path, expected_md5: str) -> np.ndarray:
    """read_verified, through the decoded copy of the file when one exists (see the module docstring)."""
    cached = decoded_path(name, stem, expected_md5, path)
    array = read_decoded(cached)
    if array is None:
        array = read_verified(path, expected_md5, IDX_SIZES.get(stem))
        write_decoded(cached, array)
    return array


_CACHE: dict[tuple[str, tuple[str, ...]], Dataset] = {}


def load_dataset(name: str = "mnist", data_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> Dataset:
    """Load a dataset (train and test) as uint8 image tensors and int64 labels."""
    spec = get_spec(name)
    paths = locate(name, data_dir, progress=progress)
    key = (name, tuple(str(p) for p in paths.values()))
    if key in _CACHE:  # reading and hashing 55 MB costs about a second; do it once per process
        return _CACHE[key]
    arrays = {stem: read_verified_cached(name, stem, path, spec.md5[stem]) for stem, path in paths.items()}
    tensors = {stem: torch.from_numpy(a if a.flags.writeable else a.copy()) for stem, a in arrays.items()}
    ds = Dataset(
        name=name,
        classes=spec.classes,
        train_images=tensors["train-images-idx3-ubyte"],
        train_labels=tensors["train-labels-idx1-ubyte"].long(),
        test_images=tensors["t10k-images-idx3-ubyte"],
        test_labels=tensors["t10k-labels-idx1-ubyte"].long(),
        sources={stem: str(p.resolve()) for stem, p in paths.items()},
    )
    for split in ("train", "test"):
        images, labels = ds.split(split)
        if images.shape[0] != labels.shape[0] or tuple(images.shape[1:]) != spec.shape.pixels:
            raise DataError(f"{name} {split}: {tuple(images.shape)} images for {labels.shape[0]} labels")
    _CACHE[key] = ds
    return ds


def dataset_info(ds: Dataset) -> dict:
    """Plain-data description of a loaded dataset: sizes, shape, classes, counts, sources."""
    def counts(labels: torch.Tensor) -> list[int]:
        return torch.bincount(labels, minlength=len(ds.classes)).tolist()

    return {
        "name": ds.name,
        "train_size": int(ds.train_images.shape[0]),
        "test_size": int(ds.test_images.shape[0]),
        "image_shape": list(ds.train_images.shape[1:]),
        "dtype": str(ds.train_images.dtype).replace("torch.", ""),
        "classes": list(ds.classes),
        "train_counts": counts(ds.train_labels),
        "test_counts": counts(ds.test_labels),
        "train_pixel_mean": round(ds.train_images.float().mean().item() / 255, 4),
        "train_pixel_std": round(ds.train_images.float().std().item() / 255, 4),
        "sources": ds.sources,
    }

