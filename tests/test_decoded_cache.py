"""The decoded dataset cache (data.py): a verified IDX file is read back from its .npy copy, and a changed,
damaged or missing source is never hidden by a copy of the good one."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from digitlab import data
from digitlab.errors import DataError

REPO_MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist"


@pytest.fixture()
def mnist_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of MNIST's files and an empty user cache, and no dataset cached in this process."""
    folder = tmp_path / "data" / "mnist"
    shutil.copytree(REPO_MNIST, folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DIGITLAB_DECODED_CACHE", raising=False)
    monkeypatch.setattr(data, "_CACHE", {})
    return folder


def test_second_load_reads_the_decoded_copy(mnist_copy, monkeypatch):
    first = data.load_dataset("mnist", mnist_copy)
    copies = sorted((data.cache_dir() / "decoded" / "mnist").glob("*.npy"))
    assert len(copies) == 4
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.setattr(data, "read_verified", lambda *a: pytest.fail("the IDX file was decoded again"))
    second = data.load_dataset("mnist", mnist_copy)
    assert second.train_images.equal(first.train_images) and second.test_labels.equal(first.test_labels)


def test_a_damaged_source_is_still_refused(mnist_copy, monkeypatch):
    data.load_dataset("mnist", mnist_copy)  # leaves decoded copies of the good files
    monkeypatch.setattr(data, "_CACHE", {})
    target = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[100] ^= 1
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_dataset("mnist", mnist_copy)


def test_a_broken_copy_falls_back_to_the_file(mnist_copy, monkeypatch):
    first = data.load_dataset("mnist", mnist_copy)
    for copy in (data.cache_dir() / "decoded" / "mnist").glob("*.npy"):
        copy.write_bytes(b"not an array")
    monkeypatch.setattr(data, "_CACHE", {})
    again = data.load_dataset("mnist", mnist_copy)
    assert again.train_images.equal(first.train_images)


@pytest.mark.quick
def test_cache_can_be_turned_off(mnist_copy, monkeypatch):
    monkeypatch.setenv("DIGITLAB_DECODED_CACHE", "0")
    data.load_dataset("mnist", mnist_copy)
    assert not (data.cache_dir() / "decoded").exists()


def test_one_copy_per_file_is_kept(mnist_copy, monkeypatch, tmp_path):
    data.load_dataset("mnist", mnist_copy)
    other = tmp_path / "other" / "mnist"
    shutil.copytree(mnist_copy, other, copy_function=shutil.copy)  # new modification times: a different stamp
    monkeypatch.setattr(data, "_CACHE", {})
    data.load_dataset("mnist", other)
    assert len(list((data.cache_dir() / "decoded" / "mnist").glob("*.npy"))) == 4
