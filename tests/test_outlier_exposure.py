"""Outlier exposure: generated non-digits in training, their answers pushed towards uniform, so that an energy
threshold can refuse letters and scribbles the model would otherwise read as digits with confidence."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import digitlab.training as train_module
from digitlab import load_dataset, make_config, non_digits, pen
from digitlab.config import ConfigError
from digitlab.synthetic import OUTLIER, PAGE_SEED_BASE, with_non_digits



@pytest.mark.quick
def test_the_loss_is_plain_cross_entropy_without_non_digits():
    cfg = make_config(preset="default")
    logits, y = torch.randn(8, 10), torch.arange(8)
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    assert torch.allclose(train_module.training_loss(logits, y, cfg), expected)


@pytest.mark.quick
def test_a_non_digit_costs_its_distance_from_a_uniform_answer():
    cfg = replace(make_config(preset="default"), non_digits=10, outlier_weight=0.5, label_smoothing=0.0)
    outlier = torch.full((2,), OUTLIER)
    uniform = train_module.training_loss(torch.zeros(2, 10), outlier, cfg)
    assert uniform.item() == pytest.approx(0.5 * math.log(10))  # the least a non-digit can cost
    confident = torch.zeros(2, 10)
    confident[:, 4] = 12.0  # "a 4, sure": what an H or an M used to get
    assert train_module.training_loss(confident, outlier, cfg) > uniform + 2
    logits = torch.zeros(2, 10, requires_grad=True)
    with torch.no_grad():
        logits[:, 4] = 3.0
    train_module.training_loss(logits, outlier, cfg).backward()
    assert logits.grad[:, 4].min() > 0 and logits.grad[:, :4].max() < 0  # descent flattens the answer


@pytest.mark.quick
def test_digits_and_non_digits_in_one_batch_are_each_averaged_over_their_own():
    cfg = replace(make_config(preset="default"), non_digits=10, outlier_weight=0.5, label_smoothing=0.0)
    logits = torch.randn(6, 10)
    y = torch.tensor([3, OUTLIER, 1, OUTLIER, OUTLIER, 7])
    digits = torch.nn.functional.cross_entropy(logits[[0, 2, 5]], y[[0, 2, 5]])
    others = -torch.log_softmax(logits[[1, 3, 4]], 1).mean()
    assert torch.allclose(train_module.training_loss(logits, y, cfg), digits + 0.5 * others)
    assert torch.isfinite(train_module.training_loss(logits[[1]], y[[1]], cfg))  # no digit in the batch: no NaN


def test_non_digits_and_page_digits_are_appended_from_the_training_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_CACHE", str(tmp_path))
    x, y = torch.zeros(4, 28, 28, dtype=torch.uint8), torch.arange(4)
    big_x, big_y = with_non_digits(x, y, 10)
    assert big_x.shape == (4 + 10 + 5, 28, 28) and big_x.dtype == torch.uint8
    assert (big_y[4:14] == OUTLIER).all() and big_y[14:].tolist() == [s % 10 for s in range(PAGE_SEED_BASE,
                                                                                         PAGE_SEED_BASE + 5)]
    expected, _, _ = non_digits.generate(10, non_digits.TRAIN_SEEDS.start)
    assert np.array_equal(big_x[4:14].numpy(), expected)  # the training seeds, never validation's or test's
    assert PAGE_SEED_BASE + 5 <= pen.TRAIN_SEEDS.stop
    again_x, _ = with_non_digits(x, y, 10)  # read back from the cache
    assert torch.equal(again_x, big_x)


@pytest.mark.quick
def test_accuracy_counts_digits_only():
    tally = train_module.EpochTally(torch.zeros(3, dtype=torch.float64))
    logits = torch.eye(10)[[3, 5, 5]]
    tally.add(torch.tensor(1.0), logits, torch.tensor([3, OUTLIER, 5]), 0.0, 0.0)
    loss, correct, count = tally.sums.tolist()
    assert (correct, count) == (2, 2)


@pytest.mark.quick
@pytest.mark.parametrize("changes, message", [
    ({"non_digits": 5, "dataset": "fashion-mnist"}, "only go with mnist"),
    ({"non_digits": -1}, "zero or positive"),
    ({"non_digits": 2 * 10**6}, "at most 1000000"),
    ({"outlier_weight": -0.5}, "zero or positive"),
])
def test_bad_outlier_settings_are_one_clear_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        make_config(preset="default", **changes)


def test_a_run_with_non_digits_trains_and_counts_only_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_CACHE", str(tmp_path / "cache"))
    ds = load_dataset("mnist", progress=False)
    ds = replace(ds, train_images=ds.train_images[:1000], train_labels=ds.train_labels[:1000],
                 test_images=ds.test_images[:300], test_labels=ds.test_labels[:300])
    cfg = make_config(model="mlp", batch_size=100, epochs=2, non_digits=300, threads=1, plot=False,
                      tensorboard=False, out=str(tmp_path / "run"))
    result = train_module.train(cfg, dataset=ds, progress=False, log=lambda *_: None)
    assert result.best_accuracy > 0.6
    row = result.history[-1]
    assert 0.6 < row["train_accuracy"] <= 1.0  # over the 1,000 digits, not diluted by the 450 drawings
