"""Decoding an upload with memory bounded by a pixel budget: runs in a serving worker process, never on the loop.

    image = decode_upload(data, max_side=4096, max_pixels=4096 * 4096)   # a PIL image at most WORK_SIDE a side

digitlab.preprocess.to_mnist averages any image down to WORK_SIDE (1024) pixels a side before cleaning it, but it
first turns the whole decoded image into float32: a 4096x4096 RGBA upload becomes 256 MB of floats, and the
cleaning's temporaries take a worker past 1 GB. Here the size is checked from the header (side and pixel count)
before any pixel is decoded, JPEGs are decoded at reduced size by the DCT itself (Pillow's Image.draft, 1/2 to
1/8 scale), and anything still larger than WORK_SIDE is averaged down by Pillow's Image.reduce (a box average
over the same integer blocks to_mnist's own shrink uses) on its 8-bit pixels, before to_mnist sees it. The peak
is then one decoded 8-bit image (64 MB for 4096x4096 RGBA) plus a 1024x1024 cleaning, whatever the upload.
"""
from __future__ import annotations

import io
import math
import warnings

from PIL import ExifTags, Image

from digitlab.errors import ImageError
from digitlab.preprocess import ALPHA_MODES, WORK_SIDE
from digitlab.serve.limits import UPLOAD_FORMATS


EXIF_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the turn that undoes it (as ImageOps uses)


class PixelBudgetError(ImageError):
    """The header announces more pixels than the budget: refused before decoding (413)."""


def check_budget(width: int, height: int, max_side: int, max_pixels: int) -> None:
    """Refuse an image from its announced size: per side and in total."""
    if width > max_side or height > max_side:
        raise PixelBudgetError(f"the uploaded image is {width}x{height} pixels; the limit is {max_side}x{max_side}")
    if width * height > max_pixels:
        raise PixelBudgetError(f"the uploaded image is {width}x{height} = {width * height:,} pixels; "
                               f"the limit is {max_pixels:,}")


def reduce_factor(width: int, height: int, side: int = WORK_SIDE) -> int:
    """The integer block size that brings the longer side to at most `side` (1: already small enough)."""
    return max(1, math.ceil(max(width, height) / side))


def _reducible(im: Image.Image) -> Image.Image | None:
    """`im` converted as to_mnist's _image_pixels would convert it (RGBA, L or RGB), ready for Image.reduce; None
    for 16- and 32-bit greys, which stay whole: averaging them could change the range to_mnist reads them in."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return None
    if im.mode in ALPHA_MODES or "transparency" in im.info:  # palette images with a clear colour too
        return im if im.mode == "RGBA" else im.convert("RGBA")
    if im.mode in ("1", "L"):
        return im if im.mode == "L" else im.convert("L")
    return im if im.mode == "RGB" else im.convert("RGB")  # CMYK, YCbCr, palette without transparency, ...


def decode_upload(data: bytes, max_side: int, max_pixels: int, work_side: int = WORK_SIDE) -> Image.Image:
    """Upload bytes -> its first frame, EXIF-upright, at most about `work_side` pixels a side where the mode
    allows it; PixelBudgetError (413) from the header, ImageError (400) for anything unreadable. The full-size
    decode is reduced before anything else copies it (the EXIF turn is done on the reduced image)."""
    if not data:
        raise ImageError("no image data (zero bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as im:
                check_budget(im.width, im.height, max_side, max_pixels)
                im.seek(0)  # animated GIF, multi-page TIFF: the first frame
                factor = reduce_factor(im.width, im.height, work_side)
                if factor > 1 and im.format == "JPEG":  # the DCT decodes at 1/2, 1/4 or 1/8 scale directly
                    im.draft(im.mode, (math.ceil(im.width / factor), math.ceil(im.height / factor)))
                im.load()
                turn = _exif_turn(im)
                small = shrink(im, work_side)
                small = small.copy() if small is im else small  # pixels that outlive the file
        return small.transpose(turn) if turn is not None else small
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PixelBudgetError("the uploaded image has too many pixels to decode safely") from None
    except MemoryError:
        raise PixelBudgetError("the uploaded image needs more memory than a worker may use") from None
    except Exception as e:  # Pillow's decoders raise many types on corrupt data; all mean "bad image"
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from None


def _exif_turn(im: Image.Image) -> Image.Transpose | None:
    """The transpose that makes `im` upright by its EXIF orientation (as ImageOps.exif_transpose), or None."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # an EXIF block Pillow cannot parse: the picture as stored
        return None
    return EXIF_TURNS.get(orientation)


def shrink(image: Image.Image, work_side: int = WORK_SIDE) -> Image.Image:
    """Average `image` down in integer blocks until its longer side is at most `work_side` (where its mode
    can be averaged as to_mnist would; other modes are returned whole)."""
    factor = reduce_factor(image.width, image.height, work_side)
    if factor <= 1:
        return image
    reducible = _reducible(image)
    return image if reducible is None else reducible.reduce(factor)
