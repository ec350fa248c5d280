"""What a model's input and output look like: classes out, channels and image size in.

A dataset knows its shape (data.Dataset.shape); training builds the model for it (models.create_model) and
records it in every checkpoint's metadata, and evaluation, export and prediction read it back from there. A
checkpoint without these keys predates them and is MNIST's: 10 classes of 1-channel 28x28 images. This module
imports neither PyTorch nor numpy, so `digitlab predict` on ONNX Runtime can read a shape without them.
"""
from __future__ import annotations

from dataclasses import dataclass

from digitlab.errors import ConfigError

SHAPE_KEYS = ("num_classes", "in_chans", "image_size")  # create_model's keywords, and the metadata keys
# Bounds on what a config or a file's metadata may ask for, checked before anything is allocated: an .onnx file is
# untrusted, and its metadata's shape sizes the images its load check is fed. 16M values is a 4x2048x2048 picture.
MAX_VALUES_PER_IMAGE = 1 << 24
MAX_CLASSES = 1_000_000


@dataclass(frozen=True)
class InputShape:
    """Classes a model tells apart, and the (channels, height, width) of the images it reads."""

    num_classes: int = 10
    in_chans: int = 1
    image_size: tuple[int, int] = (28, 28)  # (height, width)

    @classmethod
    def checked(cls, num_classes: object = 10, in_chans: object = 1, image_size: object = (28, 28)) -> InputShape:
        """A shape from untrusted values (a config, JSON metadata): whole numbers of at least 1, else a
        one-line ConfigError; JSON's [28, 28] becomes the tuple (28, 28)."""
        if not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
            raise ConfigError(f"image_size must be [height, width], got {image_size!r}")
        height, width = (whole("image_size", v) for v in image_size)
        shape = cls(whole("num_classes", num_classes), whole("in_chans", in_chans), (height, width))
        if shape.in_chans * height * width > MAX_VALUES_PER_IMAGE or shape.num_classes > MAX_CLASSES:
            raise ConfigError(f"{shape} is beyond digitlab's limits ({MAX_VALUES_PER_IMAGE:,} values per image, "
                              f"{MAX_CLASSES:,} classes)")
        return shape

    @classmethod
    def from_meta(cls, meta: dict) -> InputShape:
        """The shape a checkpoint's (or an .onnx file's) metadata records; MNIST's where it records none."""
        default = cls()
        return cls.checked(*(meta.get(key, getattr(default, key)) for key in SHAPE_KEYS))

    def to_meta(self) -> dict:
        """The JSON-ready form kept in metadata, and the keywords create_model takes."""
        return {"num_classes": self.num_classes, "in_chans": self.in_chans, "image_size": list(self.image_size)}

    @property
    def pixels(self) -> tuple[int, ...]:
        """One uint8 image as datasets hold it: (height, width) for grey, (channels, height, width) otherwise."""
        return self.image_size if self.in_chans == 1 else (self.in_chans, *self.image_size)

    @property
    def is_mnist(self) -> bool:
        """Whether this is MNIST's shape, the only one the digit-picture preprocessing (preprocess.to_mnist),
        the drawing page and the pen and non-digit generators make."""
        return self == MNIST_SHAPE

    def __str__(self) -> str:
        return f"{self.num_classes} classes of {self.in_chans}x{self.image_size[0]}x{self.image_size[1]} images"


MNIST_SHAPE = InputShape()


def whole(key: str, value: object) -> int:
    """A whole number of at least 1 (JSON's 1e3 is a float: refused too)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}")
    return value
