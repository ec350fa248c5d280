"""Pictures for a model of another shape than MNIST's: converted and resized, nothing more.

to_mnist makes a picture look like an MNIST digit: the ink found, made bright on black, cropped to a 20-pixel box
and centred by its mass in 28x28. That is what MNIST's images are, so it is right for models of MNIST's shape
only. A model trained on another dataset (letters, colour pictures, a user's own folder) saw whatever that
dataset's images look like, which digitlab cannot know; guessing (inverting, cropping) would feed it pictures
unlike its training images without saying so. So here a picture is only converted to the model's channels
(grey, or RGB) and resized to its image size. Whoever made the dataset prepares pictures the way its images were
made before predicting, or passes model-ready arrays with preprocess=False.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from digitlab.errors import ImageError
from digitlab.preprocess.constants import MAX_IMAGE_SIDE
from digitlab.preprocess.reading import _array_pixels, _is_tensor, load_image
from digitlab.shapes import InputShape

MODES = {1: "L", 3: "RGB"}  # the channels a picture can be converted to


def to_shape(source: object, shape: InputShape) -> np.ndarray:
    """Any picture (file, bytes, PIL image, array (H, W[, C]), tensor) -> uint8 of `shape.pixels`: (H, W) for a
    grey model, (3, H, W) for a colour one, resized with bilinear filtering and otherwise left as it is."""
    if shape.in_chans not in MODES:
        raise ImageError(f"pictures are read for 1- or 3-channel models; this model takes {shape.in_chans} channels: "
                         "give arrays of its shape with preprocess=False")
    picture = as_picture(source).convert(MODES[shape.in_chans])
    height, width = shape.image_size
    pixels = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), np.uint8)
    return pixels if shape.in_chans == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def as_picture(source: object) -> Image.Image:
    """A PIL image of any source; arrays and tensors are pixels in 0..255 (or 0..1 floats), alpha dropped."""
    if isinstance(source, np.ndarray) or _is_tensor(source):
        unit = _array_pixels(source, MAX_IMAGE_SIDE)  # float (H, W, C) in [0, 1]
        unit = unit[..., :1] if unit.shape[2] == 2 else unit[..., :3]  # grey or RGB, without the alpha channel
        pixels = np.rint(unit * 255).astype(np.uint8)
        return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    return load_image(source)
