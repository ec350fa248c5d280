"""The named augmentations as plain data: AugmentSpec and AUGMENTATIONS, importable without torch.

`digitlab.augment` applies them on the training device; this module only describes them, so the recipe
(`digitlab.config`) and the command line's parser can name them without importing PyTorch (which costs a
`digitlab predict` run about 1.5 s of CPU before its first file).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentSpec:
    degrees: float = 0.0  # rotation drawn uniformly in [-degrees, degrees]
    scale: float = 0.0  # zoom factor drawn uniformly in [1 - scale, 1 + scale]
    shift: float = 0.0  # translation in pixels, drawn uniformly in [-shift, shift] on each axis
    elastic: float = 0.0  # typical size in pixels of a smooth random displacement (0: none)
    flip: bool = False  # mirror left-right with probability 1/2 (clothes, never digits)
    erase: float = 0.0  # probability of blanking one random rectangle of 2-40% of the image (random erasing)
    shear: float = 0.0  # slant: x moves by k * y, k drawn uniformly in [-shear, shear]
    aspect: float = 0.0  # width / height multiplied by exp(u), u drawn uniformly in [-aspect, aspect]
    stroke: float = 0.0  # stroke width: blend towards a 3x3 dilation (u > 0) or erosion (u < 0), u in +-stroke


# name -> what it does; TrainConfig.augment accepts these names.
AUGMENTATIONS: dict[str, AugmentSpec | None] = {
    "none": None,
    "affine": AugmentSpec(degrees=12.0, scale=0.1, shift=2.5),  # digits: small rotate, zoom, shift
    "affine+elastic": AugmentSpec(degrees=12.0, scale=0.1, shift=2.5, elastic=0.8),  # + stroke wobble
    "flip+shift": AugmentSpec(shift=2.0, flip=True),  # Fashion-MNIST's standard: mirror + small shift
    "flip+shift+erase": AugmentSpec(shift=2.0, flip=True, erase=0.5),  # + random erasing (Zhong et al. 2017)
}
