"""The IDX reader, checksums, the file search order and the download path, on the real files."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import shutil
import threading
import tracemalloc
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from digitlab import data
from digitlab.errors import DataError
from helpers import MNIST_DIR, REPO, FileServer, fashion_dir

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, tmp_path):
    """Each test sees an empty user cache and no DIGITLAB_DATA, and no in-process dataset cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)
    monkeypatch.setattr(data, "_CACHE", {})


@pytest.mark.quick
def test_mnist_loads_with_published_counts():
    ds = data.load_dataset("mnist")
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_labels.dtype == torch.int64
    assert torch.bincount(ds.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(ds.test_labels).tolist() == MNIST_TEST_COUNTS
    assert all(Path(p).parent == REPO / "data" / "mnist" for p in ds.sources.values())


def test_fashion_mnist_loads_with_class_names():
    ds = data.load_dataset("fashion-mnist", fashion_dir())
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10


def test_reads_uncompressed_files(tmp_path):
    for src in MNIST_DIR.glob("*.gz"):
        (tmp_path / src.stem).write_bytes(gzip.decompress(src.read_bytes()))
    ds = data.load_dataset("mnist", tmp_path)
    assert ds.sources["t10k-labels-idx1-ubyte"].endswith("t10k-labels-idx1-ubyte")
    assert torch.bincount(ds.test_labels).tolist() == MNIST_TEST_COUNTS


def copy_mnist(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for src in MNIST_DIR.glob("*.gz"):
        shutil.copy(src, dest / src.name)
    assert len(list(dest.glob("*.gz"))) == 4, f"MNIST's four files are not all in {MNIST_DIR}"
    return dest


def test_truncated_file_is_a_clear_error(tmp_path):
    folder = copy_mnist(tmp_path / "mnist")
    target = folder / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*checksum mismatch"):
        data.load_dataset("mnist", tmp_path)


def test_truncated_gzip_stream_is_a_clear_error(tmp_path):
    folder = copy_mnist(tmp_path / "mnist")
    target = folder / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot be read"):
        data.load_dataset("mnist", tmp_path)


def test_corrupted_byte_is_a_checksum_mismatch(tmp_path):
    folder = copy_mnist(tmp_path / "mnist")
    target = folder / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[5000] ^= 0xFF
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="MD5"):
        data.load_dataset("mnist", tmp_path)


@pytest.mark.quick
def test_parse_idx_checks_magic_and_length():
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    assert data.parse_idx(good).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="magic"):
        data.parse_idx(bytes([0, 0, 9, 1]) + good[4:])
    with pytest.raises(DataError, match="truncated"):
        data.parse_idx(good[:-1])


@pytest.mark.quick
def test_search_order(tmp_path, monkeypatch):
    explicit = copy_mnist(tmp_path / "explicit" / "mnist")
    cache = copy_mnist(tmp_path / "cache" / "digitlab" / "mnist")
    system = copy_mnist(tmp_path / "system" / "mnist")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    empty_repo = tmp_path / "repo-data"
    # 1. explicit folder wins over everything
    assert data.locate("mnist", tmp_path / "explicit")["t10k-labels-idx1-ubyte"].parent == explicit
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path / "explicit"))
    assert data.locate("mnist")["t10k-labels-idx1-ubyte"].parent == explicit
    monkeypatch.delenv("DIGITLAB_DATA")
    # 2. then the repo's data/ folder
    assert data.locate("mnist")["t10k-labels-idx1-ubyte"].parent == REPO / "data" / "mnist"
    # 3. then the user cache, 4. then the system folder
    monkeypatch.setattr(data, "REPO_DATA_DIR", empty_repo)
    assert data.locate("mnist")["t10k-labels-idx1-ubyte"].parent == cache
    shutil.rmtree(cache)
    assert data.locate("mnist")["t10k-labels-idx1-ubyte"].parent == system


@pytest.mark.quick
def test_missing_files_name_where_digitlab_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "nothing")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "nothing")
    spec = data.DatasetSpec("mnist", data.DATASETS["mnist"].classes, data.DATASETS["mnist"].md5,
                            ("http://127.0.0.1:9/",))  # port 9 (discard): connection refused at once
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    with pytest.raises(DataError) as err:
        data.load_dataset("mnist", progress=False)
    message = str(err.value)
    assert "was not found in" in message and str(tmp_path / "nothing") in message and "--data-dir" in message


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a copy of the MNIST files."""
    root = copy_mnist(tmp_path / "mirror")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = FileServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def use_mirror(monkeypatch, tmp_path, url: str) -> None:
    monkeypatch.setattr(data, "REPO_DATA_DIR", tmp_path / "nothing")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "nothing")
    spec = data.DATASETS["mnist"]
    monkeypatch.setitem(data.DATASETS, "mnist", data.DatasetSpec("mnist", spec.classes, spec.md5, (url,)))


def test_download_from_mirror_into_cache(mirror, monkeypatch, tmp_path):
    root, url = mirror
    use_mirror(monkeypatch, tmp_path, url)
    ds = data.load_dataset("mnist", progress=False)
    cached = tmp_path / "cache" / "digitlab" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in root.iterdir())
    assert torch.bincount(ds.test_labels).tolist() == MNIST_TEST_COUNTS
    assert not list(cached.glob("*.tmp"))


def test_download_with_checksum_mismatch_is_refused(mirror, monkeypatch, tmp_path):
    root, url = mirror
    bad = root / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(bad.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10
    bad.write_bytes(gzip.compress(bytes(raw)))
    use_mirror(monkeypatch, tmp_path, url)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: checksum mismatch"):
        data.load_dataset("mnist", progress=False)


def test_shipped_files_match_published_checksums():
    for stem, md5 in data.DATASETS["mnist"].md5.items():
        raw = gzip.decompress((REPO / "data" / "mnist" / f"{stem}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5


@pytest.mark.quick
def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="choose one of: mnist, fashion-mnist"):
        data.load_dataset("kmnist")


# ---- hostile files: a gzip bomb, a header that lies, a mirror that never stops --------------------------------

def gzip_bomb(path: Path, header: bytes, zeros: int) -> None:
    """`header` followed by `zeros` zero bytes, gzipped: 200 MB of zeros compress to about 200 KB."""
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        for _ in range(zeros // len(chunk)):
            f.write(chunk)


def peak_python_memory(call) -> int:
    """Peak bytes Python allocated while `call()` ran (it is expected to raise DataError)."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    peak_python_memory.error = str(err.value)
    return peak


def read_as_loading_does(path: Path) -> np.ndarray:
    """What load_dataset does with each file it found (its other files would count in a memory peak)."""
    stem = path.name.removesuffix(".gz")
    return data.read_verified_cached("mnist", stem, path, data.DATASETS["mnist"].md5[stem])


def test_gzip_bomb_is_refused_once_past_the_files_known_size(tmp_path):
    bomb = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels_header = bytes([0, 0, 8, 1]) + (10_000).to_bytes(4, "big")  # a true header: 10,008 bytes promised
    gzip_bomb(bomb, labels_header, 200 << 20)
    peak = peak_python_memory(lambda: read_as_loading_does(bomb))
    assert "t10k-labels-idx1-ubyte.gz: holds more than the 10,008 bytes" in peak_python_memory.error
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated to refuse a 200 MB bomb"


@pytest.mark.quick
def test_idx_header_promising_another_size_is_refused_before_reading_on(tmp_path):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    huge = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (1 << 20, 56, 56))  # 3 GiB promised
    gzip_bomb(bomb, huge, 64 << 20)
    peak = peak_python_memory(lambda: read_as_loading_does(bomb))
    assert "header promises 3,288,334,352 bytes, but a train-images-idx3-ubyte file has 47,040,016" \
        in peak_python_memory.error
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated to refuse a lying header"


def test_uncompressed_file_larger_than_its_known_size_is_refused_unread(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for src in MNIST_DIR.glob("*.gz"):
        (folder / src.stem).write_bytes(gzip.decompress(src.read_bytes()))
    with open(folder / "t10k-labels-idx1-ubyte", "ab") as f:
        f.truncate(1 << 30)  # a sparse GiB: nothing to read but the size
    with pytest.raises(DataError, match="is 1,073,741,824 bytes, more than the 10,008 bytes"):
        data.load_dataset("mnist", tmp_path)


@pytest.mark.quick
def test_download_announcing_more_than_the_published_size_is_refused(mirror, monkeypatch, tmp_path):
    root, url = mirror
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(1 << 20))
    use_mirror(monkeypatch, tmp_path, url)
    monkeypatch.setitem(data.DATASETS, "mnist", replace(data.DATASETS["mnist"], gz_sizes=MNIST_GZ_SIZES))
    with pytest.raises(DataError, match="announces 1,048,576 bytes, more than the 4,542 of t10k-labels"):
        data.load_dataset("mnist", progress=False)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


class EndlessResponse:
    """A mirror's answer with no Content-Length that goes on far past the file's size: zeros, up to 64 MB (so
    that a download without a cap fails this test instead of filling the disk)."""

    headers: dict = {}
    sent = 0

    def read(self, n: int) -> bytes:
        n = min(n, (64 << 20) - EndlessResponse.sent)
        EndlessResponse.sent += n
        return bytes(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.mark.quick
def test_download_stops_at_the_published_size(monkeypatch, tmp_path):
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: EndlessResponse())
    spec = replace(data.DATASETS["mnist"], mirrors=("http://mirror.invalid/",), gz_sizes=MNIST_GZ_SIZES)
    with pytest.raises(DataError, match="sent more than the 9,912,422 bytes of train-images-idx3-ubyte.gz"):
        data.download(spec, "train-images-idx3-ubyte", tmp_path, progress=False)
    assert EndlessResponse.sent <= 9_912_423 and not list(tmp_path.iterdir())


MNIST_GZ_SIZES = {"train-images-idx3-ubyte": 9_912_422, "train-labels-idx1-ubyte": 28_881,
                  "t10k-images-idx3-ubyte": 1_648_877, "t10k-labels-idx1-ubyte": 4_542}
