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
    thicken: bool = False  # stroke's u drawn in [0, stroke] only: thicker pens, never thinner
    # Other writer sets' formats (docs/real_writers.md): a digit stretched to fill its box, drawn on a coarse grid.
    share: float = 1.0  # share of each batch's images the spec changes; the rest pass untouched, as test digits look
    fill: float = 0.0  # share of the changed images whose ink box is stretched to fill_aspect (box-filling formats)
    fill_aspect: tuple[float, float] = (0.6, 1.0)  # the filled box's width / height, drawn uniformly
    coarse: float = 0.0  # share of the changed images redrawn on a grid of coarse_cells cells per digit side
    coarse_cells: tuple[float, float] = (7.0, 16.0)  # cells across the ink box's longer side, drawn uniformly
    binarize: float = 0.0  # share of the coarse images whose ink is thresholded at half before cells are counted

    def __post_init__(self) -> None:
        """Refuse combinations the batched ops cannot honour, before a training starts."""
        for name in ("share", "fill", "coarse", "binarize", "erase"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"AugmentSpec.{name} is a share: between 0 and 1, got {getattr(self, name)}")
        if not 0 < self.fill_aspect[0] <= self.fill_aspect[1]:
            raise ValueError(f"AugmentSpec.fill_aspect must be 0 < low <= high, got {self.fill_aspect}")
        if not 1 <= self.coarse_cells[0] <= self.coarse_cells[1]:
            raise ValueError(f"AugmentSpec.coarse_cells must be 1 <= low <= high, got {self.coarse_cells}")


# name -> what it does; TrainConfig.augment accepts these names.
AUGMENTATIONS: dict[str, AugmentSpec | None] = {
    "none": None,
    "affine": AugmentSpec(degrees=12.0, scale=0.1, shift=2.5),  # digits: small rotate, zoom, shift
    "affine+elastic": AugmentSpec(degrees=12.0, scale=0.1, shift=2.5, elastic=0.8),  # + stroke wobble
    "flip+shift": AugmentSpec(shift=2.0, flip=True),  # Fashion-MNIST's standard: mirror + small shift
    "flip+shift+erase": AugmentSpec(shift=2.0, flip=True, erase=0.5),  # + random erasing (Zhong et al. 2017)
    # other writers' formats on 60% of each batch: box-filled (1s as wide as tall), coarse grids, binary bitmaps
    "writers": AugmentSpec(share=0.6, fill=0.8, coarse=0.7, binarize=0.7, stroke=1.0, thicken=True),
}
