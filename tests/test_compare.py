"""`digitlab compare`: one table and one chart across runs, and a clear error for a folder that is not a run."""
from __future__ import annotations

import json

import pytest

from digitlab import load_dataset, make_config, train
from digitlab.data import Dataset
from digitlab.cli import main


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list:
    """Two tiny runs on 1,024 MNIST images: a plain one and an augmented one with EMA, 2 epochs each."""
    ds = load_dataset("mnist")
    small = Dataset("mnist", ds.classes, ds.train_images[:1024], ds.train_labels[:1024], ds.test_images[:500],
                    ds.test_labels[:500])
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for name, extra in (("plain", {}), ("augmented", {"augment": "affine", "ema": 0.9})):
        cfg = make_config({"model": "digitnet", "model_args": {"width": 4, "depth": 1}, "epochs": 2,
                           "batch_size": 128, "lr": 1e-2, "threads": 1, "device": "cpu",
                           "out": str(root / name), **extra})
        runs.append(train(cfg, small, progress=False, log=lambda *_: None))
    return runs


def test_table_and_chart(two_runs, tmp_path, capsys):
    png = tmp_path / "both.png"
    assert main(["compare", *(str(r.run_dir) for r in two_runs), "-o", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "preset/model", "dataset", "epochs", "final", "best", "s/epoch"]
    for run, line in zip(two_runs, lines[1:3]):
        cells = line.split()
        assert cells[0] == run.run_dir.name and cells[1] == "-/digitnet" and cells[2] == "mnist"
        assert cells[3] == "2" and cells[4] == f"{run.final['test_accuracy']:.2%}"
        assert cells[5] == f"{run.best_accuracy:.2%}"
        assert float(cells[6]) == pytest.approx(run.final["elapsed_s"] / 2, abs=0.06)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json(two_runs, tmp_path, capsys):
    assert main(["compare", *(str(r.run_dir) for r in two_runs), "-o", str(tmp_path / "c.png"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert [row["final_accuracy"] for row in rows] == [r.final["test_accuracy"] for r in two_runs]
    assert all(row["epochs"] == 2 and row["model"] == "digitnet" for row in rows)


def test_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no config.json" in err and not (tmp_path / "c.png").exists()
