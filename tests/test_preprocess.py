"""digitlab.preprocess on real MNIST test digits rendered as photos, scans, odd files and canvases.

Every rendering must come back MNIST-like: ink's centre of mass within a pixel of the centre, the ink's
box 20 pixels on its longer side, and the same picture as the original digit gives. Bad inputs must be
an ImageError with a message. The renderings come from benchmarks/make_realworld_digits.py, so the tests
and the benchmark folder share one copy of that code.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from digitlab.errors import ImageError
from digitlab.preprocess import CANVAS, CENTER, TARGET_BOX, canvas_to_mnist, load_image, to_mnist
from helpers import import_renderer, png_bytes, png_header_only

INK = 64  # a pixel above this counts as ink when measuring the box (MNIST's own digits: always 20 px)
N_DIGITS = 200  # MNIST test digits used for the geometry checks


render = import_renderer()

# variant -> how many digits to render: all of the cheap ones, fewer of the large photos
# (about 0.3 s of CPU each; rendering a photo costs as much as cleaning it)
VARIANT_DIGITS = {
    "inverted": 100, "offcentre": 100, "tiny": 50, "transparent_garbage": 50, "jpeg30": 100,
    "gradient": 12, "colour": 25, "png16": 100, "gif": 60, "photo": 8, "scan": 12, "phone": 1,
    "screenshot": 12, "drawing_app": 25, "blue_pen_lined": 8, "thick": 20, "thin": 40,
}
BOX_RANGE = {"tiny": (18, 22)}  # a 12-pixel digit has blurred edges; every other variant: 19..20
# (mean, 5th percentile) correlation floors: a pen of another width makes another picture of the same digit
CORRELATION_FLOOR = {"thick": (0.75, 0.6), "thin": (0.75, 0.45)}  # every other variant: (0.85, 0.6)


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    """The first N_DIGITS MNIST test digits, uint8 (N, 28, 28); a missing dataset fails, never skips."""
    return mnist.test_images[:N_DIGITS].numpy()


@pytest.fixture(scope="module")
def reference(digits: np.ndarray) -> np.ndarray:
    """to_mnist of each original digit: what every rendering of it should turn back into."""
    return np.stack([to_mnist(d) for d in digits])


#### Measurements


def center_of_mass(images: np.ndarray) -> np.ndarray:
    """(N, 2) row and column of each image's centre of mass, in array-index coordinates like CENTER."""
    images = images.astype(np.float64)
    mass = images.sum(axis=(1, 2))
    rows = (images.sum(axis=2) * np.arange(CANVAS)).sum(axis=1) / mass
    cols = (images.sum(axis=1) * np.arange(CANVAS)).sum(axis=1) / mass
    return np.stack([rows, cols], axis=1)


def box_side(image: np.ndarray) -> int:
    """Longer side of the bounding box of the pixels above INK."""
    rows, cols = np.flatnonzero((image > INK).any(axis=1)), np.flatnonzero((image > INK).any(axis=0))
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of images, (N,)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def assert_mnist_like(images: np.ndarray, box: tuple[int, int] = (TARGET_BOX - 1, TARGET_BOX)) -> None:
    """The MNIST construction: uint8 28x28, centre of mass within a pixel of CENTER, a 20-pixel box."""
    assert images.dtype == np.uint8 and images.shape[1:] == (CANVAS, CANVAS)
    offsets = np.abs(center_of_mass(images) - CENTER)
    assert offsets.max() <= 1.0, f"centre of mass off by {offsets.max():.2f} px"
    sides = np.array([box_side(im) for im in images])
    assert ((sides >= box[0]) & (sides <= box[1])).all(), f"box sides {np.bincount(sides)}"


def assert_same(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    """Equal up to rounding: the same picture reached through a different input path."""
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1, what


#### MNIST itself


@pytest.mark.quick
def test_mnist_digits_pass_the_checks_and_are_fixed_points(digits: np.ndarray, reference: np.ndarray):
    assert_mnist_like(digits)  # the checks describe MNIST itself
    assert_mnist_like(reference)
    r = correlation(reference, digits)
    assert r.mean() > 0.99 and np.median(r) > 0.999, (r.mean(), np.median(r))


@pytest.mark.quick
def test_idempotent(reference: np.ndarray):
    again = np.stack([to_mnist(im) for im in reference])
    assert correlation(again, reference).mean() > 0.995
    assert np.abs(center_of_mass(again) - center_of_mass(reference)).max() <= 1.0


#### Renderings of real test digits


@pytest.mark.quick
def test_every_benchmark_variant_is_tested():
    assert set(VARIANT_DIGITS) == set(render.VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANT_DIGITS))
def test_rendered_digit_looks_like_mnist(variant: str, digits: np.ndarray, reference: np.ndarray):
    n = VARIANT_DIGITS[variant]
    rng = np.random.default_rng(0)
    images = [render.render_variants(d, rng, [variant])[variant] for d in digits[:n]]
    files = [render.encode(variant, image, rng) for image in images]
    out = np.stack([to_mnist(data) for data in files])  # through the real file format
    assert (out.reshape(n, -1).max(axis=1) == 255).all()  # strokes stretched to full ink, like MNIST
    assert_mnist_like(out, BOX_RANGE.get(variant, (TARGET_BOX - 1, TARGET_BOX)))
    r = correlation(out, reference[:n])
    mean_floor, low_floor = CORRELATION_FLOOR.get(variant, (0.85, 0.6))
    assert r.mean() > mean_floor and np.percentile(r, 5) > low_floor, (r.mean(), np.percentile(r, 5))


@pytest.mark.quick
def test_polarity_does_not_matter(digits: np.ndarray, reference: np.ndarray):
    for digit, ref in zip(digits[:20], reference[:20]):
        assert_same(to_mnist(255 - digit), ref)
        assert_same(to_mnist(255 - digit, ink="dark"), ref)


@pytest.mark.quick
def test_input_types_agree(digits: np.ndarray, reference: np.ndarray, tmp_path: Path):
    digit, expected = digits[7], reference[7]
    image = Image.fromarray(255 - digit)
    path = tmp_path / "digit.png"
    image.save(path)
    rgba = np.dstack([np.stack([255 - digit] * 3, axis=-1), np.full_like(digit, 255)])
    t = torch.from_numpy(digit)
    sources = {
        "str path": str(path), "Path": path, "bytes": path.read_bytes(), "file": open(path, "rb"),
        "PIL": image, "PIL RGB": image.convert("RGB"), "float array": digit / 255.0, "RGBA array": rgba,
        "tensor": t, "1xHxW tensor": t[None], "1x1xHxW tensor": t[None, None],
        "float tensor": t.float() / 255,
    }
    try:
        for name, source in sources.items():
            assert_same(to_mnist(source), expected, name)
    finally:
        sources["file"].close()


@pytest.mark.quick
def test_inputs_are_not_modified(digits: np.ndarray):
    digit = digits[3].copy()
    to_mnist(digit)
    canvas_to_mnist(digit)
    assert np.array_equal(digit, digits[3])


@pytest.mark.quick
def test_animated_gif_uses_first_frame(digits: np.ndarray, reference: np.ndarray):
    frames = [Image.fromarray(255 - digits[0]), Image.fromarray(255 - digits[1])]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    assert correlation(to_mnist(buf.getvalue())[None], reference[:1])[0] > 0.99


@pytest.mark.quick
def test_canvas(digits: np.ndarray, reference: np.ndarray):
    assert_same(canvas_to_mnist(digits[0]), reference[0])
    assert_same(canvas_to_mnist(digits[0].tolist()), reference[0])
    big = np.asarray(Image.fromarray(digits[0]).resize((280, 280), Image.BILINEAR))  # a full-size page canvas
    out = canvas_to_mnist(big.astype(np.float64))
    assert_mnist_like(out[None])
    assert correlation(out[None], reference[:1])[0] > 0.95


#### Errors


def noisy_blank_page() -> np.ndarray:
    """Paper under a lighting ramp with sensor noise, and no digit."""
    rng = np.random.default_rng(0)
    page = np.linspace(0.5, 1.0, 300)[None, :] + rng.normal(0, 0.03, (300, 300))
    return (np.clip(page, 0, 1) * 255).astype(np.uint8)


BAD_IMAGES = {
    "blank white": (png_bytes(Image.new("L", (200, 200), 255)), "no digit"),
    "uniform grey array": (np.full((50, 50), 0.4), "no digit"),
    "blank noisy page": (noisy_blank_page(), "no digit"),
    "zero bytes": (b"", "zero bytes"),
    "not an image": (b"hello, this is not an image", "not an image"),
    "truncated PNG": (png_bytes(Image.new("L", (64, 64), 90))[:50], "not a readable image"),
    "missing file": ("/nonexistent/digit.png", "no such file"),
    "5000x10 PNG": (png_bytes(Image.new("L", (5000, 10))), "larger than the 4096x4096 limit"),
    "5000x10 PIL image": (Image.new("L", (5000, 10)), "larger than the 4096x4096 limit"),
    "5000x10 array": (np.zeros((10, 5000), np.uint8), "larger than the 4096x4096 limit"),
    "size checked before decoding": (png_header_only(5000, 5000, idat=True), "larger than the 4096x4096 limit"),
    "decompression bomb": (png_header_only(100_000, 100_000, idat=True), "too large to decode safely"),
    "NaN array": (np.full((28, 28), np.nan), "NaN"),
    "normalised array": (np.full((28, 28), -0.42), "negative"),
    "5 channels": (np.zeros((28, 28, 5)), "must be"),
}


@pytest.mark.quick
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_image_is_an_image_error(name: str):
    source, message = BAD_IMAGES[name]
    with pytest.raises(ImageError, match=message):
        to_mnist(source)


@pytest.mark.quick
def test_load_image_limit_is_a_parameter():
    data = png_bytes(Image.new("L", (300, 20)))
    assert load_image(data).size == (300, 20)
    with pytest.raises(ImageError, match="larger than the 256x256 limit"):
        load_image(data, max_side=256)


def digit_on_a_strip(digit: np.ndarray, height: int, width: int) -> np.ndarray:
    """The digit in the top-left corner of a black height x width strip."""
    strip = np.zeros((height, width), np.uint8)
    strip[:28, :28] = digit
    return strip


@pytest.mark.quick
@pytest.mark.parametrize("kind", ["PNG", "PIL image", "array"])
@pytest.mark.parametrize("shape", [(28, 4096), (4096, 28)])
def test_default_limit_is_4096_pixels_a_side(kind: str, shape: tuple[int, int], digits: np.ndarray):
    """A digit on a strip exactly 4096 pixels long is read; one pixel longer is refused, before decoding, with
    the limit in the message."""
    def as_kind(a: np.ndarray):
        return {"PNG": lambda: png_bytes(Image.fromarray(a)), "PIL image": lambda: Image.fromarray(a),
                "array": lambda: a}[kind]()

    at_limit = digit_on_a_strip(digits[0], *shape)
    read = to_mnist(as_kind(at_limit))
    assert read.shape == (28, 28) and read.max() > INK, f"{kind} {shape}"
    longer = tuple(side + 1 if side == 4096 else side for side in shape)
    with pytest.raises(ImageError, match="larger than the 4096x4096 limit"):
        to_mnist(as_kind(digit_on_a_strip(digits[0], *longer)))


BAD_CANVASES = {
    "NaN": (np.where(np.eye(28) > 0, np.nan, 0.0), "NaN"),
    "infinity": (np.full((28, 28), np.inf), "NaN or infinity"),
    "above 255": (np.full((28, 28), 256.0), "0..255"),
    "negative": (np.full((28, 28), -1.0), "0..255"),
    "3-D": (np.zeros((28, 28, 3)), "2-D"),
    "ragged": ([[0, 1], [2]], "2-D array of numbers"),
    "text": ([["a", "b"]], "2-D array of numbers"),
    "empty": (np.zeros((0, 0)), "empty"),
    "blank": (np.zeros((28, 28)), "no digit"),
}


@pytest.mark.quick
@pytest.mark.parametrize("name", list(BAD_CANVASES))
def test_bad_canvas_is_an_image_error(name: str):
    pixels, message = BAD_CANVASES[name]
    with pytest.raises(ImageError, match=message):
        canvas_to_mnist(pixels)
