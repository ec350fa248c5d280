"""benchmarks/real_writers.py reads scikit-learn's digits the way `digitlab predict` reads a user's image files.

Its figures say how digitlab reads other writers only if the set is loaded with the right labels, each digit
becomes the picture a user would hand in (dark ink on white, 64x64, bicubic) and the files go through the same
preprocessing and model as `digitlab predict FILE`. These tests pin all three, and the shape measures' signs.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.predict import Predictor
from digitlab.preprocess import to_mnist

ROOT = Path(__file__).resolve().parents[1]
# scikit-learn's 1,797 digits per class, as its documentation and the bundled file give them
COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
# Digits the shipped model reads right (0, 8) and misreads (5 -> 3, 8 -> 1, 4 -> 6, 9 -> 3, 5 -> 9)
SAMPLE = [0, 8, 5, 129, 876, 1038, 1575]


def _import_benchmark(name: str = "real_writers"):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rw = _import_benchmark()


@pytest.fixture(scope="module")
def writers() -> tuple[np.ndarray, np.ndarray]:
    return rw.load_writers()


@pytest.fixture(scope="module")
def sample_files(writers, tmp_path_factory) -> list[Path]:
    """A few digits written as the benchmark writes them: the PNG files a user would have."""
    digits, _ = writers
    return rw.write_pictures(digits[SAMPLE], tmp_path_factory.mktemp("writers"))


#### The set


def bundled_csv() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits file read directly (64 pixels then the label per row), without load_digits."""
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    return rows[:, :64].reshape(-1, 8, 8), rows[:, 64].astype(np.int64)


def test_loader_gives_the_1797_digits_with_their_labels(writers):
    digits, labels = writers
    assert digits.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert digits.min() == 0 and digits.max() == 16
    assert np.bincount(labels, minlength=10).tolist() == COUNTS
    raw_digits, raw_labels = bundled_csv()
    np.testing.assert_array_equal(digits, raw_digits)  # each image beside its own label: nothing shuffled
    np.testing.assert_array_equal(labels, raw_labels)
    assert labels[:10].tolist() == list(range(10))


#### The picture


def test_picture_is_dark_ink_on_white_upscaled_bicubic_to_64():
    digit = np.zeros((8, 8))
    digit[1:7, 3:5] = 16  # a full-ink bar
    digit[1:7, 2] = 8  # half ink beside it
    picture = rw.as_picture(digit)
    assert picture.mode == "L" and picture.size == (64, 64)
    small = np.array([[(255 * (16 - int(v)) + 8) // 16 for v in row] for row in digit], np.uint8)  # 17 levels
    assert small[1, 3] == 0 and small[0, 0] == 255 and small[1, 2] == 128  # dark ink, white paper, half ink
    expected = np.asarray(Image.fromarray(small).resize((64, 64), Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(picture), expected)
    for other in (Image.NEAREST, Image.BILINEAR, Image.LANCZOS):
        assert not np.array_equal(np.asarray(Image.fromarray(small).resize((64, 64), other)), expected)
    assert np.asarray(picture)[:4].min() == 255  # paper stays white above the ink
    assert np.asarray(picture)[24:40, 28:36].max() == 0  # the full-ink bar is black


def test_blank_and_full_digits_are_white_and_black():
    assert np.asarray(rw.as_picture(np.zeros((8, 8)))).min() == 255
    assert np.asarray(rw.as_picture(np.full((8, 8), 16.0))).max() == 0


def test_files_hold_the_pictures_exactly(writers, sample_files):
    digits, _ = writers
    for path, i in zip(sample_files, SAMPLE):
        with Image.open(path) as im:
            assert im.format == "PNG"
            np.testing.assert_array_equal(np.asarray(im), np.asarray(rw.as_picture(digits[i])))


def test_mnist_made_like_the_set_fills_32_rows_and_24_columns_at_17_levels():
    block = np.zeros((28, 28), np.uint8)
    block[4:24, 10:18] = 255  # any box of ink: stretched, it fills the set's box
    digit = rw.as_writer_digit(block)
    assert digit.shape == (8, 8)
    np.testing.assert_array_equal(digit[:, 1:7], 16)  # 32 rows, columns 4..27 of the 32x32 bitmap: all ink
    np.testing.assert_array_equal(digit[:, [0, 7]], 0)
    slash = np.zeros((28, 28), np.uint8)
    for r in range(4, 24):
        slash[r, 20 - r // 2:23 - r // 2] = 255
    counts = rw.as_writer_digit(slash)
    assert set(np.unique(counts)) <= set(range(17)) and 0 < counts.sum() < 16 * 48  # block counts, partly ink
    assert counts[0, 5:7].sum() > 0 and counts[7, 1:3].sum() > 0  # the top right and the bottom left reach the box


#### The reading


def test_reading_is_predictors_on_the_saved_files(sample_files):
    predictor = rw.load_predictor(None)
    seen, probs, errors = rw.read_files(predictor, sample_files)
    assert not errors
    shipped = Predictor.from_shipped(threads=1)  # what `digitlab predict` loads without a run
    assert predictor.describe() == shipped.describe()  # the same model on the same runtime
    for k, path in enumerate(sample_files):
        np.testing.assert_array_equal(seen[k], to_mnist(path))
        [expected] = shipped.predict(str(path))
        assert probs[k].tolist() == pytest.approx(expected.probabilities, abs=0)
        assert rw.labels_of(probs)[k] == expected.top_k[0][0]  # the digit read, also where it is refused


def test_reading_is_what_digitlab_predict_prints(sample_files):
    """The command itself, in a fresh process: the same labels and probabilities as the benchmark's reading."""
    _, probs, _ = rw.read_files(rw.load_predictor(None), sample_files)
    out = subprocess.run([sys.executable, "-m", "digitlab", "predict", *map(str, sample_files), "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [Path(p["file"]).name for p in printed] == [p.name for p in sample_files]
    assert [p["top_k"][0][0] for p in printed] == rw.labels_of(probs).tolist()  # read, refused or not
    for row, p in zip(probs, printed):
        assert row.tolist() == pytest.approx(p["probabilities"], abs=1e-6)
    # the sample holds both kinds: digits read right and misread (so a reading that inverts polarity would show)
    truth = [int(rw.load_writers()[1][i]) for i in SAMPLE]
    assert [p["label"] for p in printed] != truth and sum(p["label"] == t for p, t in zip(printed, truth)) >= 2


#### The shape measures


def test_shape_measures_on_drawn_strokes():
    upright = np.zeros((28, 28), np.uint8)
    upright[4:24, 12:15] = 255  # a stroke 3 wide, 20 tall
    assert rw.box_aspect(upright) == pytest.approx(3 / 20)
    assert rw.slant(upright) == pytest.approx(0)
    assert 2.4 < rw.stroke_width(upright) < 3.0  # 3, less its two ends
    leaning = np.zeros((28, 28), np.uint8)
    for r in range(4, 24):  # the top to the right: a slash
        c = round(20 - (r - 4) * 0.5)
        leaning[r, c:c + 3] = 255
    assert rw.slant(leaning) == pytest.approx(0.5, abs=0.05)
    assert rw.slant(leaning[:, ::-1]) == pytest.approx(-0.5, abs=0.05)
    assert rw.grey_share(upright) == 0


#### MNIST stretched to fill a box, as writer sets are made (benchmarks/tight_crops.py)


def test_box_stretched_fills_the_box_and_box_kept_keeps_the_shape():
    crops = _import_benchmark("tight_crops")
    ell = np.zeros((28, 28), np.uint8)
    ell[4:24, 9:12] = 255  # an L: 10 wide, 20 tall
    ell[21:24, 9:19] = 255
    stretched, kept = crops.in_box(ell, keep_aspect=False), crops.in_box(ell, keep_aspect=True)
    for box in (stretched, kept):
        assert box.shape == (16, 16) and set(np.unique(box)) == {0, 255}  # thresholded: ink and paper only
        assert box[:, 4:12].any(axis=1).all()  # top to bottom
    assert stretched[:, 0].all() and stretched[-1].all() and stretched[:, -1].any()  # touches all four edges
    cols = np.flatnonzero(kept.any(axis=0))
    assert (cols[0], cols[-1]) == (4, 11)  # 8 wide for 16 tall, centred
    picture = crops.VARIANTS["box_stretched"](ell, 0)
    assert picture.size == (64, 64) and np.asarray(picture)[0, 0] == 0  # dark ink on white, upscaled 4x
    assert np.asarray(picture)[0, -1] == 255
