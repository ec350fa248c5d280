"""`digitlab compare`: a table of finished runs (runs stopped early are left out with a warning, or shown marked),
the spread of each recipe over seeds, the best row picked on validation where a run has a hold-out, a chart
whose legend says what each run is, and a clear error for a folder that is not a run."""
from __future__ import annotations

import json
import shutil
import statistics
import tracemalloc
from pathlib import Path

import pytest

from digitlab import make_config, train
from digitlab.cli import main
from digitlab.compare import is_finished, progress_words, run_labels, run_summary
from digitlab.runs import read_metrics, write_config, write_metrics
from digitlab.training import TrainingInterrupted
from helpers import mnist_slice

RECIPE = {"model": "digitnet", "model_args": {"width": 4, "depth": 1}, "epochs": 2, "batch_size": 128, "lr": 1e-2,
          "threads": 1, "device": "cpu", "plot": False}
FINISHED = ("plain", "plain-seed1", "augmented", "held-out")


def stop_after_first_epoch(line: str) -> None:
    """A training log that presses Ctrl-C once the first epoch is recorded: a genuinely interrupted run."""
    if line.startswith("epoch 1/"):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def small(mnist):
    """1,024 MNIST training images and 500 test images."""
    return mnist_slice(mnist, 1024, 500)


@pytest.fixture(scope="module")
def runs(small, tmp_path_factory) -> dict[str, Path]:
    """Tiny 2-epoch runs: a plain one; the same recipe with another seed (and another eval batch size, which does
    not make it another recipe); an augmented one with EMA; one with a 256-image hold-out; and two more seeds of
    the plain recipe that stopped after epoch 1: one cut short afterwards, one interrupted by Ctrl-C."""
    root = tmp_path_factory.mktemp("compare")
    extras = {"plain": {}, "plain-seed1": {"seed": 1, "eval_batch_size": 250},
              "augmented": {"augment": "affine", "ema": 0.9}, "held-out": {"val_size": 256},
              "cut": {"seed": 2}, "interrupted": {"seed": 3}}
    for name, extra in extras.items():
        cfg = make_config({**RECIPE, "out": str(root / name), **extra})
        try:
            train(cfg, small, progress=False, log=stop_after_first_epoch if name == "interrupted" else lambda *_: None)
        except TrainingInterrupted:
            assert name == "interrupted"
    write_metrics(root / "cut", read_metrics(root / "cut")[:1])  # as if killed after its first epoch
    return {name: root / name for name in extras}


def final(run: Path, key: str = "test_accuracy") -> float:
    return read_metrics(run)[-1][key]


def compare(args: list, capsys) -> tuple[int, list[str], list[str]]:
    """`digitlab compare ARGS`: exit code, stdout lines, stderr lines."""
    code = main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


@pytest.mark.slow
def test_table_leaves_unfinished_runs_out_with_a_warning_each(runs, tmp_path, capsys):
    png = tmp_path / "all.png"
    code, out, err = compare([*runs.values(), "-o", png], capsys)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert err == [f"digitlab: warning: skipping {runs['cut']} (digitnet, seed 2): unfinished, epoch 1 of 2",
                   f"digitlab: warning: skipping {runs['interrupted']} (digitnet, seed 3): unfinished, epoch 1 of 2"]
    assert out[0].split() == ["run", "preset/model", "dataset", "seed", "epochs", "final", "test", "final", "val",
                              "best", "by", "best", "its", "test", "s/epoch"]
    table = {line.split()[0]: line.split() for line in out[1:5]}
    assert sorted(table) == sorted(FINISHED)
    for name, cells in table.items():
        assert cells[1:5] == ["-/digitnet", "mnist", str(0 if name != "plain-seed1" else 1), "2"]
        assert cells[5] == f"{final(runs[name]):.2%}"
    best = max(row["test_accuracy"] for row in read_metrics(runs["plain"]))
    assert table["plain"][6:10] == ["-", "test", f"{best:.2%}", f"{best:.2%}"]
    assert table["held-out"][6] == f"{final(runs['held-out'], 'val_accuracy'):.2%}" and table["held-out"][7] == "val"
    assert out[5].startswith("best by test: no validation split")


@pytest.mark.slow
def test_recipes_show_n_and_sd_of_finished_runs_only(runs, tmp_path, capsys):
    code, out, _ = compare([*runs.values(), "-o", tmp_path / "c.png"], capsys)
    assert code == 0
    groups = [line for line in out if line.startswith("recipe ")]
    plain = [final(runs["plain"]), final(runs["plain-seed1"])]
    assert groups[0] == (f"recipe digitnet (augment none, ema 0, val_size 0) on mnist, 2 epochs, n=2 (plain, "
                         f"plain-seed1): final test mean {statistics.mean(plain):.2%}, sd "
                         f"{100 * statistics.stdev(plain):.2f} points, range {min(plain):.2%} to {max(plain):.2%}")
    assert groups[1].endswith(f"n=1 (augmented): final test {final(runs['augmented']):.2%} (no sd from one run)")
    assert groups[2].endswith(f"n=1 (held-out): final test {final(runs['held-out']):.2%} (no sd from one run); "
                              f"final val {final(runs['held-out'], 'val_accuracy'):.2%} (no sd from one run)")
    assert len(groups) == 3 and out[-1].startswith("wrote ")


@pytest.mark.slow
def test_json_lists_the_unfinished_and_each_recipe_spread(runs, tmp_path, capsys):
    code, out, _ = compare([*runs.values(), "-o", tmp_path / "c.png", "--json"], capsys)
    assert code == 0
    report = json.loads("\n".join(out))
    assert [Path(row["run"]).name for row in report["runs"]] == list(FINISHED)
    assert report["unfinished"] == [
        {"run": str(runs[name]), "what": f"digitnet, seed {seed}", "progress": "epoch 1 of 2", "shown": False}
        for name, seed in (("cut", 2), ("interrupted", 3))]
    plain, augmented, held_out = report["recipes"]
    accs = [final(runs["plain"]), final(runs["plain-seed1"])]
    assert plain["runs"] == [str(runs["plain"]), str(runs["plain-seed1"])] and plain["n"] == 2
    assert plain["test"]["mean"] == pytest.approx(statistics.mean(accs))
    assert plain["test"]["sd"] == pytest.approx(statistics.stdev(accs)) and plain["val"] is None
    assert augmented["n"] == 1 and augmented["test"]["sd"] is None
    assert held_out["val"]["mean"] == pytest.approx(final(runs["held-out"], "val_accuracy"))


@pytest.mark.slow
def test_include_unfinished_shows_them_marked_and_in_no_recipe(runs, tmp_path, capsys):
    code, out, err = compare([*runs.values(), "-o", tmp_path / "c.png", "--include-unfinished"], capsys)
    assert code == 0 and err == []
    marked = [line.split() for line in out if "[unfinished]" in line.split()]
    assert [cells[0] for cells in marked] == ["cut", "interrupted"]
    assert all(cells[5:8] == ["1", "of", "2"] for cells in marked)
    assert "[unfinished]: stopped before its planned end; in no recipe group" in out
    groups = [line for line in out if line.startswith("recipe ")]
    assert "n=2 (plain, plain-seed1)" in groups[0] and not any("cut" in g or "interrupted" in g for g in groups)


@pytest.mark.slow
def test_only_unfinished_runs_is_one_line_error(runs, tmp_path, capsys):
    code, out, err = compare([runs["cut"], "-o", tmp_path / "c.png"], capsys)
    assert code == 1 and out == [] and len(err) == 1 and not (tmp_path / "c.png").exists()
    assert err[0] == (f"digitlab: error: no finished run to compare: {runs['cut']} (digitnet, seed 2): unfinished, "
                      "epoch 1 of 2 (--include-unfinished shows them)")


def craft_run(folder: Path, config: dict, rows: list[tuple[float, float | None, float]]) -> Path:
    """A run folder written by hand: `config` over RECIPE, and one metrics row per (epoch, val, test) accuracy."""
    folder.mkdir(parents=True)
    write_config(folder, make_config({**RECIPE, **config}))
    write_metrics(folder, [{"step": 8 * epoch, "epoch": epoch, "train_loss": 0.5, "train_accuracy": 0.9,
                            "val_loss": None if val is None else 0.4, "val_accuracy": val, "test_loss": 0.4,
                            "test_accuracy": test, "lr": 0.01, "elapsed_s": epoch} for epoch, val, test in rows])
    return folder


def test_best_goes_by_validation_not_test(tmp_path, capsys):
    run = craft_run(tmp_path / "held", {"val_size": 256}, [(1, 0.90, 0.80), (1.5, 0.95, 0.85), (2, 0.93, 0.88)])
    row, _ = run_summary(run)
    assert row["selected_on"] == "validation" and row["best_epoch"] == 1.5  # test's best is epoch 2's 88%
    assert (row["best_val_accuracy"], row["best_test_accuracy"]) == (0.95, 0.85)
    code, out, _ = compare([run, "-o", tmp_path / "c.png"], capsys)
    assert code == 0
    assert out[1].split()[5:10] == ["88.00%", "93.00%", "val", "95.00%", "85.00%"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["held-out", "plain"])
def test_best_is_the_checkpoint_training_kept(runs, name):
    from digitlab.checkpoint import read_weights

    row, history = run_summary(runs[name])
    assert row["selected_on"] == ("validation" if name == "held-out" else "test") and len(history) == 2
    assert row["best_step"] == read_weights(runs[name] / "best.safetensors")[1]["step"]


def test_without_hold_out_best_is_on_test_and_said(tmp_path, capsys):
    run = craft_run(tmp_path / "plain", {}, [(1, None, 0.90), (2, None, 0.85)])
    code, out, _ = compare([run, "-o", tmp_path / "c.png"], capsys)
    assert code == 0
    assert out[1].split()[5:10] == ["85.00%", "-", "test", "90.00%", "90.00%"]
    assert out[2].startswith("best by test: no validation split")


def test_fixed_schedule_best_is_the_last_row(tmp_path, capsys):
    run = craft_run(tmp_path / "fixed", {"fixed_schedule": True}, [(1, None, 0.90), (2, None, 0.85)])
    row, _ = run_summary(run)
    assert row["selected_on"] == "nothing" and row["best_epoch"] == 2 and row["best_test_accuracy"] == 0.85
    code, out, _ = compare([run, "-o", tmp_path / "c.png"], capsys)
    assert code == 0
    assert out[1].split()[7:10] == ["last", "-", "85.00%"] and out[2].startswith("best by last")


@pytest.mark.quick
@pytest.mark.parametrize("config, last, finished", [
    ({}, {"epoch": 2, "step": 16}, True),
    ({}, {"epoch": 1, "step": 8}, False),
    ({"epochs": 5, "max_steps": 12}, {"epoch": 1.5, "step": 12}, True),
    ({"epochs": 5, "max_steps": 12}, {"epoch": 1, "step": 8}, False),
    ({"epochs": 5, "target_accuracy": 0.9, "val_size": 256}, {"epoch": 2, "step": 16, "val_accuracy": 0.91}, True),
    ({"epochs": 5, "target_accuracy": 0.9, "val_size": 256}, {"epoch": 2, "step": 16, "val_accuracy": 0.85}, False),
    ({"epochs": 5, "target_accuracy": 0.9}, {"epoch": 2, "step": 16, "test_accuracy": 0.92}, True),
])
def test_finished_means_its_planned_end(config, last, finished):
    cfg = make_config({**RECIPE, **config})
    assert is_finished(cfg, {"val_accuracy": None, "test_accuracy": 0.95, **last}) == finished


@pytest.mark.quick
def test_progress_says_how_far_a_run_got():
    assert progress_words(make_config({**RECIPE, "epochs": 5, "max_steps": 12}), {"epoch": 1, "step": 8}) == \
        "epoch 1 of 5, step 8 of 12"


@pytest.mark.slow
def test_a_run_stopped_by_its_target_is_finished(small, tmp_path, capsys):
    cfg = make_config({**RECIPE, "epochs": 3, "target_accuracy": 0.05, "out": str(tmp_path / "target")})
    assert train(cfg, small, progress=False, log=lambda *_: None).stopped_early
    code, out, err = compare([tmp_path / "target", "-o", tmp_path / "c.png"], capsys)
    assert code == 0 and err == [] and out[1].split()[4] == "1"


def summary_row(run: str, preset: str | None = "default", seed: int = 0, dataset: str = "mnist",
                finished: bool = True, **recipe) -> dict:
    """A compare row with just what the legend reads."""
    return {"run": run, "preset": preset, "model": "digitnet", "seed": seed, "dataset": dataset,
            "finished": finished, "recipe": json.dumps({"preset": preset, "dataset": dataset, **recipe})}


@pytest.mark.quick
def test_legend_names_recipe_and_seed_not_the_folder():
    rows = [summary_row("runs/20261207-031500-default", seed=1), summary_row("runs/20261207-041500-default", seed=2)]
    assert run_labels(rows) == ["default, seed 1", "default, seed 2"]


@pytest.mark.quick
def test_legend_adds_dataset_when_mixed_and_marks_unfinished():
    rows = [summary_row("a", seed=1), summary_row("b", seed=1, dataset="fashion-mnist", finished=False)]
    assert run_labels(rows) == ["default, seed 1, mnist", "default, seed 1, fashion-mnist, unfinished"]


@pytest.mark.quick
def test_legend_tells_apart_recipes_of_one_name_and_reruns():
    rows = [summary_row("x/a", preset=None, augment="none"), summary_row("x/b", preset=None, augment="affine"),
            summary_row("y/b", preset=None, augment="affine")]
    assert run_labels(rows) == ["digitnet (augment none), seed 0", "digitnet (augment affine), seed 0 [x/b]",
                                "digitnet (augment affine), seed 0 [y/b]"]


@pytest.mark.slow
def test_chart_legend_and_axis_say_what_is_drawn(runs, tmp_path, monkeypatch, capsys):
    from digitlab import plots

    figures = []
    original = plots.compare_figure
    monkeypatch.setattr(plots, "compare_figure", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    chosen = [runs[name] for name in ("plain", "held-out")]
    assert main(["compare", *map(str, chosen), "-o", str(tmp_path / "c.png")]) == 0
    (ax,) = figures[0].axes
    plain, held_out = ax.get_lines()
    assert [line.get_label() for line in (plain, held_out)] == ["digitnet (val_size 0), seed 0",
                                                                "digitnet (val_size 256), seed 0"]
    assert plain.get_linestyle() == "--" and held_out.get_linestyle() == "-"
    assert ax.get_ylabel() == "validation (solid) / test (dashed) accuracy"
    assert list(held_out.get_ydata()) == pytest.approx([100 * r["val_accuracy"] for r in read_metrics(chosen[1])])
    assert "validation accuracy (solid), test where a run has no hold-out (dashed): 2 runs" in capsys.readouterr().out


@pytest.mark.quick
def test_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no config.json" in err and not (tmp_path / "c.png").exists()


def long_run(folder: Path, rows: int, best_at: int) -> Path:
    """A run folder whose metrics.csv has `rows` evaluations (a long run evaluated often: about 10 MB per
    100,000 rows), the best test accuracy at row `best_at`."""
    folder.mkdir(parents=True)
    write_config(folder, make_config({**RECIPE, "epochs": rows // 1000}))
    lines = ["step,epoch,train_loss,train_accuracy,val_loss,val_accuracy,test_loss,test_accuracy,lr,elapsed_s,"
             "images_per_s,data_fraction"]
    for i in range(1, rows + 1):
        test = 0.99 if i == best_at else 0.5 + 0.4 * i / rows
        lines.append(f"{8 * i},{i / 1000},0.5,0.9,,,0.4,{test},0.01,{i / 10},1000.0,0.1")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def peak_python_bytes(call):
    """call()'s result and the peak bytes Python allocated while it ran."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_compare_and_plot_stream_a_long_metrics_file(tmp_path, capsys):
    """50,000 evaluations: compare's row (last and best exact) and plot's chart come from a stream of the file,
    the chart drawing at most 2,000 points (the first and the last among them), in a few MB of Python memory."""
    import digitlab.plots  # noqa: F401 - matplotlib's own import is not what is measured

    run = long_run(tmp_path / "long", 50_000, best_at=31_415)
    (row, history), peak = peak_python_bytes(lambda: run_summary(run))
    assert (row["steps"], row["best_step"], row["best_test_accuracy"]) == (400_000, 8 * 31_415, 0.99)
    assert len(history) <= 2000 and history[0]["step"] == 8 and history[-1]["step"] == 400_000
    assert peak < 8 << 20, f"compare: {peak / 2**20:.0f} MiB for a 50,000-row metrics.csv"
    code, peak = peak_python_bytes(lambda: main(["plot", str(run), "-o", str(tmp_path / "curves.png")]))
    assert code == 0 and peak < 32 << 20, f"plot: {peak / 2**20:.0f} MiB for a 50,000-row metrics.csv"
    out = capsys.readouterr().out
    assert "(50,000 evaluations, " in out and " of them drawn)" in out, out
