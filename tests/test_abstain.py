"""Refusing non-digits: the generator, the fitting (validation only), and label null through predict and the API."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitlab import non_digits
from digitlab.abstain import NOT_A_DIGIT, TOO_SMALL, Abstention, Scored, fit_abstention, model_score, thickness
from digitlab.predict import Predictor

# Drawings in canvas fractions (0..1), as a person draws them on the page: one stroke per list
DOT = [[(0.5, 0.5)]]
LETTER_K = [[(0.3, 0.15), (0.3, 0.85)], [(0.7, 0.15), (0.3, 0.55), (0.72, 0.85)]]
SCRIBBLE = [[(0.2, 0.3), (0.8, 0.25), (0.25, 0.45), (0.8, 0.5), (0.2, 0.65), (0.75, 0.75), (0.3, 0.8)]]
NON_DIGITS = {"dot": (DOT, TOO_SMALL), "letter K": (LETTER_K, NOT_A_DIGIT), "scribble": (SCRIBBLE, NOT_A_DIGIT)}
# A file has no canvas to be small on (a 12-pixel digit on a scanned page is a digit): its dot is a thick blob
FILE_REASONS = {"dot": TOO_SMALL, "letter K": NOT_A_DIGIT, "scribble": NOT_A_DIGIT}


def canvas_of(strokes: list) -> np.ndarray:
    """The page's 280x280 canvas after these strokes (pointer events every 4 px)."""
    rng = np.random.default_rng(0)
    paths = [non_digits.pointer_samples(np.array(s, float) * 280, 4, 0, rng) if len(s) > 1
             else np.array(s, float) * 280 for s in strokes]
    return non_digits.paint(paths)


@pytest.fixture(scope="module")
def shipped():
    return Predictor.from_shipped()


@pytest.mark.quick
def test_generator_is_seeded_and_makes_each_kind():
    images, extents, kinds = non_digits.generate(10, 0)
    again, _, _ = non_digits.generate(10, 0)
    assert images.shape == (10, 28, 28) and images.dtype == np.uint8 and (images == again).all()
    assert set(kinds) == set(non_digits.KINDS) and all(i.max() == 255 for i in images)
    other, _, _ = non_digits.generate(10, 10)
    assert not (other == images).all()
    dots = extents[np.array(kinds) == "dots"]
    assert (dots < 0.3).all() and (extents[np.array(kinds) == "letters"] > 0.3).all()


@pytest.mark.quick
def test_validation_and_test_seeds_are_disjoint():
    ranges = [non_digits.VALIDATION_SEEDS, non_digits.TEST_SEEDS, non_digits.TRAIN_SEEDS]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert max(a.start, b.start) >= min(a.stop, b.stop)


@pytest.mark.quick
def test_threshold_refuses_at_most_one_percent_of_the_digits_it_was_fitted_on():
    rng = np.random.default_rng(0)
    strokes = np.zeros((1000, 28, 28), np.uint8)
    strokes[:, 4:24, 13:16] = 255
    digits = Scored(strokes, rng.normal(0, 1, (1000, 10)) + np.eye(10)[rng.integers(0, 10, 1000)] * 8,
                    np.full(1000, 0.7))
    others = Scored(strokes[:200], rng.normal(0, 1, (200, 10)), np.full(200, 0.7))
    record, candidates = fit_abstention(digits, others, 1.0, "synthetic")
    refused = np.mean([r is not None for r in record.reasons(digits.images, digits.logits, 1.0, digits.extents)])
    assert refused <= 0.01 and record.validation["non_digits_refused"] > 0.5
    assert record.score == max(candidates, key=lambda k: candidates[k]["non_digits"]["refused"])


def test_shipped_threshold_is_what_validation_data_gives(shipped):
    """Refitting on validation data alone (MNIST's hold-out, non_digits' validation seeds) gives the stored
    threshold and the stored validation figures: had MNIST's test digits set the threshold, or the test seeds'
    non-digits chosen the score, they would differ."""
    from digitlab.calibrate import NON_DIGITS as COUNT, digit_extents, validation_split

    images, _ = validation_split("mnist", 5000)
    images = images.numpy()
    others, other_extents, _ = non_digits.validation_set(COUNT)
    record, _ = fit_abstention(Scored(images, shipped.logits(images), digit_extents(images)),
                               Scored(others, shipped.logits(others), other_extents), shipped.temperature, "")
    stored = shipped.abstention
    assert (record.score, record.min_extent, record.max_thickness) == (stored.score, stored.min_extent,
                                                                       stored.max_thickness)
    assert record.threshold == pytest.approx(stored.threshold, abs=1e-4)
    assert record.validation == pytest.approx(stored.validation)
    assert "validation" in stored.fitted_on


@pytest.mark.quick
def test_thickness_tells_a_blob_from_strokes():
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 4:24, 13:16] = 255  # a stroke 3 pixels wide
    yy, xx = np.mgrid[:28, :28]
    images[1][(yy - 14) ** 2 + (xx - 14) ** 2 <= 100] = 255  # a disk 20 pixels across: a dot, enlarged
    assert thickness(images).tolist() == [2, 8]


@pytest.mark.quick
def test_energy_score_is_minus_t_logsumexp():
    logits = np.array([[2.0, 0.0, -1.0]])
    expected = -0.5 * np.log(np.exp(logits / 0.5).sum())
    assert model_score("energy", logits, 0.5)[0] == pytest.approx(expected)


@pytest.mark.quick
def test_record_round_trips_and_rejects_nonsense():
    record = Abstention("energy", -2.5, 0.25, "x", {"digits_refused": 0.01}, 4)
    assert Abstention.from_meta(json.loads(json.dumps(record.to_meta()))) == record
    for bad in ({**record.to_meta(), "score": "magic"}, {**record.to_meta(), "min_extent": 2}, "x"):
        with pytest.raises((TypeError, ValueError)):
            Abstention.from_meta(bad)


@pytest.mark.parametrize("name", NON_DIGITS)
def test_predict_refuses_non_digits(name, tmp_path):
    strokes, reason = NON_DIGITS[name][0], FILE_REASONS[name]
    path = tmp_path / "drawing.png"
    Image.fromarray(255 - canvas_of(strokes)).save(path)  # dark ink on white paper, as a photo of it would be
    out = subprocess.run([sys.executable, "-m", "digitlab", "predict", "--json", str(path)], capture_output=True,
                         text=True, check=True).stdout
    answer = json.loads(out)
    assert answer["label"] is None and answer["class_name"] is None and answer["reason"] == reason
    assert len(answer["probabilities"]) == 10
    text = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(path)], capture_output=True,
                          text=True, check=True).stdout
    assert f"no digit: {reason}" in text


def test_predict_reads_a_real_mnist_digit(tmp_path, mnist):
    path = tmp_path / "seven.png"
    Image.fromarray(mnist.test_images[0].numpy()).save(path)
    out = subprocess.run([sys.executable, "-m", "digitlab", "predict", "--json", str(path)], capture_output=True,
                         text=True, check=True).stdout
    answer = json.loads(out)
    assert answer["label"] == int(mnist.test_labels[0]) and answer["reason"] is None


@pytest.fixture(scope="module")
def client(shipped):
    from digitlab.serve.app import create_app

    with TestClient(create_app(shipped)) as c:
        yield c


@pytest.mark.quick
@pytest.mark.parametrize("name", NON_DIGITS)
def test_api_refuses_non_digits(client, name):
    strokes, reason = NON_DIGITS[name]
    pixels = non_digits.page_pixels(canvas_of(strokes)).tolist()
    r = client.post("/api/predict", json={"pixels": pixels})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["label"] is None and answer["reason"] == reason and len(answer["probabilities"]) == 10


@pytest.mark.quick
def test_api_reads_a_real_mnist_digit(client, mnist):
    r = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
    assert r.status_code == 200 and r.json()["label"] == int(mnist.test_labels[0]) and r.json()["reason"] is None
    assert client.get("/api/model").json()["calibration"]["abstain"]["score"] == "energy"
