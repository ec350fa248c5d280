"""Training on real MNIST: real accuracy, checkpoints that round-trip, resume equivalence."""
from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from digitlab import load_dataset, load_run, make_config, train
from digitlab.checkpoint import load_training_checkpoint, read_state
from digitlab.data import Dataset
from digitlab.device import cpu_has_native_bf16, training_autocast
from digitlab.evaluation import evaluate
from digitlab.resume import resume_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", progress=False)


@pytest.fixture(scope="module")
def small(mnist) -> Dataset:
    """6,000 training images keep the resume tests to seconds; the test set stays whole."""
    return replace(mnist, train_images=mnist.train_images[:6000], train_labels=mnist.train_labels[:6000])


@pytest.fixture(scope="module")
def cnn_run(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn")
    cfg = make_config(model="cnn", optimizer="adam", lr=1e-3, batch_size=64, epochs=1, normalization="unit",
                      out=str(out), seed=0)
    return train(cfg, dataset=mnist, progress=False, log=lambda *_: None)


def test_cnn_one_epoch_with_adam_reaches_97_percent(cnn_run):
    assert cnn_run.final["test_accuracy"] >= 0.97
    assert cnn_run.final["step"] == 938  # ceil(60000 / 64): the last partial batch is kept
    assert 0 < cnn_run.final["data_fraction"] < 0.5


def test_run_folder_holds_config_metrics_checkpoints_curves(cnn_run):
    run = cnn_run.run_dir
    for name in ("config.json", "metrics.csv", "last.safetensors", "last.state.pt", "best.safetensors",
                 "curves.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["test_accuracy"]) == pytest.approx(cnn_run.final["test_accuracy"])
    assert set(rows[0]) >= {"step", "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
                            "elapsed_s"}
    assert not list(run.glob("*.tmp"))


def test_checkpoint_round_trip_gives_identical_logits(cnn_run, mnist):
    loaded = load_run(cnn_run.run_dir, "last")
    weights, meta, state = load_training_checkpoint(cnn_run.run_dir)
    fresh = load_run(cnn_run.run_dir, "best")
    x = mnist.test_images[:256].float().div(255).unsqueeze(1)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), fresh.model(x))  # one epoch: best is last
    metrics = evaluate(loaded.model, mnist.test_images, mnist.test_labels, loaded.normalization)
    assert metrics["accuracy"] == pytest.approx(cnn_run.final["test_accuracy"], abs=1e-6)
    assert meta["step"] == state["step"] == 938 and loaded.normalization == "unit"


def test_state_file_loads_with_weights_only(cnn_run):
    state = read_state(cnn_run.run_dir / "last.state.pt")
    assert torch.load(cnn_run.run_dir / "last.state.pt", weights_only=True)["epoch"] == 1
    assert "optimizer" in state and "rng" in state


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "images_per_s", "data_fraction")} for r in rows]


def test_resume_equals_uninterrupted(small, tmp_path):
    base = dict(model="cnn", optimizer="sgd", lr=0.05, momentum=0.9, batch_size=100, epochs=2, seed=7,
                normalization="unit", threads=1)  # constant lr, as the faithful recipes
    straight = train(make_config(base, out=str(tmp_path / "straight")), dataset=small, progress=False,
                     log=lambda *_: None)
    first = train(make_config(base, epochs=1, out=str(tmp_path / "split")), dataset=small, progress=False,
                  log=lambda *_: None)
    assert first.final["step"] == 60
    resumed = train(resume_config(tmp_path / "split", epochs=2), dataset=small, resume=True, progress=False,
                    log=lambda *_: None)
    assert strip_timing(resumed.history) == strip_timing(straight.history)
    a = load_run(tmp_path / "straight", "last").model.state_dict()
    b = load_run(tmp_path / "split", "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_every_adds_rows_and_target_accuracy_stops_early(small, tmp_path):
    cfg = make_config(model="mlp", optimizer="adam", lr=1e-3, batch_size=100, epochs=3, eval_every=20,
                      target_accuracy=0.85, out=str(tmp_path / "run"))
    result = train(cfg, dataset=small, progress=False, log=lambda *_: None)
    assert result.stopped_early and result.final["test_accuracy"] >= 0.85
    assert result.final["step"] < 180 and result.final["step"] % 20 == 0
    assert [r["step"] for r in result.history] == list(range(20, result.final["step"] + 1, 20))


def autocast_output_dtype(autocast: torch.autocast) -> torch.dtype:
    conv = torch.nn.Conv2d(1, 4, 3)
    with autocast:
        return conv(torch.randn(2, 1, 28, 28)).dtype


def test_cpu_autocast_follows_cpu_amp_not_the_cuda_flag():
    cpu = torch.device("cpu")
    assert autocast_output_dtype(training_autocast(cpu, cuda_amp=True, cpu_amp=False)) == torch.float32
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32  # emulated bf16 would be slower
    assert autocast_output_dtype(training_autocast(cpu, cuda_amp=False, cpu_amp=True)) == expected


def test_cpu_amp_run_learns_as_well_as_fp32(small, tmp_path):
    base = dict(model="digitnet", model_args={"width": 8, "depth": 1}, optimizer="adamw", lr=1e-2,
                schedule="onecycle", batch_size=100, epochs=1, seed=3, threads=1)
    accuracy = {amp: train(make_config(base, cpu_amp=amp, out=str(tmp_path / str(amp))), dataset=small,
                           progress=False, log=lambda *_: None).final["test_accuracy"] for amp in (False, True)}
    assert accuracy[False] > 0.93
    assert abs(accuracy[True] - accuracy[False]) < 0.01
    saved = load_run(tmp_path / "True", "last").model.state_dict()
    assert all(v.dtype != torch.bfloat16 for v in saved.values())  # weights stay fp32 under autocast
