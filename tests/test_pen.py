"""digitlab.pen (procedural handwritten digits) and benchmarks/style_shift.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from digitlab import pen
from digitlab.predict import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import style_shift  # noqa: E402  (a benchmark script, not a package)


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.from_run()


#### Reproducibility and seed ranges


@pytest.mark.quick
def test_same_seed_same_digits_and_each_sample_has_its_own_seed():
    images, labels, styles = pen.generate(12, 4242)
    again = pen.generate(12, 4242)
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1]) and styles == again[2]
    tail = pen.generate(5, 4242 + 7)  # per-sample seeds: a sub-range of seeds is a sub-set of the digits
    assert np.array_equal(tail[0], images[7:]) and tail[2] == styles[7:]
    other = pen.generate(12, 4243)[0]
    assert not np.array_equal(other, images)


@pytest.mark.quick
def test_seed_ranges_are_disjoint_and_overlaps_are_refused():
    assert len(pen.overlap(pen.TRAIN_SEEDS, pen.BENCHMARK_SEEDS)) == 0
    assert pen.seed_range(10, 5) == range(10, 15)
    assert pen.overlap(range(0, 10), range(5, 20)) == range(5, 10)
    pen.check_disjoint(range(0, 10), range(10, 20))  # touching is not overlapping
    with pytest.raises(pen.PenError, match="share 1 seeds"):
        pen.check_disjoint(range(0, 11), range(10, 20))
    assert pen.check_training_range(0, 1000) == range(0, 1000)
    with pytest.raises(pen.PenError, match="benchmark"):
        pen.check_training_range(pen.BENCHMARK_SEED_BASE - 5, 10)
    with pytest.raises(pen.PenError, match="must lie in"):
        pen.check_training_range(pen.TRAIN_SEEDS.stop - 5, 10)
    with pytest.raises(pen.PenError, match="training range"):  # the benchmark refuses training seeds
        style_shift.make_set(10, 0, 64, "dark", list(pen.MODES))


#### What is generated


@pytest.mark.quick
def test_shapes_dtypes_and_balanced_labels():
    images, labels, styles = pen.generate(30, 1000, size=40)
    assert images.shape == (30, 40, 40) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [s % 10 for s in range(1000, 1030)]
    assert len(styles) == 30
    empty = pen.generate(0, 5)
    assert empty[0].shape == (0, 64, 64) and empty[1].shape == (0,) and empty[2] == []


def test_every_style_is_produced_and_labelled_with_its_digit():
    names = list(pen.STYLES)
    images, labels, styles = pen.generate(2 * len(names), 10 * len(names), styles=names)  # style = seed % 24
    assert styles == names * 2
    assert labels.tolist() == [int(s[0]) for s in styles] == [pen.STYLES[s][0] for s in styles]
    assert all(np.median(image) - image.min() > 60 for image in images)  # every style leaves ink (pencil is grey)
    _, labels, styles = pen.generate(600, 0)  # the unfiltered draw reaches every style
    assert set(styles) == set(names)
    assert all(int(s[0]) == label for s, label in zip(styles, labels))
    assert {d for d in range(10)} == {pen.STYLES[s][0] for s in names}


@pytest.mark.quick
@pytest.mark.parametrize("mode", pen.MODES)
def test_polarity(mode):
    dark = pen.generate(10, 300, polarity="dark", modes=[mode])[0].astype(int)
    light = pen.generate(10, 300, polarity="light", modes=[mode])[0].astype(int)
    for d, li in zip(dark, light):
        border_d = np.concatenate([d[0], d[-1], d[:, 0], d[:, -1]])
        border_l = np.concatenate([li[0], li[-1], li[:, 0], li[:, -1]])
        assert np.median(border_d) >= 220 and d.min() < 120  # light paper, dark ink
        assert np.median(border_l) == 0 and li.max() > 100  # dark paper, light ink
        assert np.corrcoef(d.ravel(), li.ravel())[0, 1] < -0.9  # the same strokes, inverted


@pytest.mark.quick
@pytest.mark.parametrize("kwargs, message", [
    ({"n": -1}, "0 or more"), ({"polarity": "blue"}, "polarity"), ({"styles": ["1_fancy"]}, "unknown style"),
    ({"styles": []}, "unknown style"), ({"modes": ["tablet"]}, "unknown mode"), ({"size": 8}, "at least 16"),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    args = {"n": 3, "seed": 0, **kwargs}
    with pytest.raises(pen.PenError, match=message):
        pen.generate(**args)


def test_no_font_is_ever_loaded(monkeypatch):
    """Digits from fonts would contaminate the independent font-based evaluation: pen must draw strokes."""
    def refuse(*args, **kwargs):
        raise AssertionError("digitlab.pen loaded a font")

    for name in ("truetype", "load", "load_path", "load_default", "load_default_imagefont"):
        monkeypatch.setattr(ImageFont, name, refuse, raising=False)
    monkeypatch.setattr(ImageFont.FreeTypeFont, "__init__", refuse)
    monkeypatch.setattr(ImageFont.ImageFont, "_load_pilfont", refuse)
    for mode in pen.MODES:
        images, _, _ = pen.generate(len(pen.STYLES), 9000, styles=list(pen.STYLES), modes=[mode])
        assert all(np.median(image) - image.min() > 60 for image in images)


#### Recognisable


def test_the_shipped_model_reads_the_plain_styles(shipped):
    """A broken generator (labels swapped, blank or scrambled strokes) fails this; MNIST-like styles pass."""
    images, labels, styles = pen.generate(200, 123_000, styles=list(pen.PLAIN_STYLES))
    predicted = np.array([p.label for p in shipped.predict(list(images))])
    assert set(styles) == set(pen.PLAIN_STYLES)
    assert (predicted == labels).mean() >= 0.9


def test_style_shift_report_json(capsys, tmp_path):
    grid = tmp_path / "grid.png"
    code = style_shift.main(["--count", "40", "--seed", str(pen.BENCHMARK_SEED_BASE), "--json",
                             "--save-grid", str(grid)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["count"] == 40 and 0.5 <= report["accuracy"] <= 1
    assert [row["digit"] for row in report["per_digit"]] == [str(d) for d in range(10)]
    assert sum(row["images"] for row in report["per_style"]) == 40
    matrix = np.array(report["confusion"])
    assert matrix.sum() == 40 and matrix.trace() / 40 == pytest.approx(report["accuracy"])
    assert grid.stat().st_size > 1000


@pytest.mark.quick
def test_tight_crop_cuts_to_the_ink():
    image = np.full((64, 64), 240, np.uint8)
    image[10:30, 20:25] = 20
    assert style_shift.tight_crop(image, "dark").shape == (20, 5)
    assert style_shift.tight_crop(255 - image, "light").shape == (20, 5)
    blurred = style_shift.tight_crop(image, "dark", blur=1.0)
    assert blurred.shape == (20, 5) and blurred.min() >= 20


def test_an_image_the_preprocessing_refuses_is_counted_wrong_not_fatal(shipped):
    images = list(pen.generate(3, 500)[0])
    images.insert(1, np.full((64, 64), 200, np.uint8))  # blank paper: to_mnist finds no digit
    labels, errors = style_shift.predict_all(shipped, images)
    assert labels[1] == -1 and list(errors) == [1] and "no digit" in errors[1]
    assert (labels[[0, 2, 3]] >= 0).all()
    matrix = style_shift.confusion(np.array([0, 1, 2, 3]), labels)
    assert matrix.shape == (10, 11) and matrix[1, 10] == 1 and matrix.sum() == 4
