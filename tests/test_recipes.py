"""digitlab's own presets (fast, best, best-fashion): the fields docs/results.md measured, and that they build."""
from __future__ import annotations

import torch

from digitlab.config import make_config
from digitlab.models import create_model
from digitlab.presets import PRESETS, preset_config


def test_fast_stops_at_99_within_an_epoch():
    cfg = make_config(preset_config("fast"))
    assert (cfg.model, cfg.model_args) == ("digitnet", {"width": 16, "depth": 1})
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.batch_size, cfg.epochs) == ("adamw", 1e-2, "onecycle", 128, 1)
    assert cfg.target_accuracy == 0.99 and cfg.eval_every == 164 and cfg.eval_batch_size == 250
    assert cfg.schedule_epochs == 0.7  # the one-cycle anneals by step 328, where the second evaluation falls
    assert cfg.augment == "none" and cfg.ema == 0


def test_best_uses_augmentation_ema_and_tta():
    cfg = make_config(preset_config("best"))
    assert cfg.dataset == "mnist" and cfg.model_args == {"width": 32, "depth": 2}
    assert cfg.augment == "affine" and cfg.ema > 0 and cfg.tta and cfg.label_smoothing == 0.1
    assert cfg.schedule == "onecycle" and cfg.epochs == 15  # 99.70% mean of 3 seeds, measured at 15
    assert cfg.cpu_amp and cfg.eval_batch_size == 100  # bf16 training on AMX CPUs; small TTA evaluation batches


def test_best_fashion_flips_clothes_not_digits():
    cfg = make_config(preset_config("best-fashion"))
    assert cfg.dataset == "fashion-mnist" and cfg.augment == "flip+shift"  # measured ahead of +erase
    assert cfg.epochs == 30 and cfg.ema > 0 and cfg.tta and cfg.cpu_amp
    assert make_config(preset_config("best")).augment != "flip+shift"


def test_own_presets_build_and_run_a_step():
    for name in ("fast", "best", "best-fashion"):
        cfg = make_config(preset_config(name))
        model = create_model(cfg.model, **cfg.model_args)
        logits = model(torch.randn(2, 1, 28, 28))
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        assert PRESETS[name].published


def test_ema_and_augmentation_resume_exactly(tmp_path):
    """With EMA and augmentation on, 1 epoch + resume ends where 2 uninterrupted epochs do: the averaged
    weights, the raw weights and the augmentation RNG all come back from the checkpoint."""
    from digitlab import load_dataset, make_config, train
    from digitlab.data import Dataset
    from digitlab.checkpoint import load_run
    from digitlab.train import resume_config

    ds = load_dataset("mnist")
    small = Dataset("mnist", ds.classes, ds.train_images[:1024], ds.train_labels[:1024], ds.test_images[:500],
                    ds.test_labels[:500])
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
