"""Digits cropped close to their ink: read as well as with a margin, never refused as blank.

A user crops a photographed digit close, so the ink touches every edge of the picture and, with a marker
pen, covers most of it. The pictures come from benchmarks/tight_crops.py (real MNIST test digits cropped to
their ink's box, upscaled 4x, dark on white unless said otherwise), read with the shipped model the way
Predictor.predict reads them. Before preprocess found the paper from the edges, 28% of tight crops were
misread (79 of 300 refused as blank), and most thick or half-ink ones.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image, ImageFilter

from digitlab import pen
from digitlab.data import load_dataset
from digitlab.errors import ImageError
from digitlab.predict import Predictor
from digitlab.preprocess import to_mnist

ROOT = Path(__file__).resolve().parents[1]
N_DIGITS = 60  # first MNIST test digits; 60 x 8 pictures take about a second to clean


def _import_benchmark(name: str = "tight_crops"):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


crops = _import_benchmark()
style_shift = _import_benchmark("style_shift")
# Held-out pen digits (benchmark seeds) that are thin upright 1s: cut to their ink and blurred 0.8 px as
# `benchmarks/style_shift.py --tight-crop --blur 0.8` does, they are 42x7, 44x4 (a faint pencil) and 51x9 (a
# finger) pixels of nearly all ink, and to_mnist refused all three as blank.
THIN_ONES = [1_000_001_141, 1_000_001_281, 1_000_001_641]


@pytest.fixture(scope="module")
def predictor():
    """The shipped model on one thread for this module's tests; torch's count is put back after them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Predictor.from_run()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The first N_DIGITS MNIST test digits (uint8, bright ink) and their labels."""
    ds = load_dataset("mnist", progress=False)
    return ds.test_images[:N_DIGITS].numpy(), ds.test_labels[:N_DIGITS].numpy()


def read(predictor: Predictor, variant: str, mnist: tuple[np.ndarray, np.ndarray]) -> tuple[float, list[int]]:
    """Accuracy of the shipped model on one benchmark variant, and the indices to_mnist refused."""
    digits, labels = mnist
    predicted, refused = crops.read(predictor, [crops.VARIANTS[variant](d, i) for i, d in enumerate(digits)])
    return float((predicted == labels).mean()), [int(i) for i in np.flatnonzero(predicted == -1)]


def ring_ink(picture) -> float:
    """Fraction of the picture's outermost pixels that are dark ink."""
    a = np.asarray(picture) < 128
    return float(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean())


#### Digits are read


@pytest.mark.parametrize("variant", ["tight", "tight_blur", "tight_light", "blur_light", "thick3", "half_ink"])
def test_close_crop_is_never_refused(variant: str, predictor: Predictor, mnist):
    _, refused = read(predictor, variant, mnist)
    assert refused == [], f"{variant}: digits {refused} refused as blank"


@pytest.mark.parametrize("variant", ["tight", "tight_blur", "tight_light", "blur_light", "thick3", "half_ink"])
def test_close_crop_reads_as_well_as_with_a_margin(variant: str, predictor: Predictor, mnist):
    reference = crops.REFERENCE.get(variant, "margin")
    accuracy, _ = read(predictor, variant, mnist)
    with_margin, _ = read(predictor, reference, mnist)
    assert accuracy >= with_margin - 0.01, f"{variant} {accuracy:.1%} against {reference} {with_margin:.1%}"


def test_ink_covering_half_the_picture(predictor: Predictor, mnist):
    digits, _ = mnist
    pictures = [crops.half_ink(d) for d in digits]
    assert min((np.asarray(p) > 127).mean() for p in pictures) >= 0.5  # the ink really is the majority
    accuracy, _ = read(predictor, "half_ink", mnist)
    assert accuracy >= 0.95  # the same strokes are thick: the model, not the cleaning, loses the rest


# MNIST test digits whose half-ink tight crop to_mnist misread while the same picture with a margin read right:
# the ink covers so much of the crop's edges that the paper found there was the ink itself (26, 141, 262: 7s, the
# paper came out as a filled block) or the grey rim of the thick strokes (1, 240, 269: a mess of both levels).
HALF_INK_MISREAD = [1, 26, 141, 240, 262, 269]


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """All MNIST test digits (uint8, bright ink) and their labels."""
    ds = load_dataset("mnist", progress=False)
    return ds.test_images.numpy(), ds.test_labels.numpy()


@pytest.mark.quick
@pytest.mark.parametrize("index", HALF_INK_MISREAD)
def test_ink_over_most_of_the_edges_is_not_taken_for_paper(index: int, predictor: Predictor, mnist_test):
    digit, label = mnist_test[0][index], int(mnist_test[1][index])
    tight = crops.VARIANTS["half_ink"](digit, index)
    assert (np.asarray(tight) < 128).mean() >= 0.5 and ring_ink(tight) > 0.15  # mostly ink, and on the edges
    reference = to_mnist(crops.VARIANTS["half_ink_margin"](digit, index)).astype(int)  # the strokes with paper round
    for name, picture, ink in [("dark on white", tight, "auto"), ("ink='dark'", tight, "dark"),
                               ("light on dark", 255 - np.asarray(tight), "auto")]:
        difference = np.abs(to_mnist(picture, ink=ink).astype(int) - reference).mean()
        assert difference < 2, f"{name}: {difference:.1f} grey levels a pixel from the margin version's picture"
    assert predictor.predict(tight)[0].label == label


@pytest.mark.quick
@pytest.mark.parametrize("index", [812, 856])
def test_digit_in_two_pieces_keeps_paper_found_at_its_edges(index: int, mnist_test):
    """Half-ink 5s whose flag is apart from the body: the ink is two pieces and the paper one, the opposite of
    a connected digit, but the edges' level already sits on the paper's plateau; the piece count alone flipped
    them (the paper read as the ink)."""
    digit = mnist_test[0][index]
    seen = to_mnist(crops.VARIANTS["half_ink"](digit, index)).astype(int)
    reference = to_mnist(crops.VARIANTS["half_ink_margin"](digit, index)).astype(int)
    assert np.abs(seen - reference).mean() < 2


@pytest.mark.quick
def test_thick_one_thicker_than_its_paper_keeps_its_polarity(mnist_test):
    """A 1 under a broad marker cut to its ink (digit 920, thick5): the stroke is wider than the slivers of paper
    beside it, so which side is thicker must not decide the paper there (it read the paper as the ink)."""
    digit = mnist_test[0][920]
    assert int(mnist_test[1][920]) == 1
    seen = to_mnist(crops.VARIANTS["thick5"](digit, 920)).astype(int)
    reference = to_mnist(crops.VARIANTS["thick5_margin"](digit, 920)).astype(int)
    assert np.abs(seen - reference).mean() < 4


@pytest.mark.quick
def test_heavy_digit_touching_every_edge(predictor: Predictor, mnist):
    digits, labels = mnist
    nines = [i for i in np.flatnonzero(labels == 9)]
    pictures = [crops.VARIANTS["thick3"](digits[i], i) for i in nines]
    heavy = max(range(len(nines)), key=lambda k: ring_ink(pictures[k]))
    picture = pictures[heavy]
    seen = np.asarray(picture) < 192  # visibly inked
    assert seen[0].any() and seen[-1].any() and seen[:, 0].any() and seen[:, -1].any()
    assert ring_ink(picture) > 0.15 and (np.asarray(picture) < 128).mean() > 0.5  # most of the picture is ink
    assert predictor.predict(picture)[0].label == 9


@pytest.mark.parametrize("seed", THIN_ONES)
def test_thin_stroke_cut_to_its_ink_is_read(seed: int, predictor: Predictor):
    sample = pen.generate_samples(1, seed)[0]
    picture = style_shift.tight_crop(sample.image, "dark", blur=0.8)
    assert sample.label == 1 and max(picture.shape) >= 4 * min(picture.shape)  # a strip, as tall as the digit
    assert predictor.predict(picture)[0].label == 1
    assert predictor.predict(255 - picture)[0].label == 1  # light on dark too
    to_mnist(np.ascontiguousarray(picture.T))  # lying down, a dash: read as ink, not refused


def test_strokes_along_every_edge_of_a_tight_crop_are_read(predictor: Predictor):
    """A thin one-stroke 5 cut to its ink (40x19): its bar, stem and bowl run along the edges, so the edges are
    mostly ink although the picture is mostly paper; to_mnist refused it as blank (1 of 5,000 held-out pen
    digits with `--tight-crop --blur 0.8`)."""
    sample = pen.generate_samples(1, 1_000_004_405)[0]
    picture = style_shift.tight_crop(sample.image, "dark", blur=0.8)
    assert sample.label == 5 and (picture < 200).mean() < 0.5  # mostly paper
    assert predictor.predict(picture)[0].label == 5


def test_light_and_dark_versions_give_the_same_picture(mnist):
    digits, _ = mnist
    for i, d in enumerate(digits[:20]):
        dark, light = to_mnist(crops.VARIANTS["tight"](d, i)), to_mnist(crops.VARIANTS["tight_light"](d, i))
        assert np.abs(dark.astype(int) - light.astype(int)).max() <= 2, i


#### Nothing to read is still refused


def blank_pictures() -> dict[str, np.ndarray]:
    """Pictures with no digit, at the sizes and shapes of close crops."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.4, 1.0, 80)[None, :] * np.ones((80, 1))
    return {
        "white": np.full((80, 80), 255, np.uint8),
        "black": np.zeros((80, 80), np.uint8),
        "grey narrow": np.full((80, 16), 128, np.uint8),
        "noise only": np.clip(rng.normal(0.5, 0.05, (80, 80)), 0, 1),
        "noisy ramp": np.clip(ramp + rng.normal(0, 0.03, (80, 80)), 0, 1),
        "noisy dark paper": np.clip(rng.normal(0.03, 0.01, (64, 48)), 0, 1),
    }


@pytest.mark.quick
@pytest.mark.parametrize("name", list(blank_pictures()))
def test_blank_picture_is_refused_clearly(name: str):
    with pytest.raises(ImageError, match="no digit found: the image is blank or uniform"):
        to_mnist(blank_pictures()[name])


def blank_strips(seed: int) -> dict[str, np.ndarray]:
    """Strips of paper with nothing on them, as narrow as a thin 1 cut to its ink or narrower, either way up."""
    rng = np.random.default_rng(seed)
    out = {}
    for h, w in ((42, 7), (44, 4), (80, 16), (400, 12), (9, 51)):
        size = f"{h}x{w}"
        out[f"white {size}"] = np.full((h, w), 255, np.uint8)
        out[f"black {size}"] = np.zeros((h, w), np.uint8)
        out[f"grey {size}"] = np.full((h, w), 128, np.uint8)
        out[f"noisy paper {size}"] = np.clip(rng.normal(0.9, 0.03, (h, w)), 0, 1)
        noisy = np.clip(rng.normal(0.85, 0.05, (h, w)) * 255, 0, 255).astype(np.uint8)  # a soft photo of it
        out[f"blurred noisy paper {size}"] = np.asarray(Image.fromarray(noisy).filter(ImageFilter.GaussianBlur(1.5)))
        y, x = np.mgrid[0:h, 0:w] / max(h, w)  # the strip cut from a page lit 0.4 .. 1.0 from corner to corner
        out[f"lighting ramp {size}"] = np.clip(0.4 + 0.6 * (x + y) / 2 + rng.normal(0, 0.02, (h, w)), 0, 1)
        out[f"yellow paper {size}"] = np.clip(np.array([0.95, 0.9, 0.6]) + rng.normal(0, 0.02, (h, w, 3)), 0, 1)
    return out


@pytest.mark.quick
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blank_strip_is_refused_clearly(seed: int):
    for name, picture in blank_strips(seed).items():
        with pytest.raises(ImageError, match="no digit found: the image is blank or uniform"):
            to_mnist(picture)
            pytest.fail(f"{name}: read as a digit")
