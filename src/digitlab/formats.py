"""The image formats digitlab reads, in one place: the CLI, the Python API and the server all use this list.

Pillow can open some 40 formats, and every decoder is attack surface: EPS runs Ghostscript, and ICO, TGA,
PCX, SGI or PPM add parsers nobody here needs for a picture of a digit. preprocess.load_image opens files
with `formats=IMAGE_FORMATS` (so no other decoder ever sees the bytes), serve.limits checks uploads against
it, and `digitlab predict FOLDER` picks files whose name ends in one of these formats' extensions.
"""
from __future__ import annotations

import functools

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # Pillow's names for them
FORMATS_TEXT = "PNG, JPEG, GIF, BMP, TIFF or WebP"  # for messages


@functools.lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """File name endings of IMAGE_FORMATS as Pillow registers them (.png, .jpg, .jpeg, .tif, .webp, ...)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS)


@functools.lru_cache(maxsize=1)
def refused_suffixes() -> frozenset[str]:
    """Endings of the formats Pillow knows but digitlab does not read (.ico, .tga, .eps, .ppm, ...)."""
    from PIL import Image

    Image.init()
    return frozenset(Image.registered_extensions()) - image_suffixes()
