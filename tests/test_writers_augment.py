"""The "writers" augmentation: other writer sets' formats (box-filled, coarse grids, binary bitmaps, thick pens)
drawn on a share of each batch, checked on hand-made digits whose right answer is known."""
from __future__ import annotations

import pytest
import torch

from digitlab.augment import (AUGMENTATIONS, AugmentSpec, augment, coarse_canvas, ink_boxes, levelled,
                              mass_centres)

SIZE = 28


def bar(width: int = 3, height: int = 20, left: int = 12, top: int = 4) -> torch.Tensor:
    """(1, 1, 28, 28) an upright 1: a bar of ink 1.0 on paper 0."""
    x = torch.zeros(1, 1, SIZE, SIZE)
    x[..., top:top + height, left:left + width] = 1.0
    return x


def stripes(period: int = 2, box: int = 20) -> torch.Tensor:
    """(1, 1, 28, 28) a 20x20 box of vertical 1-pixel stripes: detail finer than any coarse grid's cell."""
    x = torch.zeros(1, 1, SIZE, SIZE)
    start = (SIZE - box) // 2
    x[..., start:start + box, start:start + box:period] = 1.0
    return x


def box_aspect(x: torch.Tensor) -> torch.Tensor:
    """Width / height of each image's ink box, as ink_boxes finds it."""
    b = ink_boxes(x - x.amin(dim=(1, 2, 3), keepdim=True))
    return (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])


def batch(x: torch.Tensor, n: int = 16) -> torch.Tensor:
    return x.expand(n, -1, -1, -1).contiguous()


@pytest.mark.quick
def test_ink_box_of_a_bar():
    assert ink_boxes(bar()).tolist() == [[12.0, 4.0, 15.0, 24.0]]  # left, top, right, bottom pixel edges
    assert ink_boxes(torch.zeros(1, 1, SIZE, SIZE)).tolist() == [[0.0, 0.0, 28.0, 28.0]]  # blank: the image
    assert mass_centres(bar()).tolist() == [[13.5, 14.0]]


@pytest.mark.quick
def test_fill_makes_a_one_as_wide_as_asked_about_its_centre_of_mass():
    """A 1 three pixels wide and 20 tall (0.15) becomes a block 1.2 times wider than tall, still centred: exactly
    where its pixels are counted as squares (coarse cells), a little wider where bilinear softens its edges."""
    one = batch(bar())
    counted = AugmentSpec(fill=1.0, fill_aspect=(1.2, 1.2), coarse=1.0, coarse_cells=(16.0, 16.0))
    out = augment(one, counted, torch.Generator().manual_seed(0))
    assert torch.allclose(box_aspect(out), torch.tensor(1.2), atol=0.1) and (box_aspect(one) < 0.2).all()
    assert torch.allclose(mass_centres(out), mass_centres(one), atol=0.5)
    smooth = augment(one, AugmentSpec(fill=1.0, fill_aspect=(1.2, 1.2)), torch.Generator().manual_seed(0))
    assert ((box_aspect(smooth) > 1.1) & (box_aspect(smooth) < 1.5)).all()
    assert torch.allclose(mass_centres(smooth), mass_centres(one), atol=0.5)
    kept = augment(one, AugmentSpec(fill=0.0, coarse=0.0, shift=0.0), torch.Generator().manual_seed(0))
    assert torch.allclose(kept, one, atol=1e-5)  # without fill nothing moves


@pytest.mark.quick
def test_fill_keeps_the_centre_of_mass_not_the_box_centre():
    """A flagged 1: its mass sits right of its box's middle (the long stem on the right, the flag to the left) and
    stays there when the box is stretched to a square; to_mnist centres a digit by its mass, so a stretch about
    the box's middle would shift what the model sees by 2-3 pixels."""
    flagged = bar(width=2, left=14)
    flagged[..., 4:7, 8:14] = 1.0
    centre = mass_centres(flagged)
    box = ink_boxes(flagged)[0]
    assert centre[0, 0] - (box[0] + box[2]) / 2 > 1.5
    spec = AugmentSpec(fill=1.0, fill_aspect=(1.0, 1.0), coarse=1.0, coarse_cells=(16.0, 16.0))
    out = augment(flagged, spec, torch.Generator().manual_seed(0))
    assert torch.allclose(mass_centres(out), centre, atol=0.8)  # the cells and levelling move it a little
    assert box_aspect(out).item() == pytest.approx(1.0, abs=0.1)


@pytest.mark.quick
def test_writers_fill_spans_the_box_shapes_of_writer_sets():
    """The named augmentation's filled 1s come out 0.6..1.0 wide (writers' bitmaps 0.63..0.80, a square box 1.0)."""
    spec = AugmentSpec(fill=1.0, fill_aspect=AUGMENTATIONS["writers"].fill_aspect)
    out = augment(batch(bar(), 400), spec, torch.Generator().manual_seed(0))
    aspect = box_aspect(out)
    assert aspect.min() > 0.5 and aspect.max() < 1.3 and (aspect > 0.9).float().mean() > 0.15  # bilinear: +0.2


@pytest.mark.quick
def test_a_filled_box_stays_inside_the_image():
    """A 1 at the right edge, filled to a square about its centre of mass, is moved back in, not cut off."""
    out = augment(bar(left=24), AugmentSpec(fill=1.0, fill_aspect=(1.0, 1.0)), torch.Generator().manual_seed(0))
    assert box_aspect(out).item() == pytest.approx(1.0, abs=0.15)


def alternation(row: torch.Tensor) -> float:
    """How much of a row is a 2-pixel pattern (on, off, on...): its projection on (+1, -1, +1, ...)."""
    signs = torch.ones(row.shape[-1])
    signs[1::2] = -1
    return float((row * signs).sum().abs() / row.shape[-1])


@pytest.mark.quick
@pytest.mark.parametrize("cells", [7.0, 8.0, 10.0, 12.0])
def test_coarse_leaves_no_detail_finer_than_its_grid(cells):
    """1-pixel stripes (period 2) in a 20 px box are gone on a grid of 7-12 cells across it (1.7-2.9 px): what is
    left varies no faster than the cells (at 10 cells, 2 px each, it is one even block)."""
    striped = stripes()
    out = augment(striped, AugmentSpec(coarse=1.0, coarse_cells=(cells, cells)), torch.Generator().manual_seed(0))
    inner = slice(8, 20)  # well inside the 20 px box, away from its soft edges
    assert alternation(striped[0, 0, 14, inner]) == pytest.approx(0.5)
    assert alternation(out[0, 0, 14, inner]) < 0.1 * alternation(striped[0, 0, 14, inner])
    assert out.amax() == pytest.approx(1.0)  # levelled: the strongest ink full, as to_mnist makes it
    if cells == 10.0:
        assert out[0, 0, 14, inner].std() < 1e-4


@pytest.mark.quick
def test_coarse_keeps_detail_its_grid_can_hold():
    """Stripes 8 px apart survive a 20-cell grid: what goes is detail finer than the grid, not the digit."""
    wide = stripes(period=8)
    out = augment(wide, AugmentSpec(coarse=1.0, coarse_cells=(16.0, 16.0)), torch.Generator().manual_seed(0))
    row = out[0, 0, 14, 4:24]
    assert row.max() - row.min() > 0.5 * out.amax()


@pytest.mark.quick
def test_binary_cells_are_counted_in_four_by_four_blocks():
    """With binarize, each cell is the share of its 4x4 samples that are ink: 17 levels, as scikit-learn's digits."""
    x = batch(stripes(period=3) * 0.8 + stripes(period=3).roll(1, -1) * 0.3, 4)  # ink 0.8, grey 0.3 beside it
    source = ink_boxes(x)
    canvas, corner, cell = coarse_canvas(x, source, source, torch.full((4,), 8.0), 12, torch.ones(4, dtype=bool))
    counts = canvas / 0.8 * 16
    assert torch.allclose(counts, counts.round(), atol=1e-4) and counts.max() >= 4  # the 0.3 grey is paper
    assert torch.allclose(cell, torch.full((4,), 2.5)) and torch.allclose(corner, source[:, :2] - 2 * 2.5)
    grey, _, _ = coarse_canvas(x, source, source, torch.full((4,), 8.0), 12, torch.zeros(4, dtype=bool))
    assert not torch.allclose(grey / 0.8 * 16, (grey / 0.8 * 16).round(), atol=1e-3)  # without it: any grey


@pytest.mark.quick
def test_levelled_puts_strokes_at_full_ink():
    faint = stripes() * 0.3
    out = levelled(faint)
    assert out.amax() == pytest.approx(1.0) and torch.equal(out > 0, faint > 0)


@pytest.mark.quick
def test_thicken_never_thins():
    """thicken draws the stroke change in [0, stroke]: every pixel keeps at least its ink."""
    one = batch(bar(width=2), 64)
    out = augment(one, AugmentSpec(stroke=1.0, thicken=True), torch.Generator().manual_seed(0))
    assert (out >= one - 1e-5).all() and (out.flatten(1).sum(1) > one.flatten(1).sum(1)).float().mean() > 0.9
    both = augment(one, AugmentSpec(stroke=1.0), torch.Generator().manual_seed(0))
    assert (both.flatten(1).sum(1) < one.flatten(1).sum(1)).any()  # the default draws thinner pens too


@pytest.mark.quick
def test_share_changes_only_that_share_of_a_batch():
    """share 0.5: about half the images change, the others are exactly the input (what the test set looks like)."""
    x = batch(bar(), 1000)
    out = augment(x, AugmentSpec(share=0.5, fill=1.0), torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1)
    assert 0.45 < changed.float().mean() < 0.55
    assert torch.equal(out[~changed], x[~changed])
    assert augment(x, AugmentSpec(share=0.0, fill=1.0)) is not x  # a new tensor, even when nothing changed


def test_writers_is_seeded_and_per_image():
    x = batch(bar(), 64)
    a = augment(x, "writers", torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(x, "writers", torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(x, "writers", torch.Generator().manual_seed(2)))
    assert len({tuple(img.flatten().tolist()) for img in a}) > 20  # each image its own draw


@pytest.mark.quick
def test_writers_keeps_dtype_background_and_ink_range():
    """Normalised digits (background below 0): the same background, nothing brighter than the input's ink."""
    x = batch(bar(), 64).double() * 3.2 - 0.42
    out = augment(x, "writers", torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and out.shape == x.shape
    paper = (out - -0.42).abs() < 1e-9
    assert paper.flatten(1).float().mean(1).min() > 0.1  # where no ink reaches, exactly the paper it was
    assert out.min() >= -0.42 - 1e-9 and out.max() <= 2.78 + 1e-9


@pytest.mark.quick
@pytest.mark.parametrize("bad", [dict(share=1.5), dict(fill=-0.1), dict(coarse=2.0), dict(binarize=1.1),
                                 dict(fill_aspect=(1.0, 0.5)), dict(fill_aspect=(0.0, 1.0)),
                                 dict(coarse_cells=(12.0, 7.0)), dict(coarse_cells=(0.5, 4.0))])
def test_impossible_specs_are_refused(bad):
    with pytest.raises(ValueError, match="AugmentSpec"):
        AugmentSpec(**bad)
