"""Grad-CAM where the model looks: on the shipped DigitNet its map lies on the digit's strokes, each conv family's
feature map is found and placed on the input, a net with too coarse a map is refused, and the ink-share check
(digitlab.attribution.sanity) is measured as it says, on hand-made maps. No training: the shipped model, untrained
models of the zoo, and MNIST test digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from digitlab.attribution import Explainer
from digitlab.attribution.attributions import (METHODS, CamLayer, ExplainError, attribute, cam_layer, on_input,
                                           unread_zeroed)
from digitlab.attribution.sanity import ink_share, near_ink, run_checks
from digitlab.models import create_model


@pytest.fixture(scope="module")
def shipped() -> Explainer:
    return Explainer.from_run()


@pytest.fixture(scope="module")
def test_digits(mnist) -> np.ndarray:
    return mnist.test_images[:12].numpy()


#### the ink share, on hand-made maps


def stroke_image() -> np.ndarray:
    """A vertical stroke (column 10, rows 5-20) and one faint pixel (25, 25) below the ink threshold."""
    image = np.zeros((28, 28), np.uint8)
    image[5:21, 10] = 255
    image[25, 25] = 30
    return image


@pytest.mark.quick
def test_near_ink_grows_the_strokes_by_the_radius():
    near = near_ink(stroke_image()[None])[0]  # radius 2: columns 8-12, rows 3-22
    assert near.sum() == 5 * 20 and near[3:23, 8:13].all() and not near[25, 25]
    assert near_ink(stroke_image()[None], radius=1)[0].sum() == 3 * 18
    assert near_ink(stroke_image()[None], threshold=20)[0][25, 25]  # a lower threshold makes it ink


@pytest.mark.quick
def test_ink_share_counts_positive_mass_on_or_near_the_ink():
    image = stroke_image()
    attribution = np.zeros((28, 28), np.float32)
    attribution[12, 10] = 3  # on the stroke
    attribution[12, 12] = 1  # two pixels beside it
    attribution[25, 25] = 1  # on the faint pixel, which is not ink, far from the stroke
    attribution[0, 27] = -5  # against the class: not positive mass
    assert ink_share(attribution[None], image[None])[0] == pytest.approx(4 / 5)
    assert ink_share(attribution[None], image[None], radius=1)[0] == pytest.approx(3 / 5)
    assert ink_share(attribution[None], image[None], threshold=20)[0] == pytest.approx(1.0)
    nothing_for = np.where(attribution > 0, -attribution, attribution)
    assert np.isnan(ink_share(nothing_for[None], image[None])[0])  # no positive mass: no share to speak of


#### Grad-CAM on the shipped model


def test_gradcam_on_the_shipped_model_lies_on_the_ink(shipped, test_digits):
    """Most of each map's positive mass within 2 pixels of the strokes, and more than an evenly spread map would
    put there. Grad-CAM on the last conv's raw output, with the cells the model never reads, put about 16% there
    (with one map all zero): a corner the model does not look at."""
    digits = test_digits[:8]
    targets = shipped.probabilities(digits).argmax(1)
    maps = attribute(shipped.model, shipped.to_input(digits), targets.tolist(), "gradcam", shipped.background)
    shares = ink_share(maps, digits)
    chance = near_ink(digits).mean(axis=(1, 2))
    assert np.isfinite(shares).all(), shares  # every map has positive mass
    assert shares.mean() > 0.5, (shares.round(2), chance.round(2))
    assert (shares > chance).all(), (shares.round(2), chance.round(2))


def test_every_method_passes_the_checks_on_the_shipped_model(shipped, test_digits):
    """The sanity checks run for every method the page offers: each puts more of its mass near the ink than
    chance and deletes the predicted class faster than random pixels."""
    results = run_checks(shipped, test_digits, list(METHODS))
    assert list(results) == list(METHODS)
    for method, r in results.items():
        assert r["ink_share"] > r["ink_chance"], (method, r["ink_share"], r["ink_chance"])
        assert r["auc_attributed"] < r["auc_random"], (method, r["auc_attributed"], r["auc_random"])
        assert r["spearman_abs_ink"] < 0.6, (method, r["spearman_abs_ink"])


#### which feature map, where on the input


@pytest.mark.parametrize("name, args, layer, read, offset, stride", [
    ("digitnet", {}, "features.7.2", (6, 6), 1.5, 4),  # after BatchNorm and ReLU; the 7 -> 3 pool skips row 7
    ("digitnet", {"pool_first": True}, "features.5.0", (6, 6), 1.5, 4),  # pooled before its BatchNorm
    ("cnn", {}, "features.4", (10, 10), 3.5, 2),  # 11x11, pooled to 5x5 at once: row and column 11 unread
    ("lenet5", {}, "features.4", (10, 10), 4.5, 2),  # the sigmoid after the second conv, read whole
    ("alexnet", {}, "features.11", (13, 13), 1.0, 2),
])
def test_gradcam_reads_each_conv_family_where_the_model_reads(name, args, layer, read, offset, stride):
    model = create_model(name, **args).eval()
    found = cam_layer(model, name)
    names = {m: n for n, m in model.named_modules()}
    assert (names[found.layer], found.read) == (layer, read)
    assert found.offset == (offset, offset) and found.stride == (stride, stride)
    assert isinstance(found.conv, nn.Conv2d)


@pytest.mark.quick
def test_gradcam_cells_land_on_their_receptive_fields():
    """A single lit cell of the cnn's 11x11 grid (centres at 3.5 + 2j) peaks on the four pixels around its centre;
    cells the network never reads are 0, and the map fades to 0 towards them."""
    where = CamLayer(nn.Identity(), nn.Conv2d(1, 1, 1), (10, 10), (3.5, 3.5), (2.0, 2.0))
    cell = torch.zeros(1, 1, 11, 11)
    cell[0, 0, 2, 3] = 1  # centre (3.5 + 4, 3.5 + 6) = (7.5, 9.5)
    placed = on_input(cell, where)[0, 0]
    assert placed.shape == (28, 28)
    assert torch.allclose(placed[7:9, 9:11], placed.max().expand(2, 2)) and (placed[7:9, 9:11] > 0.5).all()
    assert float(placed.sum()) == pytest.approx(float(placed[5:11, 7:13].sum()))  # nothing beyond its neighbours
    ones = unread_zeroed(torch.ones(1, 1, 11, 11), where.read)
    assert ones[0, 0, :10, :10].min() == 1 and ones[0, 0, 10].max() == 0 and ones[0, 0, :, 10].max() == 0
    on_pixels = on_input(ones, where)[0, 0]
    assert on_pixels[21, 21] == pytest.approx(1) and on_pixels[24:].max() == 0  # past row 10's centre (23.5): 0


@pytest.mark.quick
def test_gradcam_refuses_a_model_whose_maps_are_too_coarse(test_digits):
    """A net whose only convolution is read on 3x3 positions has no map that can tell strokes apart: refused in
    one line, as a model without convolutions is."""
    net = nn.Sequential(nn.Conv2d(1, 4, 7, stride=7), nn.ReLU(), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(4, 10))
    explainer = Explainer(net, "coarse", "standard", tuple(map(str, range(10))), "mnist")
    with pytest.raises(ExplainError, match="read on at least 4x4 positions, and the largest in model 'coarse' is 3x3"):
        explainer.check_method("gradcam")
    assert explainer.explain(test_digits[:1], "saliency")[0].maps.shape == (2, 28, 28)  # the others still work
