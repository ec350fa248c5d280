"""Tight crops: how well digitlab reads a digit cropped close to its ink, against the same digit with a margin.

A user who photographs a digit crops it close. MNIST's own construction leaves a margin (the 20 px box sits in
a 28 px field), and preprocessing that learns the paper from the image's edges breaks when ink reaches them.
This takes the first N MNIST *test* digits (bright ink, 28x28), makes each one several ways, always ending as
a picture 4x upscaled (bicubic) and, unless said otherwise, dark ink on white:

  margin          cropped to the ink's box (pixels > 0) plus 2 px of paper on every side: the reference
  tight           cropped exactly to the ink's box: ink touches all four edges
  tight_blur      tight, then a Gaussian blur of radius 1.5 px at the upscaled size (a soft phone photo)
  thick3, thick5  strokes dilated (grey 3x3 / 5x5 max filter) before cropping tight: a marker pen
  thick3_margin, thick5_margin   the same strokes with the 2 px margin (what the model makes of thick strokes)
  half_ink        tight and upscaled, then dilated until at least half of the picture is ink
  half_ink_margin the same picture with 2 MNIST px (8 upscaled px) of paper added around it: the same strokes
  tight_light     tight, light ink on dark paper (a whiteboard photo inverted, a screenshot)
  blur_light      tight_blur, light on dark
  slant           sheared by +-0.3 (alternating) before cropping tight: a slanted hand
  slant_margin    the same shear, with the 2 px margin
  box_stretched   cropped to the ink, stretched to fill a 16x16 box (aspect ratio lost) and thresholded: how other
                  writer sets are made (scikit-learn's digits: 32x32 bitmaps filling their box, then 8x8)
  box_kept        the same, but the longer side 16 px and the aspect ratio kept (centred in the 16x16 box)

Each picture goes through digitlab.preprocess.to_mnist and the model, as Predictor.predict does; a picture
to_mnist refuses counts as wrong and is counted in "refused". Prints a markdown table: accuracy, refused, and
the difference in points to the same strokes with a margin (margin, thickN_margin, half_ink_margin, slant_margin)
or, for box_stretched, to box_kept; with --per-class, each variant's accuracy per digit and its top confusions.

    python benchmarks/tight_crops.py                 # shipped model, first 300 test digits
    python benchmarks/tight_crops.py --n 1000 --run runs/<run>
    python benchmarks/tight_crops.py --n 2000 --variants box_stretched --per-class
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from digitlab.data import load_dataset
from digitlab.errors import ImageError
from digitlab.predict import Predictor
from digitlab.preprocess import to_mnist

SCALE = 4  # upscaling factor: a crop of a 20 px digit becomes about 80 px, like a small phone crop
MARGIN = 2  # paper kept around the ink in the reference version, in MNIST pixels
BLUR = 1.5  # Gaussian blur radius at the upscaled size
SHEAR = 0.3  # horizontal shift per row for the slanted versions
HALF = 0.5  # fraction of the picture the half_ink version's ink covers (at least)
BOX = 16  # side of the box_* versions' box, in pixels before upscaling (64x64 pictures, as other writer sets)

#### Making the pictures


def crop(ink: np.ndarray, margin: int = 0) -> np.ndarray:
    """The ink's bounding box (pixels > 0), with `margin` pixels of paper added on every side."""
    rows, cols = np.flatnonzero((ink > 0).any(axis=1)), np.flatnonzero((ink > 0).any(axis=0))
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.pad(box, margin)


def upscale(ink: np.ndarray) -> Image.Image:
    """SCALE times larger, bicubic (Pillow clips the overshoot to 0..255)."""
    im = Image.fromarray(ink.astype(np.uint8))
    return im.resize((im.width * SCALE, im.height * SCALE), Image.BICUBIC)


def dilate(ink: np.ndarray, size: int) -> np.ndarray:
    """Grey dilation with a size x size max filter: thicker strokes."""
    return np.asarray(Image.fromarray(ink).filter(ImageFilter.MaxFilter(size)))


def shear(ink: np.ndarray, amount: float) -> np.ndarray:
    """Slant: each row shifted sideways in proportion to its height above the centre (bicubic)."""
    pad = int(abs(amount) * ink.shape[0]) + 2
    im = Image.fromarray(np.pad(ink, ((0, 0), (pad, pad))))
    centre = im.height / 2
    im = im.transform(im.size, Image.AFFINE, (1, amount, -amount * centre, 0, 1, 0), Image.BICUBIC)
    return np.asarray(im)


def half_ink(ink: np.ndarray) -> Image.Image:
    """Tight and upscaled, then dilated in 3x3 steps until at least HALF of the pixels are ink (> 127)."""
    im = upscale(crop(ink))
    for _ in range(40):
        if (np.asarray(im) > 127).mean() >= HALF:
            break
        im = im.filter(ImageFilter.MaxFilter(3))
    return im


def with_margin(im: Image.Image) -> Image.Image:
    """MARGIN MNIST pixels of paper (black under bright ink) around an upscaled picture: the strokes unchanged."""
    return Image.fromarray(np.pad(np.asarray(im), MARGIN * SCALE))


def dark_on_white(im: Image.Image) -> Image.Image:
    """Bright-ink picture -> dark ink on white paper."""
    return Image.fromarray(255 - np.asarray(im))


def blurred(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(BLUR))


def in_box(ink: np.ndarray, keep_aspect: bool) -> np.ndarray:
    """The ink's box resized to fill BOX x BOX, or with its longer side BOX and centred if `keep_aspect`, by area
    (Image.BOX), then thresholded at half (a pixel at least half covered is ink): a writer set's bitmap."""
    box = crop(ink)
    h, w = box.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale))) if keep_aspect else (BOX, BOX)
    small = np.asarray(Image.fromarray(box).resize(size, Image.BOX))
    field = np.zeros((BOX, BOX), np.uint8)
    top, left = (BOX - size[1]) // 2, (BOX - size[0]) // 2
    field[top:top + size[1], left:left + size[0]] = small
    return np.where(field > 127, 255, 0).astype(np.uint8)


VARIANTS: dict[str, Callable[[np.ndarray, int], Image.Image]] = {
    "margin": lambda d, i: dark_on_white(upscale(crop(d, MARGIN))),
    "tight": lambda d, i: dark_on_white(upscale(crop(d))),
    "tight_blur": lambda d, i: dark_on_white(blurred(upscale(crop(d)))),
    "thick3": lambda d, i: dark_on_white(upscale(crop(dilate(d, 3)))),
    "thick5": lambda d, i: dark_on_white(upscale(crop(dilate(d, 5)))),
    "thick3_margin": lambda d, i: dark_on_white(upscale(crop(dilate(d, 3), MARGIN))),
    "thick5_margin": lambda d, i: dark_on_white(upscale(crop(dilate(d, 5), MARGIN))),
    "half_ink": lambda d, i: dark_on_white(half_ink(d)),
    "half_ink_margin": lambda d, i: dark_on_white(with_margin(half_ink(d))),
    "tight_light": lambda d, i: upscale(crop(d)),
    "blur_light": lambda d, i: blurred(upscale(crop(d))),
    "slant": lambda d, i: dark_on_white(upscale(crop(shear(d, SHEAR if i % 2 else -SHEAR)))),
    "slant_margin": lambda d, i: dark_on_white(upscale(crop(shear(d, SHEAR if i % 2 else -SHEAR), MARGIN))),
    "box_stretched": lambda d, i: dark_on_white(upscale(in_box(d, keep_aspect=False))),
    "box_kept": lambda d, i: dark_on_white(upscale(in_box(d, keep_aspect=True))),
}
REFERENCE = {"thick3": "thick3_margin", "thick5": "thick5_margin", "slant": "slant_margin",
             "half_ink": "half_ink_margin", "box_stretched": "box_kept"}  # else "margin"
REFERENCES = {"margin", *REFERENCE.values()}  # the versions others are compared to


#### Reading them


def read(predictor: Predictor, pictures: list[Image.Image]) -> tuple[np.ndarray, int]:
    """Labels as Predictor.predict would give them (-1 where to_mnist refuses), and how many were refused."""
    images, refused = [], []
    for picture in pictures:
        try:
            images.append(to_mnist(picture))
            refused.append(False)
        except ImageError:
            images.append(np.zeros((28, 28), np.uint8))
            refused.append(True)
    labels = predictor.probabilities(np.stack(images)).argmax(1)
    return np.where(refused, -1, labels), int(sum(refused))


def reference_of(name: str) -> str:
    """The version a variant is compared to: itself for a reference, else its REFERENCE or "margin"."""
    return name if name in REFERENCES else REFERENCE.get(name, "margin")


def per_class_table(labels: dict[str, np.ndarray], truth: np.ndarray) -> str:
    """Markdown: each variant's accuracy per true digit (refused pictures count as wrong)."""
    names = list(labels)
    lines = ["| digit | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in range(10):
        cells = [f"{(labels[n][truth == c] == c).mean():.1%}" for n in names]
        lines.append(f"| {c} ({int((truth == c).sum())}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def top_confusions(predicted: np.ndarray, truth: np.ndarray, k: int = 6) -> str:
    """The k most frequent mistakes as 'true -> read: count' (read -1: refused as blank)."""
    pairs = Counter(zip(truth[predicted != truth].tolist(), predicted[predicted != truth].tolist()))
    return ", ".join(f"{t} -> {r if r >= 0 else 'refused'}: {c}" for (t, r), c in pairs.most_common(k)) or "none"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="first N MNIST test digits")
    parser.add_argument("--run", default=None, help="run folder or .safetensors (default: the shipped model)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--per-class", action="store_true", help="also each variant's accuracy per digit and its "
                                                                 "most common confusions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    predictor = Predictor.from_run(args.run)
    ds = load_dataset("mnist", progress=False)
    digits, truth = ds.test_images[:args.n].numpy(), ds.test_labels[:args.n].numpy()
    print(f"model: {predictor.describe()['name']} from {predictor.info.source}; first {args.n} MNIST test digits")

    results: dict[str, tuple[float, int, float]] = {}
    labels: dict[str, np.ndarray] = {}
    names = [*args.variants, *(reference_of(v) for v in args.variants)]
    for name in sorted(dict.fromkeys(names), key=list(VARIANTS).index):
        start = time.time()
        pictures = [VARIANTS[name](d, i) for i, d in enumerate(digits)]
        labels[name], refused = read(predictor, pictures)
        results[name] = (float((labels[name] == truth).mean()), refused, time.time() - start)

    print("\n| variant | accuracy | refused as blank | vs its reference version (points) | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, (acc, refused, seconds) in results.items():
        reference = reference_of(name)
        diff = f"{(acc - results[reference][0]) * 100:+.1f} vs {reference}" if reference != name else ""
        print(f"| {name} | {acc:.1%} | {refused} | {diff} | {seconds:.1f} |")
    if args.per_class:
        print("\n" + per_class_table(labels, truth) + "\n")
        for name, predicted in labels.items():
            print(f"{name}: {top_confusions(predicted, truth)}")


if __name__ == "__main__":
    main()
