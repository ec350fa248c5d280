"""The `digitlab` command end to end in subprocesses, including bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import fashion_dir, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", "--model", "cnn", "--optimizer", "adam", "--lr", "2e-3", "--batch-size", "128",
                   "--max-steps", "120", "--eval-every", "60", "--threads", "2", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy:" in proc.stdout and "epoch 1/1" in proc.stdout
    return out


def test_train_writes_run_folder(run_dir):
    for name in ("config.json", "metrics.csv", "last.safetensors", "best.safetensors", "curves.png"):
        assert (run_dir / name).is_file()
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 120


def test_eval_json_reports_accuracy_and_figures(run_dir):
    proc = run_cli("eval", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accuracy"] > 0.9 and report["count"] == 10000
    assert len(report["per_class_accuracy"]) == 10 and sum(map(sum, report["confusion"])) == 10000
    assert report["misclassified"][0]["true"] != report["misclassified"][0]["predicted"]
    for key in ("confusion", "misclassified"):
        assert Image.open(report["figures"][key]).size[0] > 300


def test_eval_table(run_dir):
    proc = run_cli("eval", str(run_dir), "--checkpoint", "last")
    assert proc.returncode == 0 and "test accuracy" in proc.stdout and proc.stdout.count("%") >= 11


def final_test_accuracy(run: Path) -> float:
    with open(run / "metrics.csv") as f:
        return float(list(csv.DictReader(f))[-1]["test_accuracy"])


def test_eval_reproduces_the_runs_own_figure(run_dir):
    report = json.loads(run_cli("eval", str(run_dir), "--checkpoint", "last", "--json").stdout)
    assert report["tta"] is False and report["accuracy"] == pytest.approx(final_test_accuracy(run_dir), abs=1e-4)


def test_train_says_a_fixed_schedule_selected_nothing(tmp_path):
    proc = run_cli("train", "--model", "digitnet", "--model-args", "width=4,depth=1", "--max-steps", "30",
                   "--fixed-schedule", "--threads", "1", "--no-progress", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "the run's model is last.safetensors, trained on 60,000 images (no best.safetensors)" in proc.stdout
    assert "no best checkpoint: a fixed schedule selects nothing" in proc.stdout and "selected on" not in proc.stdout
    run = tmp_path / "run"
    assert not (run / "best.safetensors").exists() and (run / "last.safetensors").is_file()
    for command in (["eval", str(run), "--json"], ["predict", str(run), "--test-index", "0", "--json"]):
        proc = run_cli(*command)  # the default checkpoint, `best`, is the run's model: last.safetensors
        assert proc.returncode == 0, proc.stderr


def test_eval_uses_test_time_augmentation_when_the_run_did(tmp_path):
    run = tmp_path / "tta-run"
    proc = run_cli("train", "--model", "digitnet", "--model-args", "width=4,depth=1", "--lr", "1e-2",
                   "--max-steps", "60", "--tta", "--threads", "1", "--no-progress", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    with_tta = json.loads(run_cli("eval", str(run), "--checkpoint", "last", "--json").stdout)
    without = json.loads(run_cli("eval", str(run), "--checkpoint", "last", "--json", "--no-tta").stdout)
    assert with_tta["tta"] is True and without["tta"] is False
    assert with_tta["accuracy"] == pytest.approx(final_test_accuracy(run), abs=1e-4)
    assert with_tta["loss"] != without["loss"]  # the shifted copies really were scored
    assert "test-time augmentation" in run_cli("eval", str(run), "--checkpoint", "last").stdout


def test_eval_adds_mirror_images_where_the_run_did(tmp_path):
    """A Fashion-MNIST run that scored itself over mirror images too (--tta-mirror) is scored so by eval."""
    run = tmp_path / "fashion-tta"
    proc = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", str(fashion_dir()), "--model", "digitnet",
                   "--model-args", "width=4,depth=1", "--lr", "1e-2", "--max-steps", "40", "--augment", "flip+shift",
                   "--tta", "--tta-mirror", "--threads", "1", "--no-progress", "--no-plot", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(run_cli("eval", str(run), "--checkpoint", "last", "--data-dir", str(fashion_dir()),
                                "--json").stdout)
    assert report["tta"] is True and report["tta_mirror"] is True
    assert report["accuracy"] == pytest.approx(final_test_accuracy(run), abs=1e-4)
    table = run_cli("eval", str(run), "--checkpoint", "last", "--data-dir", str(fashion_dir())).stdout
    assert "shifts and mirror images" in table


def test_plot_over_epochs(run_dir, tmp_path):
    out = tmp_path / "c.png"
    proc = run_cli("plot", str(run_dir), "--x", "epoch", "-o", str(out))
    assert proc.returncode == 0 and "2 evaluations" in proc.stdout and Image.open(out).size[0] > 400


def test_predict_test_index(run_dir, tmp_path):
    png = tmp_path / "digit.png"
    proc = run_cli("predict", str(run_dir), "--test-index", "0", "--save", str(png), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["true"] == 7 and out["label"] == 7 and len(out["logits"]) == 10
    assert abs(sum(out["probabilities"]) - 1) < 1e-4
    assert Image.open(png).size == (28, 28)
    text = run_cli("predict", str(run_dir), "--test-index", "0").stdout
    assert "true 7" in text and "predicted 7" in text and "@" in text  # ASCII art of the digit


def test_predict_with_the_shipped_model():
    proc = run_cli("predict", "--test-index", "3", "--json")  # no run folder: the model in the package
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["true"] == 0 and out["label"] == 0 and out["probability"] > 0.5


def test_data_show_and_info(tmp_path):
    out = tmp_path / "s.png"
    proc = run_cli("data", "show", "--dataset", "fashion-mnist", "--data-dir", str(fashion_dir()),
                   "-n", "12", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size[0] > 300
    info = json.loads(run_cli("data", "info", "--json").stdout)
    assert info["train_size"] == 60000 and info["test_counts"][1] == 1135


def test_models_and_summary():
    listing = json.loads(run_cli("models", "--json").stdout)
    assert {p["name"] for p in listing["presets"]} >= {"lstm-64", "lstm-2x128", "cnn-bn", "alexnet",
                                                       "lenet5-fashion", "mlp-bn"}
    summary = run_cli("summary", "alexnet").stdout
    assert "(1, 256, 6, 6)" in summary and "56,826,570" in summary


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "resnet"], "model 'resnet' is not one of"),
    (["train", "--preset", "bogus"], "unknown preset 'bogus'"),
    (["train", "--epochs", "0"], "epochs must be positive"),
    (["train", "--lr", "fast"], "lr expects float"),
    (["train", "--resume", "/nonexistent/run"], "not a run folder"),
    (["eval", "/nonexistent/run"], "does not exist"),
    (["plot", "/nonexistent/run"], "not a run folder"),
    (["predict", "--test-index", "10000"], "--test-index must be in 0..9999"),
    (["predict", "/nonexistent.png"], "error: /nonexistent.png does not exist"),
    (["data", "info", "--dataset", "kmnist"], "unknown dataset 'kmnist'"),
    (["summary", "vgg"], "unknown model 'vgg'"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_nonzero(args, message):
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_a_run_that_reads_no_test_image_reports_validation(tmp_path):
    """--no-eval-test (what a sweep's trials run with): the summary names the validation figure and says why."""
    proc = run_cli("train", "--model", "mlp", "--max-steps", "30", "--val-size", "500", "--no-eval-test",
                   "--threads", "1", "--no-progress", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "validation accuracy (the test set was not read): " in proc.stdout and "Traceback" not in proc.stderr
    assert "best checkpoint, selected on validation accuracy" in proc.stdout and "its test" not in proc.stdout
