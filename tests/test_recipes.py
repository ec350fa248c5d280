"""digitlab's own presets (fast, best, best-fashion, other-writers), checked through the paths that use them:
the config `digitlab train --preset X` hands to training, and the optimiser, learning-rate schedule, model and
augmentation that training builds from it. docs/results.md and docs/real_writers.md have the measurements behind
each recipe."""
from __future__ import annotations

import math

import pytest
import torch

import digitlab.training as train_module
from digitlab.augment import AUGMENTATIONS, affine_matrices
from digitlab.cli import main
from digitlab.config import TrainConfig, make_config
from digitlab.models import create_model
from digitlab.optim import LeanAdamW, build_optimizer, lr_at
from digitlab.presets import preset_config
from helpers import mnist_slice

OWN = ("fast", "best", "best-fashion", "other-writers")
TRAIN_IMAGES = 60_000  # MNIST and Fashion-MNIST alike


class Handed(Exception):
    """Raised by the stand-in for train(): carries the config the CLI built, so nothing trains."""

    def __init__(self, cfg: TrainConfig):
        super().__init__("train() called")
        self.cfg = cfg


def config_from_cli(monkeypatch, *argv: str) -> TrainConfig:
    """The TrainConfig `digitlab train ARGV` would train with."""
    def handed(cfg, **_kwargs):
        raise Handed(cfg)

    monkeypatch.setattr(train_module, "train", handed)
    with pytest.raises(Handed) as caught:
        main(["train", *argv])
    return caught.value.cfg


def steps_per_epoch(cfg: TrainConfig) -> int:
    """Optimiser steps in one epoch: the training images left after the validation hold-out, in batches."""
    return math.ceil((TRAIN_IMAGES - cfg.val_size) / cfg.batch_size)


def schedule(cfg: TrainConfig) -> list[float]:
    """The learning rate training sets before each step of the whole run (MNIST's 60,000 images)."""
    return [lr_at(step, cfg, steps_per_epoch(cfg)) for step in range(cfg.epochs * steps_per_epoch(cfg))]


@pytest.mark.quick
@pytest.mark.parametrize("name", OWN)
def test_cli_trains_the_preset_with_the_overrides(name, monkeypatch):
    plain = config_from_cli(monkeypatch, "--preset", name)
    assert plain == make_config(preset_config(name)) and plain.preset == name
    tuned = config_from_cli(monkeypatch, "--preset", name, "--epochs", "3", "--lr", "3e-3", "--seed", "11")
    assert tuned == make_config(preset_config(name), epochs=3, lr=3e-3, seed=11)
    assert (tuned.epochs, tuned.lr, tuned.seed) == (3, 3e-3, 11) and tuned.model_args == plain.model_args


@pytest.mark.quick
def test_fast_is_a_fixed_schedule_that_ends_where_its_one_cycle_does(monkeypatch):
    """fast runs 350 steps of 96 (0.611 of its 55,000-image epoch, chosen on validation) and evaluates
    once, at the end: the one-cycle learning rate peaks at 1.2e-2 a fifth of the way in and reaches zero on its
    last step. It trains with digitlab's lean AdamW (no torch.optim import), in bf16 where the CPU has it, scores
    in bf16 too, and draws no curves.png."""
    cfg = config_from_cli(monkeypatch, "--preset", "fast")
    optimizer = build_optimizer(create_model(cfg.model, **cfg.model_args), cfg)
    assert type(optimizer) is LeanAdamW
    assert optimizer.defaults["lr"] == 1.2e-2 and optimizer.defaults["weight_decay"] == 5e-4
    assert cfg.val_size == 5000 and steps_per_epoch(cfg) == 573
    lrs = schedule(cfg)[:cfg.max_steps]
    assert cfg.max_steps == 350 and lrs[0] == pytest.approx(1.2e-2 / 25)  # warm-up from lr/25
    assert max(lrs) == pytest.approx(1.2e-2, rel=0.01) and lrs.index(max(lrs)) in (69, 70)
    assert lrs[-1] == pytest.approx(1.2e-2 / 350 / 0.8)  # the last step of the linear decay to zero
    assert cfg.cpu_amp and cfg.eval_amp and not cfg.plot
    assert lr_at(cfg.max_steps, cfg, steps_per_epoch(cfg)) == 0  # where the schedule ends
    assert cfg.target_accuracy == 0 and cfg.eval_every == 0  # never looks at the test set before its end


@pytest.mark.quick
@pytest.mark.parametrize("name", ["best", "best-fashion"])
def test_best_one_cycle_spans_every_epoch(name, monkeypatch):
    cfg = config_from_cli(monkeypatch, "--preset", name)
    optimizer = build_optimizer(create_model(cfg.model, **cfg.model_args), cfg)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 5e-3
    lrs = schedule(cfg)
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(5e-3, rel=0.01) and peak == pytest.approx(0.15 * len(lrs), abs=1)
    assert lrs[0] == pytest.approx(2e-4) and 0 < lrs[-1] < 1e-5  # anneals to ~0 on the last step, not before
    assert len(lrs) == {"best": 8, "best-fashion": 30}[name] * 469  # all 60,000 images: a fixed schedule


@pytest.mark.quick
@pytest.mark.parametrize("name, parameters", [("fast", 29_178), ("best", 298_410), ("best-fashion", 298_410)])
def test_presets_build_the_measured_model(name, parameters, monkeypatch):
    """The model the recipe was measured with: DigitNet at width 16 depth 1 (fast, pooled before BatchNorm, with
    a whitening first conv: the same parameter count) or width 32 depth 2."""
    cfg = config_from_cli(monkeypatch, "--preset", name)
    model = create_model(cfg.model, **cfg.model_args)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert type(model).__name__ == "DigitNet"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    logits = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.quick
@pytest.mark.parametrize("name, mirrors", [("fast", None), ("best", False), ("best-fashion", True)])
def test_best_fashion_flips_clothes_and_best_never_mirrors_a_digit(name, mirrors, monkeypatch):
    """The augmentation training draws for the recipe, and the views its evaluations average: about half the
    clothes mirrored, no digit ever."""
    cfg = config_from_cli(monkeypatch, "--preset", name)
    assert cfg.tta_mirror is bool(mirrors)
    if mirrors is None:
        assert cfg.augment == "none"  # fast trains on the images as they are
        return
    matrices = affine_matrices(1000, AUGMENTATIONS[cfg.augment], 28, "cpu", torch.Generator().manual_seed(0))
    mirrored = (torch.linalg.det(matrices[:, :, :2]) < 0).float().mean().item()
    assert (0.4 < mirrored < 0.6) if mirrors else mirrored == 0
    assert not torch.allclose(matrices[:, :, 2], torch.zeros(1000, 2))  # and they move: shifts are drawn


@pytest.mark.slow
def test_ema_and_augmentation_resume_exactly(tmp_path, mnist):
    """With EMA and augmentation on, 1 epoch + resume ends where 2 uninterrupted epochs do: the averaged
    weights, the raw weights and the augmentation RNG all come back from the checkpoint."""
    from digitlab import train
    from digitlab.runs import load_run
    from digitlab.resume import resume_config

    small = mnist_slice(mnist, 1024, 500)
    base = {"model": "digitnet", "model_args": {"width": 4, "depth": 1}, "batch_size": 128, "epochs": 2,
            "ema": 0.99, "augment": "affine", "schedule": "onecycle", "lr": 1e-2, "threads": 1, "device": "cpu"}
    quiet = {"progress": False, "log": lambda *_: None}
    whole = train(make_config(base, out=str(tmp_path / "whole")), small, **quiet)
    train(make_config(base, out=str(tmp_path / "split"), max_steps=8), small, **quiet)  # stops after epoch 1
    split = train(resume_config(tmp_path / "split", max_steps=0), small, resume=True, **quiet)
    assert [r["test_accuracy"] for r in split.history] == [r["test_accuracy"] for r in whole.history]
    assert whole.final["test_accuracy"] > 0.3  # the averaged weights are a trained model, not the random start
    x = torch.randn(8, 1, 28, 28)
    a, b = load_run(whole.run_dir, "last").model, load_run(split.run_dir, "last").model
    assert torch.allclose(a(x), b(x), atol=1e-5)


@pytest.mark.quick
def test_other_writers_adds_other_writers_formats_to_realworld(monkeypatch):
    """other-writers: realworld's data (12,000 pen digits, MNIST less the 5,000-image hold-out, selected on
    it) at width 24 for 4 epochs, with the "writers" formats on 60% of each batch: 1s filled up to a square box,
    grids of 7-16 cells, binary bitmaps, thicker pens only (docs/real_writers.md has the measurements)."""
    cfg = config_from_cli(monkeypatch, "--preset", "other-writers")
    base = config_from_cli(monkeypatch, "--preset", "realworld")
    assert (cfg.model, cfg.model_args, cfg.epochs) == ("digitnet", {"width": 24}, 4)
    assert (cfg.pen_digits, cfg.val_size, cfg.fixed_schedule) == (12_000, 5_000, False)
    same = ("optimizer", "lr", "weight_decay", "schedule", "warmup", "label_smoothing", "batch_size", "pen_digits")
    assert all(getattr(cfg, k) == getattr(base, k) for k in same) and base.augment == "none"
    assert cfg.augment == "writers"
    spec = AUGMENTATIONS[cfg.augment]
    assert (spec.share, spec.fill, spec.coarse, spec.binarize) == (0.6, 0.8, 0.7, 0.7)
    assert spec.fill_aspect == (0.6, 1.0) and spec.coarse_cells == (7.0, 16.0)
    assert spec.stroke == 1.0 and spec.thicken
    assert not (spec.degrees or spec.scale or spec.shift or spec.shear or spec.aspect or spec.elastic or spec.erase)
    assert sum(p.numel() for p in create_model(cfg.model, **cfg.model_args).parameters()) == 170_242


@pytest.mark.quick
def test_refuses_non_digits_is_other_writers_wider_longer_and_exposed_to_non_digits(monkeypatch):
    """refuses-non-digits: other-writers' data and augmentation at width 32 for 5 epochs, plus 6,000 generated
    non-digits trained towards a uniform answer (docs/not_a_digit.md has the candidates and their figures)."""
    cfg = config_from_cli(monkeypatch, "--preset", "refuses-non-digits")
    base = config_from_cli(monkeypatch, "--preset", "other-writers")
    assert (cfg.model, cfg.model_args, cfg.epochs) == ("digitnet", {"width": 32}, 5)
    assert (cfg.non_digits, cfg.outlier_weight, base.non_digits) == (6_000, 0.5, 0)
    same = ("optimizer", "lr", "weight_decay", "schedule", "warmup", "label_smoothing", "batch_size", "pen_digits",
            "augment", "val_size", "fixed_schedule")
    assert all(getattr(cfg, k) == getattr(base, k) for k in same)
