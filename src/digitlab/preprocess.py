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
  edge and covers most of the picture (a marker pen); the image's majority would be ink there. Where ink covers
  so much of a crop's edges that the level found there is the ink or its grey rim, the picture's two levels and
  the digit's shape decide: the ink is one piece that splits the paper into several;
- polarity: the side with the strongest deviations from that paper is the ink, which is made bright;
- thresholding: Otsu's threshold on the levelled image finds the strong strokes, specks that are not
  part of the main strokes are dropped, and the soft ink values near the strokes are kept, stretched so
  the ink's strong pixels reach 255.
An image with no ink, one that cannot be read, one in a format outside digitlab.formats.IMAGE_FORMATS (no
other Pillow decoder ever sees the bytes), or one larger than MAX_IMAGE_SIDE is an ImageError.

numpy and Pillow only (tensors are accepted, but PyTorch is not imported for them: a process that never imported
it cannot hold one, and `digitlab predict` on ONNX Runtime runs without it); every function is pure (inputs in,
outputs out). Try it:

    python -c "from digitlab.preprocess import to_mnist; print(to_mnist('digit.jpg'))"
"""
from __future__ import annotations

import functools
import io
import math
import os
import sys
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.errors import ImageError
from digitlab.formats import FORMATS_TEXT, IMAGE_FORMATS

if TYPE_CHECKING:
    import torch


class BlankImageError(ImageError):
    """The picture holds no ink: blank, uniform or noise only."""

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
FIT_ROUNDS = 3  # at most this many fits, each without the samples the last one left far from it
LABEL_GRID = 32  # specks are found on a grid of about this many cells per side
MARGIN = 3  # pixels kept around the 20-pixel box when resampling, for the soft edges
STRIP = 4  # a picture this many times longer than wide is a strip: its short side is a few stroke widths
STROKE_SNR = 2  # a strip's cross-section must depart from paper by this many times the pixels' spread about it
MIXED_EDGE = 0.25  # this fraction of the edge looking like ink (far from the paper fitted there): check the paper
INK_LIKE = 0.25  # departing from the paper by this fraction of the picture's largest departure looks like ink
PIECE_FRACTION = 0.01  # a group of paper or ink this large (fraction of the picture) counts as a piece
DEPTH_RATIO = 1.5  # where paper and ink are one piece each, the paper is this many times thicker than the ink
NARROW = 2  # a crop this many times longer than wide: its ink's thickness says nothing of which side is paper
TWO_LEVELS = 6  # paper and ink: their medians this many times their spread apart (noise cut in two: about 2)
LEVEL_SLACK = 0.15  # the edges' paper level stands within this fraction of the contrast short of the paper's median

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
    """Decode a path, bytes, file object or PIL image (first frame, EXIF-upright), refusing huge ones and files
    in formats outside IMAGE_FORMATS. A PIL image is taken as it is: whoever decoded it chose its format."""
    if isinstance(source, Image.Image):
        _check_size(source.height, source.width, "image", max_side)
        return source
    name = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("no image data (zero bytes)")
        source = io.BytesIO(source)
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as im:
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
        raise ImageError(f"{name}: not an image in a format digitlab reads ({FORMATS_TEXT})") from None
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
        return _to_unit(np.asarray(im if im.mode == "L" else im.convert("L")))[..., None]
    return _to_unit(np.asarray(im.convert("RGB")))  # CMYK, YCbCr, palette without transparency, ...


def _is_tensor(x: object) -> bool:
    """A torch.Tensor, found without importing torch: unless something imported it, x cannot be one."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _array_pixels(image: np.ndarray | torch.Tensor, max_side: int) -> np.ndarray:
    """Array (H, W) or (H, W, C), or tensor (H, W), (1, H, W), (1, 1, H, W), (C, H, W) -> float (H, W, C)."""
    if _is_tensor(image):
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


#### Fast exact statistics
# np.median, np.percentile and np.histogram spend 30-140 us each in Python on the few thousand pixels of a
# small image, several times the arithmetic. These give the same numbers (same partition, same float32
# interpolation); tests/test_preprocess_equivalence.py checks them against numpy.


def _median(a: np.ndarray) -> np.ndarray:
    """np.median(a, axis=0): the middle value, or the float mean of the two middle values."""
    n = a.shape[0]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=0)[k]
    part = np.partition(a, (k - 1, k), axis=0)
    return (part[k - 1] + part[k]) / 2


def _percentile(a: np.ndarray, q: float) -> np.floating:
    """np.percentile(a, q) of a 1-D array, numpy's default linear interpolation, in a's dtype."""
    n = a.size
    virtual = (n - 1) * (q / 100)
    i = math.floor(virtual)
    if i >= n - 1:
        return a.max()
    part = np.partition(a, (i, i + 1))
    low, high = part[i], part[i + 1]
    gamma = virtual - i
    diff = high - low
    return high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma


def _histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram(values, bins) for a 1-D float array whose min and max differ: the same edges and counts."""
    first, last = values.min(), values.max()
    edges = np.linspace(first, last, bins + 1, endpoint=True, dtype=np.result_type(first, last, values))
    index = (((values - first) / (last - first)) * bins).astype(np.intp)
    index[index == bins] -= 1
    index[values < edges[index]] -= 1  # the division can land a value one bin off near an edge: correct it
    index[(values >= edges[index + 1]) & (index != bins - 1)] += 1
    return np.bincount(index, minlength=bins), edges


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


class _FitLayout(NamedTuple):
    """Where the background fit samples an image of one size, and the quadratic basis there."""

    row_step: int  # every row_step-th row and col_step-th column is sampled
    col_step: int
    row0: int  # the first sampled row and column
    col0: int
    basis: np.ndarray  # (n, 6) float32: 1, x, y, x*x, x*y, y*y at each sample
    basis64: np.ndarray  # the same in float64, as numpy would convert it to multiply with the float64 fit
    edge: np.ndarray  # (n,) bool: the sample lies on the outermost sampled rows or columns
    flat: np.ndarray  # (n,) flat index of each sample's pixel in the (H, W) image
    y: np.ndarray  # (H, 1, 1) and (1, W, 1) coordinates of every pixel, for the full-size surface
    x: np.ndarray


@functools.lru_cache(maxsize=16)
def _fit_layout(h: int, w: int) -> _FitLayout:
    """The fit's sampling layout for an h x w image, cached: a folder of photos is mostly one size, and building
    the basis costs as much as the fit on a small image. The arrays are read-only, so the cache stays intact."""
    step = max(1, max(h, w) // FIT_GRID)
    # a quadratic needs three samples across an axis: a strip under three steps wide is sampled at every pixel
    # across (a 400x12 strip gave one column, and the fit's slope across it was whatever the ridge left)
    row_step = step if len(range(_first(h, step), h, step)) >= 3 else 1
    col_step = step if len(range(_first(w, step), w, step)) >= 3 else 1
    rows, cols = np.arange(_first(h, row_step), h, row_step), np.arange(_first(w, col_step), w, col_step)
    y, x = np.meshgrid(_coords(h, row_step), _coords(w, col_step), indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    layout = _FitLayout(row_step, col_step, int(rows[0]), int(cols[0]), basis, basis.astype(np.float64),
                        _ring((len(rows), len(cols))).ravel(),
                        (rows[:, None] * w + cols[None, :]).ravel(),
                        _coords(h)[:, None, None], _coords(w)[None, :, None])
    for a in layout[4:]:
        a.setflags(write=False)
    return layout


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between the colours (n, c) and b, per row; for grey, |a - b| (the same numbers)."""
    if a.shape[1] == 1:
        return np.abs(a - b)[:, 0]
    return np.linalg.norm(a - b, axis=1)


def _paper_level(edge: np.ndarray) -> np.ndarray:
    """The paper's colour from the edge samples (n, c): the densest cluster, found by narrowing the median.

    The plain median lands on the grey rim of the ink when ink and its rim take half of the edge (a tight crop
    of thick strokes); re-taking the median of the samples nearest to it moves it onto the paper's plateau.
    """
    level = _median(edge)
    for _ in range(4):
        dist = _distance(edge, level)
        level = _median(edge[dist <= _median(dist)])
    return level


def _kept_rows(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """a[keep] for a 2-D array, each row moved as one opaque item: numpy's row-wise boolean indexing is several
    times slower on rows of a few numbers (59 against 8 us for the 64x64 fit's basis)."""
    a = np.ascontiguousarray(a)
    rows = a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)
    return rows[keep].view(a.dtype).reshape(-1, a.shape[1])


def _fit_paper(basis: np.ndarray, sample: np.ndarray,
               keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares quadratic (6, c) through the kept samples, and the kept samples' range per channel."""
    b, kept = _kept_rows(basis, keep), _kept_rows(sample, keep)
    coef = np.linalg.solve(b.T @ b + 1e-6 * np.eye(6), b.T @ kept)
    return coef, kept.min(axis=0), kept.max(axis=0)


def _grey(sample: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, float]:
    """Samples (n, c) and a colour as one brightness each, along the colour direction the samples vary most in."""
    if sample.shape[1] == 1:
        return sample[:, 0], float(level[0])
    direction = _bright_direction(sample).astype(np.float32)
    return sample @ direction, float(level @ direction)


def _pieces(mask: np.ndarray) -> int:
    """How many 8-connected groups of the mask hold at least PIECE_FRACTION of the grid."""
    labels, count = _components(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[:count]
    return int((sizes >= PIECE_FRACTION * mask.size).sum())


def _depth(mask: np.ndarray) -> int:
    """How many 3x3 erosions the mask survives: half its thickest part (beyond the picture counts as the mask)."""
    depth = 0
    while mask.any() and depth < max(mask.shape):
        mask = mask & ~_grow1(~mask)
        depth += 1
    return depth


def _paper_is_bright(bright: np.ndarray, both: bool) -> bool | None:
    """Which side of a two-level (rows, cols) grid is the paper, from the shapes alone; None if they cannot tell.

    In a crop cut to a connected digit the ink is one piece that reaches the edges, so it splits the paper into
    several (the paper beside a 1's stem, a 0's hole and corners): the side in more pieces is the paper. Where
    both are one piece (a 7 whose stem ends in a corner), the paper is the side with the thickest open part.
    `both`: the side in more pieces must also be the thicker (a 5 whose flag is apart from its body is ink in
    two pieces, on paper in one; thickness alone then tells nothing).
    """
    pieces = _pieces(bright), _pieces(~bright)
    if pieces[0] != pieces[1] and not both:
        return pieces[0] > pieces[1]
    if max(bright.shape) >= NARROW * min(bright.shape):  # a 1's stroke spans the crop: thicker than the paper
        return None
    depths = _depth(bright), _depth(~bright)
    if pieces[0] != pieces[1]:  # `both`: the side in more pieces must be the thicker one too
        agree = depths[0] != depths[1] and (depths[0] > depths[1]) == (pieces[0] > pieces[1])
        return pieces[0] > pieces[1] if agree else None
    return None if max(depths) < DEPTH_RATIO * min(depths) else depths[0] > depths[1]


def _spread(values: np.ndarray, middle: float) -> float:
    """A robust sigma of `values` about their median `middle`."""
    return 1.4826 * float(_median(np.abs(values - middle)))


def _paper_class(sample: np.ndarray, shape: tuple[int, int], level: np.ndarray, ink: str) -> np.ndarray | None:
    """The samples that are paper, where the edges' paper `level` is unreliable; None where it stands.

    Called when much of the edge is far from the surface fitted there: ink covers much of the crop's edges (a
    marker pen cut to its ink), so the edges' densest level can be the ink itself, or the grey rim of thick
    strokes. The samples split into two levels (Otsu), which must stand well apart (noise or a lighting ramp cut
    in two does not); the paper is the side opposite the ink the caller named, or else the one the digit's shape
    says (_paper_is_bright). The edges' level stands when it already lies on the paper's plateau.
    """
    grey, paper_grey = _grey(sample, level)
    if float(grey.max() - grey.min()) < MIN_CONTRAST:
        return None
    bright = grey > _otsu(grey)
    if bright.all() or not bright.any():
        return None
    middles = float(_median(grey[bright])), float(_median(grey[~bright]))
    spread = max(_spread(grey[bright], middles[0]), _spread(grey[~bright], middles[1]))
    if middles[0] - middles[1] < max(MIN_CONTRAST, TWO_LEVELS * spread):
        return None
    # a level at a side's median or beyond it, away from the other side, is on that side's plateau (the median,
    # with the grey rims of the strokes, is nearer the other side); between the two: a rim, never the paper
    slack = LEVEL_SLACK * (middles[0] - middles[1])
    plateau = paper_grey >= middles[0] - slack, paper_grey <= middles[1] + slack
    paper_bright = ink == "dark" if ink != "auto" else _paper_is_bright(bright.reshape(shape), any(plateau))
    if paper_bright is None or plateau[0 if paper_bright else 1]:  # None, or the edges' level is that paper's
        return None
    paper, own, away = (bright, middles[0], 1) if paper_bright else (~bright, middles[1], -1)
    return paper & ((grey - own) * away >= 0)  # its plateau: the half away from the ink, without the rims


def _background(pixels: np.ndarray, from_edges: bool = True,
                ink: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The paper under the ink: a quadratic surface per channel, refitted without outliers (the ink).

    Also returns the flat pixel indices of the samples it took for paper. The paper is found from the image's
    edges, not from the majority of its pixels: in a close crop or under a marker pen most pixels are ink,
    but the ink only touches the edges here and there, so most of the edge is still paper. `from_edges=False`
    takes it from all the samples instead, for a tight crop whose strokes run along its edges (a 5's bar, stem
    and bowl), where the edges are mostly ink but the picture is mostly paper. Where the surface found from the
    edges leaves much of the edge far from it (ink covers much of a close crop's edges), _paper_class checks
    it against the picture's two levels and the digit's shape, and the fit starts again from the paper there.
    """
    h, w, c = pixels.shape
    fit = _fit_layout(h, w)
    sample = pixels[fit.row0::fit.row_step, fit.col0::fit.col_step].reshape(-1, c)
    level, coef, low, high, keep, resid = _fit_surface(fit, sample, fit.edge if from_edges else slice(None))
    if from_edges:
        if resid is None:
            resid = _distance(sample, np.clip(fit.basis64 @ coef, low, high))
        if (resid[fit.edge] > INK_LIKE * resid.max()).mean() >= MIXED_EDGE:  # the ink's share of the edge
            paper = _paper_class(sample, (len(range(fit.row0, h, fit.row_step)), -1), level, ink)
            if paper is not None:
                level, coef, low, high, keep, _ = _fit_surface(fit, sample, paper)
    coef = coef.astype(np.float32)
    y, x = fit.y, fit.x
    # the same six terms, grouped so that only the x*y term is computed at full size
    surface = (coef[0] + coef[1] * x + coef[3] * x * x) + (coef[2] * y + coef[5] * y * y) + coef[4] * (x * y)
    return np.clip(surface, low, high), fit.flat[keep]


def _fit_surface(fit: _FitLayout, sample: np.ndarray, seed: np.ndarray | slice) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The quadratic through the samples that are paper, starting from the flat level of the `seed` samples:
    (that level, coefficients, the kept samples' range per channel, which samples it kept, and each sample's
    distance from the final surface where the last round computed it, else None)."""
    level = _paper_level(sample[seed])
    resid = _distance(sample, level)  # start from a flat page
    keep = resid <= 6 * _percentile(resid[seed], 25) + 2 / 255  # ink is far from the surface
    for i in range(FIT_ROUNDS):
        coef, low, high = _fit_paper(fit.basis, sample, keep)
        if i == FIT_ROUNDS - 1:
            return level, coef, low, high, keep, None
        # between slivers of paper (a thick 1 cropped close) a quadratic can swing far: keep it in the paper's range
        resid = _distance(sample, np.clip(fit.basis64 @ coef, low, high))
        refit = resid <= 6 * _percentile(resid[seed], 25) + 2 / 255
        if np.array_equal(refit, keep):  # the same samples would give the same fit again
            return level, coef, low, high, keep, resid
        keep = refit
    raise AssertionError("unreachable")


def _ink_direction(dev: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """The colour direction along which the ink departs from the paper: the main axis of strong deviations."""
    if dev.shape[2] == 1:
        return np.ones(1)
    norms = np.linalg.norm(dev, axis=2)
    strong = dev[norms > 4 * _median(norms.ravel()[paper]) + 2 / 255]  # (n, 3); paper's spread, as ink may be most
    if len(strong) == 0:
        return np.ones(3) / np.sqrt(3)
    return np.linalg.eigh(strong.T @ strong)[1][:, -1]


def _ink_strength(pixels: np.ndarray, ink: str, from_edges: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """Levelled ink strength (H, W): about 0 on the paper, positive on the ink, whatever its polarity.

    Also returns the paper's noise (a robust sigma of the strength on the samples taken for paper) and the
    strength's 3x3 mean, which both polarity and the strokes need. `from_edges`: see _background.
    """
    background, paper = _background(pixels, from_edges, ink)
    grey = pixels.shape[2] == 1
    light = background if grey else background.mean(axis=2, keepdims=True)
    top = max(float(light.max()), DARK_PAPER)
    dev = (pixels - background) * (top / np.maximum(light, top / 4))  # light multiplies: undo it on dim parts
    if grey:  # the only direction there is
        strength = dev[..., 0]
    else:
        direction = _ink_direction(dev, paper)
        if direction.sum() < 0:  # make "positive" mean "brighter than the paper"
            direction = -direction
        strength = (dev * direction.astype(np.float32)).sum(axis=2)
    noise = 1.4826 * float(_median(np.abs(strength.ravel()[paper])))
    smooth = _mean3(strength)
    if ink == "auto":  # the ink is the side with the strongest deviations (smoothed: lone pixels don't count)
        ink = "bright" if smooth.max() >= -smooth.min() else "dark"
    return (strength, noise, smooth) if ink == "bright" else (-strength, noise, -smooth)


#### Strokes


def _zero_padded(a: np.ndarray, before: int, after: int, dtype: type | np.dtype | None = None) -> np.ndarray:
    """`a` inside a border of zeros (np.pad's constant mode, without its Python overhead)."""
    h, w = a.shape
    out = np.zeros((h + before + after, w + before + after), dtype or a.dtype)
    out[before:before + h, before:before + w] = a
    return out


def _dilate_rows(mask: np.ndarray, r: int) -> np.ndarray:
    """Along axis 0, pixels within r of a True pixel: ORs of windows doubling in width, log2(2r + 1) passes."""
    n, width, k = mask.shape[0], 2 * r + 1, 1
    p = np.zeros((n + 2 * r,) + mask.shape[1:], dtype=bool)
    p[r:r + n] = mask
    while 2 * k <= width:
        p = p[:-k] | p[k:]  # p[i]: any True in the original p[i:i + 2k]
        k *= 2
    return p[:n] | p[width - k:width - k + n]  # two overlapping k-wide windows cover the 2r+1 window


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within r (a square window) of a True pixel: the window along rows, then along columns.

    Boolean ORs of shifted slices; a summed-area table (two int64 cumulative sums) took 30 ms at 1024 px.
    """
    return _dilate_rows(_dilate_rows(mask, r).T, r).T


def _grow1(mask: np.ndarray) -> np.ndarray:
    """Cells within one cell (8 neighbours) of a True cell: a 3x3 OR done as two 3-wide passes."""
    p = _zero_padded(mask, 1, 1)
    rows = p[:-2] | p[1:-1] | p[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def _mean3(a: np.ndarray) -> np.ndarray:
    """3x3 mean, zeros outside: noise and JPEG blocks shrink, strokes stay."""
    p = _zero_padded(a, 1, 1)
    rows = p[:-2] + p[1:-1]
    rows += p[2:]  # in place: the same sums, fewer temporary arrays on a large image
    out = rows[:, :-2] + rows[:, 1:-1]
    out += rows[:, 2:]
    out /= 9
    return out


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the cut that best separates `values` into two classes."""
    if values.max() - values.min() < 1e-6:  # one value (a single dot): it is all ink
        return float(values.min()) / 2
    hist, edges = _histogram(values, 128)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    return float(edges[np.nanargmax(between[:-1]) + 1])


def _find(parent: list[int], i: int) -> int:
    """The root of i's set in a union-find forest, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a small grid: (labels 0..count-1, `count` off the mask; count).

    Works on runs of consecutive True cells in a row, not on cells: a digit on the 32x32 cell grid is about a
    hundred runs, so joining touching runs of neighbouring rows with a union-find is a short Python loop, where
    spreading labels cell by cell took up to 20 whole-grid passes.
    """
    h, w = mask.shape
    step = np.diff(_run_edges(mask), axis=1)  # +1 where a run starts, -1 just after it ends
    run_row, start = np.nonzero(step == 1)  # a run covers columns start .. end - 1 of its row
    end = np.nonzero(step == -1)[1]
    # runs in adjacent rows touch (8 neighbours) when their column ranges, widened by one, overlap
    touch = ((run_row[:, None] + 1 == run_row[None, :])
             & (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None]))
    parent = list(range(len(start)))
    for a, b in zip(*(i.tolist() for i in np.nonzero(touch))):
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([_find(parent, i) for i in range(len(parent))], dtype=np.intp)
    ids = np.unique(roots, return_inverse=True)[1].reshape(-1)
    count = int(ids.max()) + 1 if len(ids) else 0
    labels = np.full(h * w, count, dtype=np.intp)
    labels[np.flatnonzero(mask)] = np.repeat(ids, end - start)  # runs list the True cells in row-major order
    return labels.reshape(h, w), count


def _run_edges(mask: np.ndarray) -> np.ndarray:
    """The mask as int8 with a False column on each side, so that every run has a start and an end."""
    out = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    out[:, 1:-1] = mask
    return out


def _main_cells(strong: np.ndarray) -> np.ndarray:
    """Coarse cells holding the main strokes: groups of strong ink that are not specks beside the largest."""
    h, w = strong.shape
    f = max(2, math.ceil(max(h, w) / LABEL_GRID))  # cells of f x f pixels; they bridge gaps of a pixel or two
    cells = strong
    if h % f or w % f:
        cells = np.zeros((h + -h % f, w + -w % f), bool)
        cells[:h, :w] = strong
    mass = cells.reshape(cells.shape[0] // f, f, cells.shape[1] // f, f).sum(axis=(1, 3))
    labels, count = _components(mass > 0)
    totals = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=count + 1)
    keep = totals >= SPECK_FRACTION * totals[:-1].max()
    keep[-1] = False  # the label of empty cells
    kept = _grow1(keep[labels])  # and their neighbours
    return kept.repeat(f, axis=0).repeat(f, axis=1)[:h, :w]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the True pixels, bottom and right exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _soft_ink(strength: np.ndarray, noise: float, smooth: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] on 0 (`noise`: the paper's sigma, `smooth`: the 3x3 mean of `strength`): specks removed,
    soft edges kept, strokes at 1."""
    peak = float(smooth.max())
    if peak < max(MIN_CONTRAST, 4 * noise):
        raise BlankImageError(f"no digit found: the image is blank or uniform (ink contrast {max(peak, 0):.3f}, "
                         f"noise {noise:.3f})")
    floor = max(3 * noise, 1 / 255)
    threshold = _otsu(smooth[smooth > max(floor, 0.05 * peak)])
    above = smooth > threshold
    cells = _main_cells(above)
    strong = above & cells
    top, bottom, left, right = _bbox(strong)
    reach = max(1, round(max(bottom - top, right - left) / TARGET_BOX))  # source pixels per MNIST pixel
    near = _dilate((strength > threshold / 2) & cells, reach)  # thin stroke ends are weak when smoothed
    level = max(float(_percentile(strength[strong], 90)), floor + 1e-3)  # the strokes' typical strength
    return np.clip((strength - floor) / (level - floor), 0, 1) * near


#### Strips: a stroke cut to its ink


def _is_strip(shape: tuple[int, ...]) -> bool:
    """At least STRIP times longer than wide: a thin stroke (a 1) cropped to its ink, or a strip of paper."""
    return max(shape[0], shape[1]) >= STRIP * min(shape[0], shape[1])


def _brightness(pixels: np.ndarray) -> np.ndarray:
    """(H, W) along the colour direction the pixels vary most in, oriented so that larger is brighter."""
    if pixels.shape[2] == 1:
        return pixels[..., 0]
    return pixels @ _bright_direction(pixels.reshape(-1, pixels.shape[2])).astype(np.float32)


def _bright_direction(flat: np.ndarray) -> np.ndarray:
    """The colour direction (c,) that pixels (n, c) vary most in, oriented so that larger is brighter."""
    centred = flat - flat.mean(axis=0)
    direction = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    return -direction if direction.sum() < 0 else direction


def _stroke_strength(pixels: np.ndarray, ink: str) -> tuple[np.ndarray, float, np.ndarray]:
    """A strip read as a stroke along it: what _ink_strength returns, or BlankImageError.

    A tight crop of a thin upright 1 is nearly all ink: its edges hold no paper, so the edge-based paper level
    and noise are the stroke's own rim and the digit looks uniform. Averaged along the strip, though, a stroke
    leaves a cross-section whose middle departs from its two ends (the rim, nearest the paper), while blank
    paper, uniform or noisy, averages to a flat or straight one (a lighting ramp across is straight too). The
    strip is a stroke when that departure is at least MIN_CONTRAST and STROKE_SNR times the pixels' spread
    about the cross-section, a spread that is the paper's noise however blurred, and an upper bound on it
    beside a stroke that wobbles.
    """
    tall = pixels.shape[0] >= pixels.shape[1]
    grey = _brightness(pixels if tall else pixels.transpose(1, 0, 2))  # (long, short): the stroke runs down
    profile = grey.mean(axis=0)
    ends = np.linspace(profile[0], profile[-1], len(profile), dtype=np.float32)  # the straight line between rims
    departure = profile - ends
    if ink == "auto":
        ink = "bright" if departure.max() >= -departure.min() else "dark"
    sign = 1 if ink == "bright" else -1
    contrast = float((sign * departure).max())
    spread = 1.4826 * float(_median(np.abs(grey - profile).ravel()))
    if contrast < max(MIN_CONTRAST, STROKE_SNR * spread):
        raise BlankImageError(f"no digit found: the image is blank or uniform (a strip with no stroke along it: "
                              f"contrast {max(contrast, 0):.3f}, noise {spread:.3f})")
    strength = sign * (grey - ends)
    strength = np.ascontiguousarray(strength if tall else strength.T, dtype=np.float32)
    # the paper's noise for the ink's floor: pixel to pixel along the stroke, where the stroke itself is smooth
    along = np.abs(np.diff(strength, axis=0 if tall else 1)).ravel()
    noise = 1.4826 * float(_median(along)) / math.sqrt(2) if along.size else 0.0
    return strength, noise, _mean3(strength)


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
    region = _window(soft.astype(np.float32, copy=False), y0, math.ceil(src_top + out_h / scale) + 1,
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


def _read_ink(pixels: np.ndarray, ink: str) -> np.ndarray:
    """The soft ink (_soft_ink) under the first reading of the paper that finds any; BlankImageError if none does.

    1. the paper at the picture's edges (most pictures: a margin, or a close crop that the ink touches here
       and there); 2. for a strip, a stroke along it (a thin 1 cut to its ink: no paper anywhere, and its
       majority is ink); 3. the paper as the picture's majority (a close crop whose strokes run along its
       edges). A picture that one reading finds ink in is never read by the next, so the later ones change
       nothing that the first could read.
    """
    readings = [lambda: _ink_strength(pixels, ink)]
    if _is_strip(pixels.shape):
        readings.append(lambda: _stroke_strength(pixels, ink))
    readings.append(lambda: _ink_strength(pixels, ink, from_edges=False))
    for i, reading in enumerate(readings):
        try:
            return _soft_ink(*reading())
        except BlankImageError:
            if i == len(readings) - 1:
                raise
    raise AssertionError("unreachable")


def _mnist_from_pixels(pixels: np.ndarray, ink: str) -> np.ndarray:
    """The whole pipeline on float (H, W, C) pixels in [0, 1]."""
    if ink not in ("auto", "bright", "dark"):
        raise ImageError(f"ink must be 'auto', 'bright' or 'dark', not {ink!r}")
    pixels, ink = _resolve_alpha(pixels, ink)
    if pixels.shape[2] == 3 and np.ptp(pixels, axis=2).max() < 2 / 255:  # grey stored as RGB
        pixels = pixels.mean(axis=2, keepdims=True)
    soft = _read_ink(_shrink(pixels, WORK_SIDE), ink)
    field = _center(*_scale_to_box(soft))
    return np.round(field / field.max() * 255).astype(np.uint8)  # thin strokes still peak at 255, like MNIST


#### Public API


def to_mnist(image: ImageSource | np.ndarray | torch.Tensor, ink: str = "auto",
             max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:  # ink: "auto" (detect), "bright" or "dark"
    """Any digit picture (file, bytes, PIL image, array, tensor) -> the (28, 28) uint8 MNIST would make."""
    if isinstance(image, np.ndarray) or _is_tensor(image):
        pixels = _array_pixels(image, max_side)
    else:
        pixels = _image_pixels(load_image(image, max_side))
    return _mnist_from_pixels(pixels, ink)


def canvas_to_mnist(pixels: object) -> np.ndarray:
    """Web-canvas pixels (2-D, 0..255, bright ink on black) -> (28, 28) uint8 through the same pipeline."""
    try:
        a = (pixels.detach().cpu().numpy() if _is_tensor(pixels) else np.asarray(pixels))
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
