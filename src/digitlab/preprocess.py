"""Any picture of a digit -> a 28x28 uint8 image made the way MNIST itself was made.

MNIST's digits were scanned from paper, binarised and then
1. cropped to the ink's bounding box and scaled, keeping the aspect ratio, so that the longer side is
   20 pixels (anti-aliasing gives the grey edges);
2. placed in a 28x28 field so that the ink's centre of mass falls on the centre, by an integer shift.
   Measured on the data, the centre of mass sits at row 14, column 14 in array-index coordinates
   (14.5 if pixel centres are counted as x + 0.5), within half a pixel.
Ink is bright (255) on a black (0) background.

A model trained on MNIST expects exactly that, so every entry point (CLI, Predictor, REST API, web
canvas) sends its images through `to_mnist` (or `canvas_to_mnist`) before `normalize`. A real photo
needs some cleaning before the MNIST steps:
- colour to grey: deviations from the paper colour are projected on the ink's colour direction, so
  blue ink on yellow paper works; a mostly transparent image is a drawing whose opaque pixels are the ink;
- levelling: a smooth (quadratic) background is fitted per channel while ignoring outliers (the ink) and
  subtracted, so a lighting gradient or a vignette does not become ink. The paper's colour and spread are
  read from the image's edges, which stay mostly paper even in a close crop where the ink touches every
  edge and covers most of the picture (a marker pen); the image's majority would be ink there;
- polarity: the side with the strongest deviations from that paper is the ink, which is made bright;
- thresholding: Otsu's threshold on the levelled image finds the strong strokes, specks that are not
  part of the main strokes are dropped, and the soft ink values near the strokes are kept, stretched so
  the ink's strong pixels reach 255.
An image with no ink, one that cannot be read, or one larger than MAX_IMAGE_SIDE is an ImageError.

numpy and Pillow only; every function is pure (inputs in, outputs out). Try it:

    python -c "from digitlab.preprocess import to_mnist; print(to_mnist('digit.jpg'))"
"""
from __future__ import annotations

import io
import math
import os
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.errors import ImageError

CANVAS = 28  # side of an MNIST image
TARGET_BOX = 20  # longer side of the ink's bounding box in an MNIST image
CENTER = 14.0  # where MNIST puts the ink's centre of mass, in array-index coordinates (row, column)
MAX_IMAGE_SIDE = 4096  # larger images are refused before their pixels are decoded
WORK_SIDE = 1024  # larger images are averaged down to this before cleaning; the digit ends up 20 px anyway
MIN_CONTRAST = 0.08  # weaker ink than this (fraction of the full range) after levelling means "no digit"
DARK_PAPER = 0.1  # paper darker than this is black paper: its rounding noise must not scale the ink
BOX_LEVEL = 0.2  # soft ink at least this strong (fraction of the strokes' level) defines the bounding box
SPECK_FRACTION = 0.05  # ink groups with less than this fraction of the largest group's ink are specks
FIT_GRID = 48  # the background is fitted on about this many samples per side
LABEL_GRID = 32  # specks are found on a grid of about this many cells per side
MARGIN = 3  # pixels kept around the 20-pixel box when resampling, for the soft edges

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


#### Reading


def _describe(source: object) -> str:
    """A short name for a source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file object>"))


def _check_size(height: int, width: int, name: str, max_side: int) -> None:
    """Refuse empty images and images above the size limit, before any pixel is decoded."""
    if height < 1 or width < 1:
        raise ImageError(f"{name}: the image is empty ({width}x{height} pixels)")
    if height > max_side or width > max_side:
        raise ImageError(f"{name}: {width}x{height} pixels is larger than the "
                         f"{max_side}x{max_side} limit; shrink it first")


def load_image(source: ImageSource, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Decode a path, bytes, file object or PIL image (first frame, EXIF-upright), refusing huge ones."""
    if isinstance(source, Image.Image):
        _check_size(source.height, source.width, "image", max_side)
        return source
    name = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("no image data (zero bytes)")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as im:
            _check_size(im.height, im.width, name, max_side)
            im.seek(0)  # animated GIF, multi-page TIFF: the first frame
            im.load()
            return ImageOps.exif_transpose(im)  # a copy, turned the way the phone was held
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: too large to decode safely ({e})") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image in a format Pillow can read") from None
    except Exception as e:  # Pillow's decoders raise many types on corrupt data; all mean "bad image"
        raise ImageError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None


def _to_unit(a: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1] from bool, 8/16-bit integers, or numbers in 0..1, 0..255 or 0..65535."""
    if a.dtype.kind == "b":
        return a.astype(np.float32)
    if a.dtype.kind == "u" and a.dtype.itemsize <= 2:
        return a.astype(np.float32) / (255.0 if a.dtype.itemsize == 1 else 65535.0)
    if a.dtype.kind not in "uif":
        raise ImageError(f"pixels of type {a.dtype} are not numbers")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ImageError("the pixels contain NaN or infinity")
    if a.min() < 0:
        raise ImageError(f"negative pixel value {a.min():g}: pass raw pixels (0..1 or 0..255), "
                         "not normalised ones")
    top = next((t for t in (1.0, 255.0, 65535.0) if a.max() <= t), None)
    if top is None:
        raise ImageError(f"pixel value {a.max():g} is outside 0..65535")
    return a / top


def _image_pixels(im: Image.Image) -> np.ndarray:
    """A PIL image as float32 (H, W, C) in [0, 1]: C is 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # 16- and 32-bit greys
        return _to_unit(np.asarray(im))[..., None]
    if im.mode in ALPHA_MODES or "transparency" in im.info:  # includes palette images with a clear colour
        return _to_unit(np.asarray(im.convert("RGBA")))
    if im.mode in ("1", "L"):
        return _to_unit(np.asarray(im.convert("L")))[..., None]
    return _to_unit(np.asarray(im.convert("RGB")))  # CMYK, YCbCr, palette without transparency, ...


def _array_pixels(image: np.ndarray | torch.Tensor, max_side: int) -> np.ndarray:
    """Array (H, W) or (H, W, C), or tensor (H, W), (1, H, W), (1, 1, H, W), (C, H, W) -> float (H, W, C)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        while t.dim() > 2 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3 and t.shape[0] in (3, 4):  # channels first, as torchvision keeps them
            t = t.permute(1, 2, 0)
        image = t.numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"an image array must be (H, W) or (H, W, 1|2|3|4), not {a.shape}")
    _check_size(a.shape[0], a.shape[1], "array", max_side)
    return _to_unit(a)


def _resolve_alpha(pixels: np.ndarray, ink: str) -> tuple[np.ndarray, str]:
    """Colour without alpha: opaque strokes on a clear background are the ink; other clear parts are paper."""
    if pixels.shape[2] in (1, 3):
        return pixels, ink
    colour, alpha = pixels[..., :-1], pixels[..., -1:]
    if alpha.min() >= 1.0:
        return colour, ink
    if np.median(alpha) < 0.5:  # mostly transparent: a drawing, whatever colour hides under alpha = 0
        return alpha, "bright"
    paper = np.median(colour[alpha[..., 0] >= 0.5], axis=0)  # composite clear corners onto the paper colour
    return colour * alpha + paper * (1 - alpha), ink


def _shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    """Average blocks of pixels so neither side exceeds `side` (cleaning cost grows with the area)."""
    f = math.ceil(max(pixels.shape[:2]) / side)
    if f <= 1:
        return pixels
    if min(pixels.shape[:2]) < f:  # a side shorter than one block (a 4096x1 line) is padded to one block
        pad = [(0, max(0, f - n)) for n in pixels.shape[:2]] + [(0, 0)]
        pixels = np.pad(pixels, pad, mode="edge")
    h, w, c = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f, pixels.shape[2]
    return pixels[:h, :w].reshape(h // f, f, w // f, f, c).mean(axis=(1, 3))


#### Levelling and polarity


def _first(n: int, step: int) -> int:
    """Where sampling every `step`-th pixel starts: mid-block, but inside an axis thinner than a block."""
    return min(step // 2, n - 1)


def _coords(n: int, step: int = 1) -> np.ndarray:
    """Pixel-centre coordinates of every `step`-th pixel of an axis of length n, scaled to [-1, 1]."""
    return ((np.arange(_first(n, step), n, step) + 0.5) / n * 2 - 1).astype(np.float32)


def _ring(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) mask of the outermost rows and columns: mostly paper even when the ink touches the edges."""
    ring = np.ones(shape, dtype=bool)
    ring[1:-1, 1:-1] = False
    return ring


def _paper_level(edge: np.ndarray) -> np.ndarray:
    """The paper's colour from the edge samples (n, c): the densest cluster, found by narrowing the median.

    The plain median lands on the grey rim of the ink when ink and its rim take half of the edge (a tight crop
    of thick strokes); re-taking the median of the samples nearest to it moves it onto the paper's plateau.
    """
    level = np.median(edge, axis=0)
    for _ in range(4):
        dist = np.linalg.norm(edge - level, axis=1)
        level = np.median(edge[dist <= np.median(dist)], axis=0)
    return level


def _background(pixels: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The paper under the ink: a quadratic surface per channel, refitted without outliers (the ink).

    Also returns the (rows, columns) of the samples it took for paper. The paper is found from the image's
    edges, not from the majority of its pixels: in a close crop or under a marker pen most pixels are ink,
    but the ink only touches the edges here and there, so most of the edge is still paper.
    """
    h, w, c = pixels.shape
    step = max(1, max(h, w) // FIT_GRID)
    rows, cols = np.arange(_first(h, step), h, step), np.arange(_first(w, step), w, step)
    y, x = np.meshgrid(_coords(h, step), _coords(w, step), indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    sample = pixels[rows[0]::step, cols[0]::step].reshape(-1, c)
    edge = _ring((len(rows), len(cols))).ravel()
    resid = np.linalg.norm(sample - _paper_level(sample[edge]), axis=1)  # start from a flat page
    for _ in range(3):
        keep = resid <= 6 * np.percentile(resid[edge], 25) + 2 / 255  # ink is far from the surface
        b = basis[keep]
        coef = np.linalg.solve(b.T @ b + 1e-6 * np.eye(6), b.T @ sample[keep])  # least squares, (6, c)
        # between slivers of paper (a thick 1 cropped close) a quadratic can swing far: keep it in the paper's range
        low, high = sample[keep].min(axis=0), sample[keep].max(axis=0)
        resid = np.linalg.norm(sample - np.clip(basis @ coef, low, high), axis=1)
    paper = np.unravel_index(np.flatnonzero(keep), (len(rows), len(cols)))
    coef = coef.astype(np.float32)
    y, x = _coords(h)[:, None, None], _coords(w)[None, :, None]
    # the same six terms, grouped so that only the x*y term is computed at full size
    surface = (coef[0] + coef[1] * x + coef[3] * x * x) + (coef[2] * y + coef[5] * y * y) + coef[4] * (x * y)
    return np.clip(surface, low, high), (rows[paper[0]], cols[paper[1]])


def _ink_direction(dev: np.ndarray, paper: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The colour direction along which the ink departs from the paper: the main axis of strong deviations."""
    if dev.shape[2] == 1:
        return np.ones(1)
    norms = np.linalg.norm(dev, axis=2)
    strong = dev[norms > 4 * np.median(norms[paper]) + 2 / 255]  # (n, 3); paper's spread, as ink may be most
    if len(strong) == 0:
        return np.ones(3) / np.sqrt(3)
    return np.linalg.eigh(strong.T @ strong)[1][:, -1]


def _ink_strength(pixels: np.ndarray, ink: str) -> tuple[np.ndarray, float]:
    """Levelled ink strength (H, W): about 0 on the paper, positive on the ink, whatever its polarity.

    Also returns the paper's noise (a robust sigma of the strength on the samples taken for paper).
    """
    background, paper = _background(pixels)
    light = background.mean(axis=2, keepdims=True)
    top = max(float(light.max()), DARK_PAPER)
    dev = (pixels - background) * (top / np.maximum(light, top / 4))  # light multiplies: undo it on dim parts
    direction = _ink_direction(dev, paper)
    if direction.sum() < 0:  # make "positive" mean "brighter than the paper"
        direction = -direction
    strength = (dev * direction.astype(np.float32)).sum(axis=2)
    noise = 1.4826 * float(np.median(np.abs(strength[paper])))
    if ink == "auto":  # the ink is the side with the strongest deviations (smoothed: lone pixels don't count)
        smooth = _mean3(strength)
        ink = "bright" if smooth.max() >= -smooth.min() else "dark"
    return (strength if ink == "bright" else -strength), noise


#### Strokes


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within r (a square window) of a True pixel, via a summed-area table: cost independent of r."""
    c = np.pad(mask.astype(np.int32), ((r + 1, r), (r + 1, r))).cumsum(0).cumsum(1)
    k = 2 * r + 1
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) > 0


def _mean3(a: np.ndarray) -> np.ndarray:
    """3x3 mean, zeros outside: noise and JPEG blocks shrink, strokes stay."""
    p = np.pad(a, 1)
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the cut that best separates `values` into two classes."""
    if values.max() - values.min() < 1e-6:  # one value (a single dot): it is all ink
        return float(values.min()) / 2
    hist, edges = np.histogram(values, bins=128)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(edges[np.nanargmax(between[:-1]) + 1])


def _label(mask: np.ndarray) -> np.ndarray:
    """8-connected components: each pixel gets its component's smallest flat index (mask.size off it)."""
    h, w = mask.shape
    n = mask.size
    labels = np.where(mask, np.arange(n).reshape(h, w), n)
    while True:
        p = np.pad(labels, 1, constant_values=n)
        low = np.minimum.reduce([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
        low = np.append(np.where(mask, low, n).ravel(), n)
        new = low[low[:-1]].reshape(h, w)  # pointer jumping: take the label of the label
        if np.array_equal(new, labels):
            return labels
        labels = new


def _main_cells(strong: np.ndarray) -> np.ndarray:
    """Coarse cells holding the main strokes: groups of strong ink that are not specks beside the largest."""
    h, w = strong.shape
    f = max(2, math.ceil(max(h, w) / LABEL_GRID))  # cells of f x f pixels; they bridge gaps of a pixel or two
    cells = np.pad(strong, ((0, -h % f), (0, -w % f)))
    mass = cells.reshape(cells.shape[0] // f, f, cells.shape[1] // f, f).sum(axis=(1, 3))
    labels = _label(mass > 0)
    totals = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=mass.size + 1)
    keep = totals >= SPECK_FRACTION * totals[:-1].max()
    keep[-1] = False  # the label of empty cells
    kept = np.pad(keep[labels], 1)
    kept = np.logical_or.reduce([kept[dy:dy + mass.shape[0], dx:dx + mass.shape[1]]  # and their neighbours
                                 for dy in range(3) for dx in range(3)])
    return kept.repeat(f, axis=0).repeat(f, axis=1)[:h, :w]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the True pixels, bottom and right exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _soft_ink(strength: np.ndarray, noise: float) -> np.ndarray:
    """Ink in [0, 1] on 0 (`noise`: the paper's sigma): specks removed, soft edges kept, strokes at 1."""
    smooth = _mean3(strength)
    peak = float(smooth.max())
    if peak < max(MIN_CONTRAST, 4 * noise):
        raise ImageError(f"no digit found: the image is blank or uniform (ink contrast {max(peak, 0):.3f}, "
                         f"noise {noise:.3f})")
    floor = max(3 * noise, 1 / 255)
    threshold = _otsu(smooth[smooth > max(floor, 0.05 * peak)])
    cells = _main_cells(smooth > threshold)
    strong = (smooth > threshold) & cells
    top, bottom, left, right = _bbox(strong)
    reach = max(1, round(max(bottom - top, right - left) / TARGET_BOX))  # source pixels per MNIST pixel
    near = _dilate((strength > threshold / 2) & cells, reach)  # thin stroke ends are weak when smoothed
    level = max(float(np.percentile(strength[strong], 90)), floor + 1e-3)  # the strokes' typical strength
    return np.clip((strength - floor) / (level - floor), 0, 1) * near


#### MNIST geometry


def _window(a: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """The region [top:bottom, left:right] of `a`, with zeros where it reaches outside."""
    out = np.zeros((bottom - top, right - left), dtype=a.dtype)
    y0, y1, x0, x1 = max(top, 0), min(bottom, a.shape[0]), max(left, 0), min(right, a.shape[1])
    if y0 < y1 and x0 < x1:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
    return out


def _scale_to_box(soft: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Resample so the ink's box has its longer side TARGET_BOX pixels; also returns where the box is."""
    top, bottom, left, right = _bbox(soft >= BOX_LEVEL)
    scale = TARGET_BOX / max(bottom - top, right - left)
    out_h = math.ceil((bottom - top) * scale) + 2 * MARGIN
    out_w = math.ceil((right - left) * scale) + 2 * MARGIN
    src_top = (top + bottom - out_h / scale) / 2  # the source region, centred on the box
    src_left = (left + right - out_w / scale) / 2
    y0, x0 = math.floor(src_top), math.floor(src_left)
    region = _window(soft.astype(np.float32), y0, math.ceil(src_top + out_h / scale) + 1,
                     x0, math.ceil(src_left + out_w / scale) + 1)
    box = (src_left - x0, src_top - y0, src_left - x0 + out_w / scale, src_top - y0 + out_h / scale)
    small = np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.LANCZOS, box=box))
    inner_top, inner_left = (out_h - (bottom - top) * scale) / 2, (out_w - (right - left) * scale) / 2
    inner = (inner_top, out_h - inner_top, inner_left, out_w - inner_left)
    return np.clip(small, 0, None), inner


def _center(small: np.ndarray, inner: tuple[float, float, float, float]) -> np.ndarray:
    """Paste into the 28x28 field with the centre of mass on CENTER (whole-pixel shift, box kept inside)."""
    mass = small.sum()
    cy = small.sum(axis=1) @ np.arange(small.shape[0]) / mass
    cx = small.sum(axis=0) @ np.arange(small.shape[1]) / mass
    top, bottom, left, right = inner
    dy = int(np.clip(round(CENTER - cy), math.ceil(-top - 1e-6), math.floor(CANVAS - bottom + 1e-6)))
    dx = int(np.clip(round(CENTER - cx), math.ceil(-left - 1e-6), math.floor(CANVAS - right + 1e-6)))
    return _window(small, -dy, CANVAS - dy, -dx, CANVAS - dx)


def _mnist_from_pixels(pixels: np.ndarray, ink: str) -> np.ndarray:
    """The whole pipeline on float (H, W, C) pixels in [0, 1]."""
    if ink not in ("auto", "bright", "dark"):
        raise ImageError(f"ink must be 'auto', 'bright' or 'dark', not {ink!r}")
    pixels, ink = _resolve_alpha(pixels, ink)
    if pixels.shape[2] == 3 and np.ptp(pixels, axis=2).max() < 2 / 255:  # grey stored as RGB
        pixels = pixels.mean(axis=2, keepdims=True)
    soft = _soft_ink(*_ink_strength(_shrink(pixels, WORK_SIDE), ink))
    field = _center(*_scale_to_box(soft))
    return np.round(field / field.max() * 255).astype(np.uint8)  # thin strokes still peak at 255, like MNIST


#### Public API


def to_mnist(image: ImageSource | np.ndarray | torch.Tensor, ink: str = "auto",
             max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:  # ink: "auto" (detect), "bright" or "dark"
    """Any digit picture (file, bytes, PIL image, array, tensor) -> the (28, 28) uint8 MNIST would make."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        pixels = _array_pixels(image, max_side)
    else:
        pixels = _image_pixels(load_image(image, max_side))
    return _mnist_from_pixels(pixels, ink)


def canvas_to_mnist(pixels: object) -> np.ndarray:
    """Web-canvas pixels (2-D, 0..255, bright ink on black) -> (28, 28) uint8 through the same pipeline."""
    try:
        a = (pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels))
        a = a.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise ImageError(f"canvas pixels must be a 2-D array of numbers ({e})") from None
    if a.ndim != 2:
        raise ImageError(f"canvas pixels must be 2-D (height, width), not shape {a.shape}")
    _check_size(a.shape[0], a.shape[1], "canvas", MAX_IMAGE_SIDE)
    if not np.isfinite(a).all():
        raise ImageError("canvas pixels contain NaN or infinity")
    if a.min() < 0 or a.max() > 255:
        raise ImageError(f"canvas pixels must lie in 0..255, got {a.min():g}..{a.max():g}")
    return _mnist_from_pixels(a[..., None] / 255, ink="bright")
