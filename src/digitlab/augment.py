"""Batched data augmentation on the training device: one grid_sample per batch, no per-sample Python.

    x = normalize(train_x[idx], "standard")          # (B, 1, 28, 28) float
    x = augment(x, "affine")                         # same shape, dtype and device; labels unchanged

Each image gets its own random rotation, scale and shift (and, for "affine+elastic", a smooth random
displacement field; for "flip+shift", a random horizontal flip), all folded into one sampling grid
and applied with F.grid_sample, like airbench's batch_crop / batch_flip_lr work on whole batches;
"+erase" then blanks one random rectangle in half the images (random erasing).
An AugmentSpec can also slant (shear), change width to height (aspect) and thicken or thin each image's
strokes (stroke: a 3x3 grey dilation or erosion, blended in by a random amount), for `augment(x, spec)`.
Slant and aspect alone made the European 1 worse on the style-shift benchmark (a slanted, narrowed MNIST 7
looks like a flagged 1; docs/realworld_recipe.md), so no named augmentation uses them.

"writers" makes digits the way other writer sets are made (docs/real_writers.md), on a share of each batch
only, so the rest still looks like what MNIST's test set holds:
  fill    the ink's box stretched to a drawn width / height (a 1 as wide as it is tall), centre of mass kept;
  coarse  the digit redrawn on a grid of 7-16 cells across its box, each cell the mean of 4x4 samples
          (thresholded at half first for `binarize`: a binary bitmap counted in blocks), then enlarged again
          bicubically: thick, soft, blocky strokes, as an 8x8 digit upscaled and read by to_mnist has them.
Cell size, aspect and shares are drawn per image: one grid_sample per stage for the whole batch.
Random numbers come from `generator` or, by default, torch's global RNG on the images' device, which
training seeds and restores on resume, so a run's augmentation is reproducible.
Pixels that come in from outside the image are background: each image's minimum value.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from digitlab.augment_spec import AUGMENTATIONS, AugmentSpec  # noqa: F401 (also imported from here)

ELASTIC_GRID = 4  # the displacement field is drawn on a 4x4 grid and upsampled: smooth over ~9 pixels
BOX_LEVEL = 0.2  # ink at least this share of an image's strongest defines its box (as preprocess.BOX_LEVEL)
SUBSAMPLES = 4  # samples per cell side when a coarse cell's ink is counted: the writers' 4x4 blocks
STROKE_PERCENTILE = 0.9  # to_mnist's stroke level: this percentile of the strong pixels is full ink
CANVAS_PAD = 2  # cells of paper around the ink box on the coarse grid, so the bicubic enlargement fades out


def uniform(n: int, low: float, high: float, device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def affine_matrices(n: int, spec: AugmentSpec, size: int, device, generator=None) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in grid_sample's [-1, 1] units."""
    angle = uniform(n, -spec.degrees, spec.degrees, device, generator) * (math.pi / 180)
    zoom = uniform(n, 1 - spec.scale, 1 + spec.scale, device, generator)
    shift = uniform(2 * n, -spec.shift, spec.shift, device, generator).view(n, 2) * (2 / size)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # sampling with 1/zoom enlarges the digit
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if spec.shear or spec.aspect:  # sample through rotation-zoom, then 1/width stretch, then slant
        slant = uniform(n, -spec.shear, spec.shear, device, generator)
        stretch = uniform(n, -spec.aspect, spec.aspect, device, generator).exp()
        zeros, ones = torch.zeros_like(slant), torch.ones_like(slant)
        shape = torch.stack([torch.stack([1 / stretch, slant / stretch], 1), torch.stack([zeros, ones], 1)], 1)
        theta = torch.cat([theta[:, :, :2] @ shape, theta[:, :, 2:]], 2)
    if spec.flip:  # negating the x column mirrors the output left-right
        sign = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
        theta[:, :, 0] = theta[:, :, 0] * sign[:, None]
    return theta


def elastic_field(n: int, spec: AugmentSpec, size: int, device, generator=None) -> torch.Tensor:
    """(n, size, size, 2) smooth random displacements, about spec.elastic pixels, in [-1, 1] units."""
    coarse = torch.randn(n, 2, ELASTIC_GRID, ELASTIC_GRID, device=device, generator=generator)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (field * (spec.elastic * 2 / size)).permute(0, 2, 3, 1)


def erase_mask(n: int, spec: AugmentSpec, size: int, device, generator=None) -> torch.Tensor:
    """(n, 1, size, size) bool: with probability spec.erase, one rectangle per image covering 2-40% of
    it, aspect ratio 0.3 to 3.3 (random erasing's ranges), built from two 1-D interval tests."""
    area = uniform(n, 0.02, 0.4, device, generator)
    aspect = uniform(n, math.log(0.3), -math.log(0.3), device, generator).exp()
    height = (area * aspect).sqrt().mul(size).clamp(max=size)
    width = (area / aspect).sqrt().mul(size).clamp(max=size)
    top = torch.rand(n, device=device, generator=generator) * (size - height)
    left = torch.rand(n, device=device, generator=generator) * (size - width)
    on = torch.rand(n, device=device, generator=generator) < spec.erase
    centres = torch.arange(size, device=device) + 0.5
    rows = (centres >= top[:, None]) & (centres < (top + height)[:, None]) & on[:, None]  # (n, size)
    cols = (centres >= left[:, None]) & (centres < (left + width)[:, None])
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def stroke_width(ink: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Thicken or thin each image's strokes: ink (B, C, H, W), background 0 and ink > 0, blended per image
    with its 3x3 grey dilation (weight u > 0) or erosion (weight -u, u < 0); u (B,) in [-1, 1], 0 keeps it."""
    u = u.to(ink.dtype).view(-1, 1, 1, 1)
    dilated = F.max_pool2d(ink, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-ink, 3, stride=1, padding=1)  # zero padding: ink at the border erodes too
    return torch.where(u > 0, ink + u * (dilated - ink), ink + u * (ink - eroded))


def base_grid(size: int, device, dtype) -> torch.Tensor:
    """(size, size, 3) homogeneous pixel-centre coordinates (x, y, 1) in [-1, 1], as affine_grid uses."""
    lin = (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1
    ones = torch.ones(size, size, device=device, dtype=dtype)
    return torch.stack([lin.expand(size, size), lin[:, None].expand(size, size), ones], -1)


def ink_boxes(ink: torch.Tensor) -> torch.Tensor:
    """(n, 4) each image's ink box as left, top, right, bottom pixel edges, where to_mnist would see it;
    the whole image where there is no ink."""
    peak = ink.amax(dim=(1, 2, 3), keepdim=True)
    mask = ((ink >= BOX_LEVEL * peak) & (peak > 0))[:, 0]
    edges = [span(mask.any(dim=1)), span(mask.any(dim=2))]  # columns, rows
    return torch.stack([edges[0][0], edges[1][0], edges[0][1], edges[1][1]], 1).to(ink.dtype)


def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last True index of each row of `hit` (n, L); 0 and L where a row has none."""
    size, found = hit.shape[1], hit.any(1)
    first = hit.to(torch.uint8).argmax(1)
    last = size - hit.flip(1).to(torch.uint8).argmax(1)
    return torch.where(found, first, 0), torch.where(found, last, size)


def mass_centres(ink: torch.Tensor) -> torch.Tensor:
    """(n, 2) each image's centre of mass (x, y) in pixel-edge coordinates: where to_mnist centres a digit."""
    size = ink.shape[-1]
    centres = torch.arange(size, device=ink.device, dtype=ink.dtype) + 0.5
    mass = ink[:, 0].sum(dim=(1, 2)).clamp(min=1e-12)
    x = (ink[:, 0].sum(1) * centres).sum(1) / mass
    y = (ink[:, 0].sum(2) * centres).sum(1) / mass
    return torch.stack([x, y], 1)


def filled_boxes(box: torch.Tensor, centre: torch.Tensor, canvas: int, spec: AugmentSpec,
                 generator=None) -> torch.Tensor:
    """(n, 4) where each ink box is drawn: for a `fill` share, as tall as its longer side and fill_aspect times
    that wide, stretched about the centre of mass so the digit stays where to_mnist puts it (moved back inside the
    canvas if that pushes it out); else the box itself."""
    n, device = box.shape[0], box.device
    aspect = uniform(n, *spec.fill_aspect, device, generator).to(box.dtype)
    chosen = torch.rand(n, device=device, generator=generator) < spec.fill
    size = box[:, 2:] - box[:, :2]  # (n, 2): width, height
    side = size.amax(1)
    target = torch.where(chosen[:, None], torch.stack([aspect * side, side], 1), size)
    low = centre + (box[:, :2] - centre) * (target / size.clamp(min=1e-6))
    low = low.clamp(min=0) - (low.clamp(min=0) + target - canvas).clamp(min=0)  # moved back inside the image
    return torch.cat([low, low + target], 1)


def box_map(points: torch.Tensor, source: torch.Tensor, target: torch.Tensor, size: int) -> torch.Tensor:
    """Points (n, ..., 2) in grid_sample's [-1, 1] units, taken from where `target` boxes lie to where `source`
    boxes lie (boxes (n, 4) in pixels): sampling through it stretches each source box to fill its target."""
    shape = (source.shape[0],) + (1,) * (points.dim() - 2) + (2,)
    scale = ((source[:, 2:] - source[:, :2]) / (target[:, 2:] - target[:, :2]).clamp(min=1e-6)).view(shape)
    to_unit = 2 / size
    return (source[:, :2] * to_unit - 1).view(shape) + (points - (target[:, :2] * to_unit - 1).view(shape)) * scale


def coarse_grid(n: int, spec: AugmentSpec, device, dtype, generator=None) -> tuple[torch.Tensor, int]:
    """(n,) cells across each digit's box, drawn in coarse_cells, and the canvas side in cells that holds any."""
    cells = uniform(n, *spec.coarse_cells, device, generator).to(dtype)
    return cells, math.ceil(spec.coarse_cells[1]) + 2 * CANVAS_PAD


def coarse_canvas(ink: torch.Tensor, source: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, side: int,
                  binary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each digit counted on its own grid: (n, 1, side, side) cell means of SUBSAMPLES^2 samples (thresholded at
    half the image's peak where `binary`), the grid's top-left corner (n, 2) and its cell size (n,) in pixels.
    The samples treat pixels as squares (nearest), so a cell is the area mean a box resize gives and a stretched
    box ends where it was asked to; the cells line up with the target box's top-left corner, as a bitmap's do."""
    size = ink.shape[-1]
    cell = (target[:, 2:] - target[:, :2]).amax(1) / cells
    corner = target[:, :2] - CANVAS_PAD * cell[:, None]
    steps = (torch.arange(side * SUBSAMPLES, device=ink.device, dtype=ink.dtype) + 0.5) / SUBSAMPLES
    offsets = steps[None, :] * cell[:, None]  # (n, side * SUBSAMPLES) pixels from the corner
    xs, ys = corner[:, 0:1] + offsets, corner[:, 1:2] + offsets
    points = torch.stack([xs[:, None, :].expand(-1, xs.shape[1], -1), ys[:, :, None].expand(-1, -1, ys.shape[1])], -1)
    samples = F.grid_sample(ink, box_map(points * (2 / size) - 1, source, target, size), mode="nearest",
                            padding_mode="zeros", align_corners=False)  # pixels as squares: cells are area means
    peak = ink.amax(dim=(1, 2, 3), keepdim=True)
    samples = torch.where(binary.view(-1, 1, 1, 1), torch.where(samples >= peak / 2, peak, 0.0), samples)
    return F.avg_pool2d(samples, SUBSAMPLES), corner, cell


def enlarge(canvas: torch.Tensor, corner: torch.Tensor, cell: torch.Tensor, grid: torch.Tensor,
            peak: torch.Tensor) -> torch.Tensor:
    """The coarse canvases read back at the output grid's points (n, H, W, 2), bicubically, then levelled as
    to_mnist levels a picture: the blocky, soft digit of an enlarged small picture, its strokes at the old peak."""
    size, side = grid.shape[1], canvas.shape[-1]
    pixels = (grid + 1) * (size / 2)  # [-1, 1] units -> pixel-edge coordinates
    in_cells = (pixels - corner[:, None, None, :]) / cell[:, None, None, None]
    out = F.grid_sample(canvas, in_cells * (2 / side) - 1, mode="bicubic", padding_mode="zeros", align_corners=False)
    return levelled(out.clamp(min=0)) * peak


def levelled(ink: torch.Tensor) -> torch.Tensor:
    """Ink (n, 1, H, W) on 0 scaled so its strokes' typical strength is 1 and clipped there, as to_mnist does: the
    90th percentile of the strong pixels (above half the peak, a stand-in for its Otsu threshold)."""
    flat = ink.flatten(1)
    strong = (flat > flat.amax(1, keepdim=True) / 2).sum(1)
    rank = (strong.to(ink.dtype) * (1 - STROKE_PERCENTILE)).long().clamp(min=0)  # 0: the strongest pixel
    level = flat.sort(1, descending=True).values.gather(1, rank[:, None]).clamp(min=1e-6)
    return (flat / level).clamp(max=1).view_as(ink)


def writer_format(ink: torch.Tensor, grid: torch.Tensor, spec: AugmentSpec, generator=None) -> torch.Tensor:
    """Sample the ink at the output grid (n, H, W, 2) through the writers' formats: box filled for a `fill` share,
    counted on a coarse grid and enlarged again for a `coarse` share (binary first for a `binarize` share of
    those); the other images are sampled as they are."""
    n, size = ink.shape[0], ink.shape[-1]
    source = ink_boxes(ink)
    target = filled_boxes(source, mass_centres(ink), size, spec, generator)
    cells, side = coarse_grid(n, spec, ink.device, ink.dtype, generator)
    coarse = torch.rand(n, device=ink.device, generator=generator) < spec.coarse
    binary = torch.rand(n, device=ink.device, generator=generator) < spec.binarize
    out = F.grid_sample(ink, box_map(grid, source, target, size), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    if coarse.any():
        idx = coarse.nonzero()[:, 0]
        canvas, corner, cell = coarse_canvas(ink[idx], source[idx], target[idx], cells[idx], side, binary[idx])
        peak = ink[idx].amax(dim=(1, 2, 3), keepdim=True)
        out = out.index_copy(0, idx, enlarge(canvas, corner, cell, grid[idx], peak))
    return out


def spec_of(kind: str | AugmentSpec) -> AugmentSpec | None:
    """The spec itself, or the named augmentation's (None for 'none'); a clear error for an unknown name."""
    if isinstance(kind, AugmentSpec):
        return kind
    if kind in AUGMENTATIONS:
        return AUGMENTATIONS[kind]
    raise ValueError(f"unknown augmentation {kind!r}; choose one of: {', '.join(AUGMENTATIONS)}")


def augment(x: torch.Tensor, kind: str | AugmentSpec = "affine",
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly transform a float batch (B, C, H, W) per `AUGMENTATIONS[kind]` (or a spec given directly);
    'none' returns x itself. With spec.share < 1 only that share of the images is changed."""
    spec = spec_of(kind)
    if spec is None or x.shape[0] == 0:
        return x
    if spec.share >= 1:
        return transform(x, spec, generator)
    chosen = (torch.rand(x.shape[0], device=x.device, generator=generator) < spec.share).nonzero()[:, 0]
    if not len(chosen):
        return x.clone()
    return x.index_copy(0, chosen, transform(x.index_select(0, chosen), spec, generator))


def transform(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Every image of the batch through the spec: one sampling grid, stroke width, formats, erasing."""
    n, size = x.shape[0], x.shape[-1]
    theta = affine_matrices(n, spec, size, x.device, generator)
    # Same grid as F.affine_grid(theta, x.shape), which takes ~6x longer on CPU (5 ms vs 0.8 ms at B=256).
    grid = torch.einsum("hwk,bjk->bhwj", base_grid(size, x.device, theta.dtype), theta)  # (B, H, W, 2)
    if spec.elastic:
        grid = grid + elastic_field(n, spec, size, x.device, generator)
    background = x.amin(dim=(1, 2, 3), keepdim=True)  # what a blank pixel looks like after normalisation
    ink = x - background
    if spec.stroke:
        ink = stroke_width(ink, uniform(n, 0 if spec.thicken else -spec.stroke, spec.stroke, x.device, generator))
    if spec.fill or spec.coarse:
        out = writer_format(ink, grid.to(x.dtype), spec, generator) + background
    else:
        out = F.grid_sample(ink, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False) + background
    if spec.erase:
        out = torch.where(erase_mask(n, spec, size, x.device, generator), background, out)
    return out
