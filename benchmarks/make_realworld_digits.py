"""Render MNIST *test* digits as photos, scans, screenshots and drawings: an offline "real world" set.

There is no camera here, so each variant imitates one way a digit reaches digitlab: a phone photo of
paper under uneven light, a flatbed scan, a screenshot, a PNG from a drawing app with a transparent
background, blue pen on lined paper, and the awkward file formats (16-bit PNG, palette GIF, JPEG at
quality 30). Only the test split is used, so a model never saw these digits in training.

Files are named <test index>_label<digit>_<variant>.<ext> (e.g. 0042_label7_photo.jpg); index.csv lists
them with their labels. tests/test_preprocess.py imports `render_variants` and `encode` from here.

    python benchmarks/make_realworld_digits.py --count 300 --seed 0 --out runs/realworld
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

Rng = np.random.Generator

#### Rendering helpers


def ink_alpha(digit: np.ndarray, size: int, sharpen: float = 0.25) -> np.ndarray:
    """The digit as ink coverage in [0, 1] at size x size, upscaled smoothly and sharpened like a pen line."""
    a = Image.fromarray(digit.astype(np.float32) / 255).resize((size, size), Image.BICUBIC)
    a = np.asarray(a)
    return np.clip((a - sharpen) / (1 - 2 * sharpen), 0, 1) if sharpen else np.clip(a, 0, 1)


def place(alpha: np.ndarray, height: int, width: int, top: int, left: int) -> np.ndarray:
    """Put a coverage map into a height x width field of zeros with its corner at (top, left)."""
    out = np.zeros((height, width), np.float32)
    out[top:top + alpha.shape[0], left:left + alpha.shape[1]] = alpha
    return out


def random_place(alpha: np.ndarray, height: int, width: int, rng: Rng) -> np.ndarray:
    """Put a coverage map at a random position inside a height x width field."""
    top = int(rng.integers(0, height - alpha.shape[0] + 1))
    left = int(rng.integers(0, width - alpha.shape[1] + 1))
    return place(alpha, height, width, top, left)


def compose(alpha: np.ndarray, paper: tuple[float, ...], ink: tuple[float, ...]) -> np.ndarray:
    """Ink over paper: (H, W, channels) floats in [0, 1]; colours are 0..255 tuples."""
    paper_rgb, ink_rgb = np.float32(paper) / 255, np.float32(ink) / 255
    return paper_rgb + (ink_rgb - paper_rgb) * alpha[..., None]


def lighting(height: int, width: int, rng: Rng, strength: float) -> np.ndarray:
    """Brightness factor (H, W, 1): a ramp in a random direction falling by `strength`, plus a vignette."""
    y, x = np.linspace(0, 1, height, dtype=np.float32)[:, None], np.linspace(0, 1, width, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    vignette = ((x - 0.5) ** 2 + (y - 0.5) ** 2) * 2
    return (1 - np.float32(strength) * ramp - np.float32(0.15) * vignette)[..., None]


def noisy(img: np.ndarray, rng: Rng, sigma: float) -> np.ndarray:
    """Add gaussian sensor noise (sigma in 0..255 units) and clip to [0, 1]."""
    return np.clip(img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma / 255), 0, 1)


def to_image(img: np.ndarray, blur: float = 0.0) -> Image.Image:
    """Floats in [0, 1], (H, W) or (H, W, 3) -> an 8-bit PIL image, optionally blurred like a soft lens."""
    im = Image.fromarray(np.round(np.squeeze(img) * 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(blur)) if blur else im


#### Variants: each takes a 28x28 uint8 MNIST digit (bright ink on black) and a random generator


def inverted(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Dark ink on white at MNIST's own size."""
    return Image.fromarray(255 - digit)


def offcentre(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Bright ink on black, tucked into the top-left corner of a wide canvas."""
    return to_image(place(ink_alpha(digit, 56), 120, 160, 2, 4))


def tiny(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A digit about 12 pixels tall (20 px box -> 12 px) in a 300x300 white page."""
    return to_image(1 - random_place(ink_alpha(digit, 17, sharpen=0), 300, 300, rng))


def transparent_garbage(digit: np.ndarray, rng: Rng) -> Image.Image:
    """RGBA: opaque dark ink, clear background hiding random colours under alpha = 0."""
    alpha = ink_alpha(digit, 112)
    rgb = rng.integers(0, 256, (112, 112, 3)).astype(np.float32) / 255
    rgb = np.where(alpha[..., None] > 0, 0.1, rgb)  # the ink is near black
    rgba = np.concatenate([rgb, alpha[..., None]], axis=2)
    return Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA")


def jpeg30(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Dark ink on light grey paper, meant to be saved as JPEG at quality 30."""
    return to_image(compose(ink_alpha(digit, 112), (235,), (30,)))


def gradient(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Paper-coloured page under a strong lighting ramp (half as bright on one side) with sensor noise."""
    alpha = random_place(ink_alpha(digit, 120), 224, 224, rng)
    img = compose(alpha, (240, 232, 215), (35, 35, 45)) * lighting(224, 224, rng, 0.5)
    return to_image(noisy(img, rng, 8))


def colour(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Coloured ink on coloured paper (e.g. red on green, blue on yellow)."""
    papers = [(250, 235, 140), (190, 230, 190), (250, 200, 210), (200, 220, 250)]
    inks = [(30, 50, 170), (170, 30, 30), (20, 110, 40), (90, 20, 120)]
    paper, ink = papers[rng.integers(len(papers))], inks[rng.integers(len(inks))]
    return to_image(noisy(compose(ink_alpha(digit, 140), paper, ink), rng, 4))


def png16(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A 16-bit greyscale ('I;16') scan: dark ink on paper, values spread over 0..65535."""
    img = compose(ink_alpha(digit, 84), (50000 / 257,), (9000 / 257,))[..., 0]
    return Image.fromarray(np.round(img * 65535).astype(np.uint16))


def gif(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A 16-colour palette image of dark red ink on cream paper, as a GIF stores it."""
    rgb = to_image(compose(ink_alpha(digit, 96), (250, 245, 225), (140, 20, 20)))
    return rgb.quantize(colors=16)


def photo(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Dark ink on off-white paper: uneven light, noise, a slightly soft lens; saved as JPEG."""
    side = int(rng.integers(240, 400))
    alpha = random_place(ink_alpha(digit, int(side * rng.uniform(0.5, 0.8))), side, side, rng)
    paper = tuple(rng.uniform(215, 245, 3))
    img = compose(alpha, paper, tuple(rng.uniform(20, 60, 3)))
    img = img * lighting(side, side, rng, rng.uniform(0.2, 0.5))
    return to_image(noisy(img, rng, rng.uniform(3, 10)), blur=rng.uniform(0.5, 1.5))


def scan(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A flatbed scan: white paper, grey pencil-like ink, very little noise; PNG."""
    alpha = random_place(ink_alpha(digit, 160), 300, 300, rng)
    return to_image(noisy(compose(alpha, (250,), (rng.uniform(80, 140),)), rng, 2))


def phone(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A 1200x900 phone photo: a small digit somewhere off-centre, a colour cast, uneven light; JPEG."""
    alpha = random_place(ink_alpha(digit, int(rng.integers(100, 200))), 900, 1200, rng)
    cast = rng.uniform(0.85, 1.0, 3)  # warm or cool white balance
    img = compose(alpha, (235, 235, 230), (40, 40, 50)) * cast * lighting(900, 1200, rng, 0.35)
    return to_image(noisy(img, rng, 5), blur=1.2)


def screenshot(digit: np.ndarray, rng: Rng) -> Image.Image:
    """White ink on black, large and anti-aliased, as a drawing app's screenshot."""
    return to_image(place(ink_alpha(digit, 420), 480, 640, 30, 110))


def drawing_app(digit: np.ndarray, rng: Rng) -> Image.Image:
    """RGBA from a drawing app: opaque black strokes, background transparent black (0, 0, 0, 0)."""
    alpha = ink_alpha(digit, 280)
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., 3] = np.round(alpha * 255)
    return Image.fromarray(rgba, mode="RGBA")


def blue_pen_lined(digit: np.ndarray, rng: Rng) -> Image.Image:
    """Blue pen on lined paper: faint blue rules every 32 px and a pink margin line; JPEG."""
    paper = np.ones((320, 320, 3)) * np.array([250, 250, 245]) / 255
    paper[16::32, :] = np.array([190, 210, 240]) / 255  # faint rules
    paper[:, 40:42] = np.array([240, 180, 190]) / 255  # margin
    alpha = random_place(ink_alpha(digit, 180), 320, 320, rng)[..., None]
    img = paper * (1 - alpha) + np.array([25, 45, 150]) / 255 * alpha
    return to_image(noisy(img, rng, 3), blur=0.6)


def thick(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A felt-tip pen: strokes dilated by 6 px a side (about 1.5x their width); dark on white."""
    ink = to_image(ink_alpha(digit, 200)).filter(ImageFilter.MaxFilter(13))
    return Image.fromarray(255 - np.asarray(ink))


def thin(digit: np.ndarray, rng: Rng) -> Image.Image:
    """A fine pen: strokes eroded by 3 px a side (about two thirds of their width); dark on white."""
    ink = to_image(ink_alpha(digit, 200)).filter(ImageFilter.MinFilter(7))
    return Image.fromarray(255 - np.asarray(ink))


@dataclass(frozen=True)
class Variant:
    """How one kind of picture is made and stored."""

    render: Callable[[np.ndarray, Rng], Image.Image]
    ext: str  # file format: png, jpg or gif
    quality: tuple[int, int] = (90, 90)  # JPEG quality range, drawn per image


VARIANTS: dict[str, Variant] = {
    "inverted": Variant(inverted, "png"),
    "offcentre": Variant(offcentre, "png"),
    "tiny": Variant(tiny, "png"),
    "transparent_garbage": Variant(transparent_garbage, "png"),
    "jpeg30": Variant(jpeg30, "jpg", (30, 30)),
    "gradient": Variant(gradient, "png"),
    "colour": Variant(colour, "png"),
    "png16": Variant(png16, "png"),
    "gif": Variant(gif, "gif"),
    "photo": Variant(photo, "jpg", (35, 90)),
    "scan": Variant(scan, "png"),
    "phone": Variant(phone, "jpg", (70, 92)),
    "screenshot": Variant(screenshot, "png"),
    "drawing_app": Variant(drawing_app, "png"),
    "blue_pen_lined": Variant(blue_pen_lined, "jpg", (75, 92)),
    "thick": Variant(thick, "png"),
    "thin": Variant(thin, "png"),
}


def render_variants(digit: np.ndarray, rng: Rng, names: list[str] | None = None) -> dict[str, Image.Image]:
    """Every variant (or the named ones) of one 28x28 uint8 MNIST digit, as PIL images."""
    return {name: VARIANTS[name].render(digit, rng) for name in (names or VARIANTS)}


def encode(name: str, image: Image.Image, rng: Rng) -> bytes:
    """The file bytes of a rendered variant in its own format (JPEG quality drawn from its range)."""
    variant, buf = VARIANTS[name], io.BytesIO()
    if variant.ext == "jpg":
        low, high = variant.quality
        image.save(buf, "JPEG", quality=int(rng.integers(low, high + 1)))
    else:
        image.save(buf, variant.ext.upper())
    return buf.getvalue()


#### Command line


def write_folder(out: Path, count: int, seed: int, names: list[str]) -> dict[str, int]:
    """Render `count` random MNIST test digits in every named variant into `out`; files per variant."""
    from digitlab.data import load_dataset

    ds = load_dataset("mnist")
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(ds.test_images), size=count, replace=False))
    out.mkdir(parents=True, exist_ok=True)
    written = {name: 0 for name in names}
    with open(out / "index.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["file", "label", "variant", "mnist_test_index"])
        for i in indices.tolist():
            digit, label = ds.test_images[i].numpy(), int(ds.test_labels[i])
            for name, image in render_variants(digit, rng, names).items():
                path = out / f"{i:04d}_label{label}_{name}.{VARIANTS[name].ext}"
                path.write_bytes(encode(name, image, rng))
                rows.writerow([path.name, label, name, i])
                written[name] += 1
    return written


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, write the folder, print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="MNIST test digits to render")
    parser.add_argument("--seed", type=int, default=0, help="random seed (digits and rendering)")
    parser.add_argument("--out", type=Path, default=Path("runs/realworld"), help="output folder")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    start = time.time()
    written = write_folder(args.out, args.count, args.seed, names)
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 2**20
    print(f"wrote {sum(written.values())} images ({size:.1f} MiB) of {args.count} MNIST test digits "
          f"to {args.out} in {time.time() - start:.1f}s (seed {args.seed})")
    for name, n in written.items():
        print(f"  {name:20s} {n:5d} x .{VARIANTS[name].ext}  {VARIANTS[name].render.__doc__}")


if __name__ == "__main__":
    main()
