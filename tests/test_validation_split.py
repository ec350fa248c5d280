"""The validation hold-out (digitlab.split): sizes, disjointness, class proportions, determinism, errors;
and that training selects and stops on it while the test set is only reported."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import digitlab.training as train_module
from digitlab import load_dataset, make_config, train
from digitlab.config import TrainConfig
from digitlab.errors import ConfigError
from digitlab.presets import PRESETS, preset_config
from digitlab.runs import read_metrics
from digitlab.split import SPLIT_SEED, class_quotas, stratified_split


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", progress=False)


def test_sizes_disjointness_and_coverage(mnist):
    labels = mnist.train_labels
    train_idx, val_idx = stratified_split(labels, 5000)
    assert val_idx.numel() == 5000 and train_idx.numel() == 55_000
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(60_000))
    assert train_idx.dtype == val_idx.dtype == torch.int64


def test_each_class_keeps_its_share(mnist):
    labels = mnist.train_labels
    _, val_idx = stratified_split(labels, 5000)
    expected = torch.bincount(labels, minlength=10).double() * 5000 / labels.numel()
    got = torch.bincount(labels[val_idx], minlength=10).double()
    assert (got - expected).abs().max() < 1  # largest remainder: each class within one image of its share


@pytest.mark.quick
def test_uneven_classes_are_proportional_and_every_class_is_present():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    _, val_idx = stratified_split(labels, 100)
    assert torch.bincount(labels[val_idx]).tolist() == [90, 9, 1]
    rare = torch.tensor([0] * 995 + [1] * 5)
    _, val_idx = stratified_split(rare, 10)
    assert torch.bincount(rare[val_idx]).tolist() == [9, 1]
    assert class_quotas(torch.tensor([995, 5]), 2).tolist() == [1, 1]  # a rare class is never left out


def test_the_split_depends_on_the_split_seed_only(mnist):
    first = stratified_split(mnist.train_labels, 1000)
    again = stratified_split(mnist.train_labels.clone(), 1000, SPLIT_SEED)
    other = stratified_split(mnist.train_labels, 1000, seed=SPLIT_SEED + 1)
    assert torch.equal(first[1], again[1]) and torch.equal(first[0], again[0])
    assert not torch.equal(first[1], other[1])


@pytest.mark.quick
@pytest.mark.parametrize("n, message", [(100, "smaller than the training set"), (150, "smaller than the training set"),
                                        (9, "at least the number of classes")])
def test_sizes_that_cannot_work_are_a_clear_error(n, message):
    labels = torch.arange(100) % 10
    with pytest.raises(ConfigError, match=message):
        stratified_split(labels, n)
    assert stratified_split(labels, 10)[1].numel() == 10 and stratified_split(labels, 99)[0].numel() == 1


@pytest.mark.quick
def test_val_size_is_a_non_negative_config_field():
    assert TrainConfig().val_size == 0
    assert json.loads(make_config(val_size=5000).to_json())["val_size"] == 5000
    with pytest.raises(ConfigError, match="val_size"):
        make_config(val_size=-1)


@pytest.mark.quick
def test_own_presets_select_on_5000_held_out_or_nothing_and_faithful_ones_hold_out_none():
    assert make_config(preset_config("default")).val_size == 5000
    for name in ("best", "best-fashion"):  # tuned on the hold-out, then trained on all: nothing left to select
        cfg = make_config(preset_config(name))
        assert cfg.val_size == 0 and cfg.fixed_schedule and not cfg.target_accuracy, name
    for name, preset in PRESETS.items():
        if not preset.own_recipe:
            assert make_config(preset_config(name)).val_size == 0, name


@pytest.fixture(scope="module")
def small(mnist):
    return replace(mnist, train_images=mnist.train_images[:1200], train_labels=mnist.train_labels[:1200],
                   test_images=mnist.test_images[:500], test_labels=mnist.test_labels[:500])


QUIET = {"progress": False, "log": lambda *_: None}


@pytest.mark.slow
def test_training_selects_on_validation_and_only_reports_test(small, tmp_path):
    cfg = make_config(model="mlp", optimizer="adam", lr=1e-3, batch_size=100, epochs=3, val_size=200, threads=1,
                      out=str(tmp_path / "run"))
    result = train(cfg, dataset=small, **QUIET)
    assert result.selected_on == "validation"
    assert result.final["step"] == 30  # 1,000 training images a epoch at batch 100: the 200 are held out
    rows = read_metrics(tmp_path / "run")
    assert all(r["val_accuracy"] is not None and r["test_accuracy"] is not None for r in rows)
    assert result.best_accuracy == max(r["val_accuracy"] for r in result.history)
    best_row = max(result.history, key=lambda r: r["val_accuracy"])
    from digitlab.runs import load_run

    assert load_run(tmp_path / "run", "best").meta["metrics"]["step"] == best_row["step"]
    assert result.best_row == best_row


@pytest.mark.slow
def test_the_best_checkpoint_follows_validation_not_test(small, tmp_path, monkeypatch):
    """Test accuracy that rises while validation accuracy falls: the best checkpoint is the validation one."""
    scores = {200: iter([0.9, 0.8]), 500: iter([0.1, 0.2])}  # by images scored: 200 validation, 500 test

    def fake_eval(_model, images, *_args):
        return 0.5, next(scores[images.shape[0]])

    monkeypatch.setattr(train_module, "sharded_eval", fake_eval)
    cfg = make_config(model="mlp", batch_size=100, epochs=2, val_size=200, threads=1, out=str(tmp_path / "run"))
    result = train(cfg, dataset=small, **QUIET)
    assert [r["val_accuracy"] for r in result.history] == [0.9, 0.8]
    assert [r["test_accuracy"] for r in result.history] == [0.1, 0.2]
    from digitlab.runs import load_run

    assert load_run(tmp_path / "run", "best").meta["step"] == 10 and result.best_accuracy == 0.9


@pytest.mark.slow
def test_a_fixed_schedule_keeps_the_last_epoch_whatever_test_says(small, tmp_path, monkeypatch):
    """Trained on every image with nothing held out, a fixed schedule's `best` is its last epoch even when an
    earlier epoch scored higher on test: choosing that epoch would be a choice made on the test set."""
    scores = iter([0.9, 0.8])
    monkeypatch.setattr(train_module, "sharded_eval", lambda *_a: (0.5, next(scores)))
    lines: list[str] = []
    cfg = make_config(model="mlp", batch_size=100, epochs=2, fixed_schedule=True, threads=1,
                      out=str(tmp_path / "run"))
    result = train(cfg, dataset=small, progress=False, log=lines.append)
    from digitlab.runs import load_run

    assert result.selected_on == "nothing" and result.final["step"] == 24  # all 1,200 images, batch 100
    assert load_run(tmp_path / "run", "best").meta["step"] == 24 and result.best_accuracy == 0.8
    assert result.best_row == result.final
    assert "the run's model is last.safetensors, trained on 1,200 images (no best.safetensors)" in lines[0]
    assert not (tmp_path / "run" / "best.safetensors").exists()  # `best` above read last.safetensors
    assert not any("| best test" in line for line in lines)


@pytest.mark.slow
def test_a_fixed_schedule_resumed_where_a_best_file_was_left_removes_it(small, tmp_path):
    """A run begun by a digitlab that wrote best.safetensors under a fixed schedule, resumed now: the file would
    name older weights than the run's model, so it goes, and `best` is last.safetensors again."""
    import shutil

    from digitlab.resume import resume_config
    from digitlab.runs import load_run

    run = tmp_path / "run"
    cfg = make_config(model="mlp", batch_size=100, epochs=1, fixed_schedule=True, threads=1, out=str(run))
    train(cfg, dataset=small, progress=False, log=lambda *_: None)
    shutil.copy(run / "last.safetensors", run / "best.safetensors")  # epoch 1's weights, as that digitlab left them
    train(resume_config(run, epochs=2), dataset=small, resume=True, progress=False, log=lambda *_: None)
    assert not (run / "best.safetensors").exists()
    assert load_run(run, "best").meta["step"] == load_run(run, "last").meta["step"] == 24


@pytest.mark.quick
def test_a_fixed_schedule_has_no_target_accuracy():
    with pytest.raises(ConfigError, match="fixed_schedule selects nothing"):
        make_config(fixed_schedule=True, target_accuracy=0.99)


@pytest.mark.slow
def test_target_accuracy_stops_on_validation(small, tmp_path, monkeypatch):
    accuracy = {200: 0.95, 500: 0.10}  # validation (200 images) reaches the target at once; test never does
    monkeypatch.setattr(train_module, "sharded_eval", lambda _model, images, *_a: (0.5, accuracy[images.shape[0]]))
    cfg = make_config(model="mlp", batch_size=100, epochs=3, val_size=200, target_accuracy=0.9, threads=1,
                      out=str(tmp_path / "run"))
    result = train(cfg, dataset=small, **QUIET)
    assert result.stopped_early and len(result.history) == 1 and result.final["test_accuracy"] == 0.1


def test_models_says_which_figures_are_measured_and_how_each_preset_selects(capsys):
    from digitlab.cli import main

    assert main(["models", "--json"]) == 0
    presets = {p["name"]: p for p in json.loads(capsys.readouterr().out)["presets"]}
    assert presets["default"]["own_recipe"] and "validation split" in presets["default"]["selection"]
    assert presets["best"]["own_recipe"] and presets["best"]["measured"].startswith("99.76%")
    assert "nothing selected" in presets["best"]["selection"] and presets["best"]["reference"] is None
    assert not presets["cnn-bn"]["own_recipe"] and presets["cnn-bn"]["reference"] == "about 99.1%"
    assert "no validation split" in presets["cnn-bn"]["selection"]
    assert presets["fast"]["own_recipe"] and "nothing is selected" in presets["fast"]["selection"]
    assert presets["mlp-bn"]["reference"] is None and presets["mlp-bn"]["measured"].startswith("98.27%")
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    best = next(i for i, line in enumerate(lines) if line.strip().startswith("best "))
    cnn = next(i for i, line in enumerate(lines) if line.strip().startswith("cnn-bn "))
    assert "measured: 99.76%" in lines[best] and "fixed schedule on every training image" in lines[best + 1]
    assert "published: about 99.1%" in lines[cnn] and "no validation split" in lines[cnn + 1]
