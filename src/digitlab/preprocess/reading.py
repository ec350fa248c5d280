"""Any image source (file, bytes, PIL image, array, tensor) to float pixels (H, W, C) in [0, 1], refusing bad ones."""
from __future__ import annotations

import io
import math
import os
import sys
from typing import TYPE_CHECKING, BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.errors import ImageError
from digitlab.formats import FORMATS_TEXT, IMAGE_FORMATS
from digitlab.preprocess.constants import MAX_IMAGE_SIDE

if TYPE_CHECKING:
    import torch

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image]
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


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
