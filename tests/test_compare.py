"""`digitlab compare`: one table and one chart across runs, and a clear error for a folder that is not a run."""
from __future__ import annotations

import json

import pytest

from digitlab import load_dataset, make_config, train
from digitlab.data import Dataset
from digitlab.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list:
    """Three tiny runs on 1,024 MNIST images, 2 epochs each: a plain one, the same recipe with another seed
    (and a different thread count, which does not make it another recipe), and an augmented one with EMA."""
    ds = load_dataset("mnist")
    small = Dataset("mnist", ds.classes, ds.train_images[:1024], ds.train_labels[:1024], ds.test_images[:500],
                    ds.test_labels[:500])
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for name, extra in (("plain", {}), ("plain-seed1", {"seed": 1, "threads": 2}),
                        ("augmented", {"augment": "affine", "ema": 0.9})):
        cfg = make_config({"model": "digitnet", "model_args": {"width": 4, "depth": 1}, "epochs": 2,
                           "batch_size": 128, "lr": 1e-2, "threads": 1, "device": "cpu",
                           "out": str(root / name), **extra})
        runs.append(train(cfg, small, progress=False, log=lambda *_: None))
    return runs


@pytest.mark.slow
def test_table_and_chart(runs, tmp_path, capsys):
    png = tmp_path / "both.png"
    assert main(["compare", *(str(r.run_dir) for r in runs), "-o", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "preset/model", "dataset", "epochs", "final", "best", "s/epoch"]
    for run, line in zip(runs, lines[1:4]):
        cells = line.split()
        assert cells[0] == run.run_dir.name and cells[1] == "-/digitnet" and cells[2] == "mnist"
        assert cells[3] == "2" and cells[4] == f"{run.final['test_accuracy']:.2%}"
        assert cells[5] == f"{run.best_accuracy:.2%}"
        assert float(cells[6]) == pytest.approx(run.final["elapsed_s"] / 2, abs=0.06)
    plain = [r.final["test_accuracy"] for r in runs[:2]]
    assert lines[4] == (f"2 runs of one recipe (plain, plain-seed1): final accuracy mean {sum(plain) / 2:.2%},"
                        f" sd {100 * abs(plain[0] - plain[1]) / 2 ** 0.5:.2f} points,"
                        f" range {min(plain):.2%} to {max(plain):.2%}")
    assert lines[5].startswith("wrote ") and len(lines) == 6  # the augmented run is a recipe of its own
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_json(runs, tmp_path, capsys):
    assert main(["compare", *(str(r.run_dir) for r in runs), "-o", str(tmp_path / "c.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["runs"]
    assert [group["runs"] for group in report["recipes"]] == [[str(r.run_dir) for r in runs[:2]]]
    mean = report["recipes"][0]["mean_accuracy"]
    assert mean == pytest.approx(sum(r.final["test_accuracy"] for r in runs[:2]) / 2)
    assert [row["final_accuracy"] for row in rows] == [r.final["test_accuracy"] for r in runs]
    assert all(row["epochs"] == 2 and row["model"] == "digitnet" for row in rows)


def test_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no config.json" in err and not (tmp_path / "c.png").exists()
