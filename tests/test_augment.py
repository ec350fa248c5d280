"""Batched augmentation: shapes and devices kept, seeded, pixels really move, labels survive it."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from digitlab.augment import AUGMENTATIONS, AugmentSpec, affine_matrices, augment, erase_mask
from digitlab.config import make_config
from digitlab.data import load_dataset
from digitlab.evaluation import predict_logits
from digitlab.normalize import NORMALIZATIONS, normalize
from digitlab.runs import load_run

KINDS = [k for k in AUGMENTATIONS if k != "none"]


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return normalize(load_dataset("mnist").test_images[:64], "standard")


@pytest.mark.quick
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_shape_dtype_device(kind, dtype, digits):
    x = digits.to(dtype)
    out = augment(x, kind, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


@pytest.mark.quick
def test_none_is_the_identity(digits):
    assert augment(digits, "none") is digits


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_and_deterministic(kind, digits):
    a = augment(digits, kind, torch.Generator().manual_seed(1))
    b = augment(digits, kind, torch.Generator().manual_seed(1))
    c = augment(digits, kind, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.manual_seed(5)  # the default is the global RNG, which training seeds and restores on resume
    d = augment(digits, kind)
    torch.manual_seed(5)
    assert torch.equal(d, augment(digits, kind))


@pytest.mark.quick
@pytest.mark.parametrize("kind", KINDS)
def test_moves_pixels_and_keeps_the_background(kind, digits):
    out = augment(digits, kind, torch.Generator().manual_seed(0))
    changed = (out - digits).abs().flatten(1).amax(1) > 0.5  # per image: some pixel changed a lot
    share = AUGMENTATIONS[kind].share  # "writers" changes 60% of each batch and leaves the rest as it is
    assert (0.9 if share == 1 else share - 0.15) < changed.float().mean() < share + 0.15
    background = digits.amin()
    blank = (out[:, 0, 0, 0] - background).abs() < 1e-4  # corners stay blank; a digit filling its box may reach one
    assert blank.float().mean() > 0.9
    assert out.amin() >= background - 1e-4 and out.amax() <= digits.amax() + 1e-4  # bilinear: no overshoot


@pytest.mark.quick
def test_flip_only_where_asked():
    flips = affine_matrices(1000, AUGMENTATIONS["flip+shift"], 28, "cpu", torch.Generator().manual_seed(0))
    mirrored = (torch.linalg.det(flips[:, :, :2]) < 0).float().mean()
    assert 0.4 < mirrored < 0.6
    digits_only = affine_matrices(1000, AUGMENTATIONS["affine"], 28, "cpu", torch.Generator().manual_seed(0))
    assert (torch.linalg.det(digits_only[:, :, :2]) > 0).all()  # never mirror a digit


@pytest.mark.quick
def test_erase_blanks_one_rectangle_in_the_asked_share_of_images():
    mask = erase_mask(2000, AugmentSpec(erase=0.5), 28, "cpu", torch.Generator().manual_seed(0))[:, 0]
    erased = mask.flatten(1).any(1)
    assert 0.45 < erased.float().mean() < 0.55
    rows, cols = mask[erased].any(2), mask[erased].any(1)  # (n, 28) each: the rectangle's extent
    assert torch.equal(mask[erased], rows[:, :, None] & cols[:, None, :])  # exactly one filled rectangle
    share = mask[erased].flatten(1).float().mean(1)
    assert share.min() > 0.005 and share.max() < 0.45 and 0.15 < share.mean() < 0.25  # 2-40% before rounding


@pytest.mark.quick
def test_erased_pixels_are_background(digits):
    torch.manual_seed(3)
    out = augment(digits, "flip+shift+erase")
    torch.manual_seed(3)
    plain = augment(digits, "flip+shift")  # erasing draws after the grid, so the geometry is the same
    differs = out != plain
    assert differs.flatten(1).any(1).float().mean() > 0.2  # some images were erased (p = 0.5)
    assert torch.allclose(out[differs], digits.amin().expand(int(differs.sum())))


@pytest.mark.quick
def test_unknown_kind_is_refused(digits):
    with pytest.raises(ValueError, match="affine"):
        augment(digits, "cutout")
    with pytest.raises(Exception, match="augment"):
        make_config({}, augment="cutout")


@pytest.mark.parametrize("kind, floor", [("affine", 0.7), ("affine+elastic", 0.7), ("writers", 0.6)])
def test_labels_survive(kind, floor, trained_run):
    """A CNN trained for 300 steps without augmentation (so not made invariant to it) still reads most augmented
    test digits, far better than the same digits turned upside down, which does change what they are. "writers"
    is applied to every image here (not 60% of them): its box-filled, coarse, binary digits are a format this
    model never saw (about 70% read, upside down 37%; a model trained longer reads 93-96%), not other labels."""
    loaded = load_run(trained_run)
    ds = load_dataset("mnist")
    images, labels = ds.test_images[:2000], ds.test_labels[:2000]
    torch.manual_seed(0)
    spec = replace(AUGMENTATIONS[kind], share=1.0)
    augmented = augment(normalize(images, loaded.normalization), spec)
    shift, scale = NORMALIZATIONS[loaded.normalization]  # back to uint8, which predict_logits normalises itself
    as_uint8 = ((augmented * scale + shift) * 255).round().clamp(0, 255).to(torch.uint8)[:, 0]

    def accuracy(x: torch.Tensor) -> float:
        return (predict_logits(loaded.model, x, loaded.normalization).argmax(1) == labels).float().mean().item()

    clean, moved, upside_down = accuracy(images), accuracy(as_uint8), accuracy(torch.rot90(images, 2, (1, 2)))
    assert clean > 0.95
    assert moved > floor and moved > upside_down + 0.3, f"{kind}: {clean:.2%} clean, {moved:.2%} augmented, " \
                                                      f"{upside_down:.2%} upside down"


def test_mirror_views_make_a_prediction_blind_to_left_and_right():
    """With mirror views, an image and its mirror image see the same ten views, so they get the same logits;
    without them (digits), a mirrored 7 is another shape and must be free to read differently."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))  # no symmetry of its own
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    mirrored = images.flip(-1)
    with_mirror = [predict_logits(model, x, "standard", tta=True, mirror=True) for x in (images, mirrored)]
    torch.testing.assert_close(with_mirror[0], with_mirror[1], rtol=0, atol=1e-5)
    shifts_only = [predict_logits(model, x, "standard", tta=True) for x in (images, mirrored)]
    assert (shifts_only[0] - shifts_only[1]).abs().max() > 1e-2
