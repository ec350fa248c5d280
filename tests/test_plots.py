"""The figures: accuracy in percent on an axis zoomed to the data, one compare chart per dataset, read back from
the matplotlib figures (and `digitlab compare` on real runs of two datasets)."""
from __future__ import annotations

import pytest
from PIL import Image

from digitlab import plots
from helpers import fashion_dir


def history(accuracies: list[float]) -> list[dict]:
    """metrics.csv-like rows, one per epoch, the loss falling as 0.5 / epoch."""
    rows = []
    for epoch, acc in enumerate(accuracies, start=1):
        loss = 0.5 / epoch
        rows.append({"step": 100 * epoch, "epoch": epoch, "train_loss": loss * 1.1, "test_loss": loss,
                     "train_accuracy": acc - 0.002, "test_accuracy": acc})
    return rows


MNIST_RUNS = {"cnn": history([0.981, 0.987, 0.990]), "digitnet": history([0.989, 0.993, 0.995])}
FASHION_RUNS = {"lenet5": history([0.11, 0.62, 0.81]), "digitnet-f": history([0.86, 0.90, 0.91])}


def ydata(ax) -> list[float]:
    return [float(y) for line in ax.get_lines() for y in line.get_ydata()]


def test_compare_has_one_chart_per_dataset_titled_and_in_percent():
    runs = {**MNIST_RUNS, **FASHION_RUNS}
    datasets = {**dict.fromkeys(MNIST_RUNS, "mnist"), **dict.fromkeys(FASHION_RUNS, "fashion-mnist")}
    fig = plots.compare_figure(runs, datasets)
    assert len(fig.axes) == 2 and fig.get_suptitle()
    mnist, fashion = fig.axes
    assert mnist.get_title().startswith("mnist") and fashion.get_title().startswith("fashion-mnist")
    assert sorted(line.get_label() for line in mnist.get_lines()) == ["cnn", "digitnet"]
    assert max(ydata(mnist)) == pytest.approx(99.5) and min(ydata(fashion)) == pytest.approx(11.0)
    assert mnist.yaxis.get_major_formatter()(99.2, 0) == "99.2%"  # whole points would read 99%, 99%, 99%
    assert fashion.yaxis.get_major_formatter()(40.0, 0) == "40%"


def test_compare_axis_zooms_to_the_data():
    mnist = plots.compare_figure(MNIST_RUNS, dict.fromkeys(MNIST_RUNS, "mnist")).axes[0]
    low, high = mnist.get_ylim()
    assert 97.5 < low < 98.1 and 99.5 < high <= 100  # 98.1 .. 99.5 fills the chart, not a sliver at its top
    fashion = plots.compare_figure(FASHION_RUNS, dict.fromkeys(FASHION_RUNS, "fashion-mnist")).axes[0]
    assert 0 <= fashion.get_ylim()[0] < 11 and 91 < fashion.get_ylim()[1] <= 100


@pytest.mark.quick
def test_a_flat_line_gets_a_readable_axis():
    low, high = plots.zoomed_limits([99.5, 99.5])
    assert low < 99.5 < high and high - low >= plots.MIN_SPAN
    assert plots.zoomed_limits([99.9, 100.0])[1] == 100.0


@pytest.mark.quick
def test_curves_show_accuracy_in_percent_zoomed():
    fig = plots.curves_figure(MNIST_RUNS["digitnet"], title="run", x="epoch")
    loss, acc = fig.axes
    assert acc.yaxis.get_major_formatter()(99.2, 0) == "99.2%" and max(ydata(acc)) == pytest.approx(99.5)
    assert 97 < acc.get_ylim()[0] < 98.7 and acc.get_ylim()[1] <= 100
    assert max(ydata(loss)) == pytest.approx(0.55)  # the loss axis keeps its own scale


@pytest.mark.quick
def test_confusion_title_gives_accuracy_in_percent():
    fig = plots.confusion_figure([[90, 10], [5, 95]], ["a", "b"], title="run (best)")
    assert fig.axes[0].get_title() == "run (best): accuracy 92.50% (185 of 200)"


@pytest.fixture(scope="module")
def two_dataset_runs(tmp_path_factory):
    """Two real, tiny runs (a few steps of an MLP), one on MNIST and one on Fashion-MNIST."""
    from digitlab import make_config, train

    out = tmp_path_factory.mktemp("runs")
    runs = []
    for dataset, data_dir in (("mnist", None), ("fashion-mnist", str(fashion_dir()))):
        cfg = make_config({"model": "mlp", "dataset": dataset, "data_dir": data_dir, "max_steps": 20, "eval_every": 10,
                           "batch_size": 64, "device": "cpu", "threads": 1, "out": str(out / dataset)})
        train(cfg, progress=False, log=lambda *_: None)
        runs.append(out / dataset)
    return runs


def test_compare_command_draws_a_chart_per_dataset(two_dataset_runs, tmp_path, monkeypatch):
    from digitlab.cli import main

    figures = []
    original = plots.compare_figure
    monkeypatch.setattr(plots, "compare_figure", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    png = tmp_path / "compare.png"
    assert main(["compare", *map(str, two_dataset_runs), "-o", str(png)]) == 0
    (fig,) = figures
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["mnist", "fashion-mnist"]
    assert all(0 <= y <= 100 for ax in fig.axes for y in ydata(ax)) and max(ydata(fig.axes[0])) > 50
    width, height = Image.open(png).size
    assert width > 1.5 * height  # two charts side by side


FASHION_MISTAKES = ["Ankle boot -> Sneaker 98%", "T-shirt/top -> Shirt 97%", "Trouser -> Ankle boot 93%",
                    "Sandal -> Sneaker 85%", "Pullover -> Coat 58%", "Shirt -> T-shirt/top 89%"] * 4
FASHION_MISTAKES.append("Bag -> Coat 78%")


def title_boxes(fig) -> list[list]:
    """The drawn title of each image of a grid, as window extents, row by row."""
    import matplotlib.transforms as mtransforms

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    rows: dict[float, list] = {}
    for ax in fig.axes:
        if ax.get_title():
            box = ax.title.get_window_extent(renderer)
            rows.setdefault(round(ax.get_position().y0, 3), []).append(box)
    assert all(isinstance(b, mtransforms.Bbox) for row in rows.values() for b in row)
    return [sorted(row, key=lambda b: b.x0) for _, row in sorted(rows.items(), reverse=True)]


@pytest.mark.quick
def test_mistake_titles_with_long_class_names_do_not_overlap():
    import torch

    images = torch.zeros(len(FASHION_MISTAKES), 28, 28, dtype=torch.uint8)
    fig = plots.grid_figure(images, FASHION_MISTAKES, title="most confident mistakes (true -> predicted)")
    rows = title_boxes(fig)
    assert len(rows) == 5 and [len(row) for row in rows] == [5] * 5
    for row in rows:
        for left, right in zip(row, row[1:]):
            assert left.x1 < right.x0, (left, right)  # a gap between neighbouring titles
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "Ankle boot ->\nSneaker 98%" and titles[2] == "Trouser ->\nAnkle boot 93%"  # names whole


@pytest.mark.quick
@pytest.mark.parametrize("n, shape", [(36, (6, 6)), (25, (5, 5)), (12, (3, 4)), (7, (1, 7)), (100, (10, 10)),
                                      (1, (1, 1)), (11, (3, 4)), (13, (2, 7))])
def test_a_grid_fills_its_rows_evenly(n, shape):
    """`digitlab data show -n 36` is 6x6, not 8 rows of 5 with one image alone on the last."""
    rows, columns = shape
    assert plots.grid_columns(n) == columns
    import torch

    fig = plots.grid_figure(torch.zeros(n, 28, 28, dtype=torch.uint8), [str(i % 10) for i in range(n)])
    assert len(fig.axes) == rows * columns
    empty = rows * columns - n
    assert empty < columns and empty <= max(1, columns // 3)  # never a lone image on the last row


def test_data_show_36_is_six_by_six(tmp_path, capsys):
    from digitlab.cli import main

    out = tmp_path / "s.png"
    figures = []
    original = plots.grid_figure

    def spy(*args, **kwargs):
        figures.append(original(*args, **kwargs))
        return figures[-1]

    import unittest.mock

    with unittest.mock.patch.object(plots, "grid_figure", spy):
        assert main(["data", "show", "-n", "36", "-o", str(out)]) == 0
    assert len(figures[0].axes) == 36 and len({round(ax.get_position().x0, 3) for ax in figures[0].axes}) == 6
    width, height = Image.open(out).size
    assert 0.7 < width / height < 1.3  # square, as 6x6 is
    assert f"wrote {out}" in capsys.readouterr().out


def with_validation(rows: list[dict]) -> list[dict]:
    """`rows` as a run with a hold-out logs them: val_loss and val_accuracy beside train and test."""
    return [{**r, "val_loss": r["test_loss"] * 0.9, "val_accuracy": r["test_accuracy"] - 0.001} for r in rows]


@pytest.mark.quick
def test_curves_draw_validation_beside_train_and_test_with_the_legend_below():
    fig = plots.curves_figure(with_validation(MNIST_RUNS["digitnet"]), title="run", x="epoch")
    loss, acc = fig.axes
    labels = [text.get_text() for text in loss.get_legend().get_texts()]
    assert labels == ["train loss", "train accuracy", "validation loss", "validation accuracy", "test loss",
                      "test accuracy"]
    assert [line.get_label() for line in acc.get_lines()] == ["train accuracy", "validation accuracy",
                                                              "test accuracy"]
    assert min(ydata(acc)) == pytest.approx(98.7)  # 0.989 - 0.002: train; validation is 98.8
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, chart = loss.get_legend().get_window_extent(renderer), loss.get_window_extent(renderer)
    assert legend.y1 < chart.y0  # under the chart: six entries inside it hid the lines they name


def test_plot_command_draws_validation_from_metrics_csv(tmp_path, monkeypatch):
    from digitlab.cli import main
    from digitlab.runs import METRIC_COLUMNS

    run = tmp_path / "run"
    run.mkdir()
    rows = with_validation(MNIST_RUNS["cnn"])
    lines = [",".join(METRIC_COLUMNS)] + [",".join(str(r.get(c, 0.0)) for c in METRIC_COLUMNS) for r in rows]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    figures = []
    original = plots.curves_figure
    monkeypatch.setattr(plots, "curves_figure", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    assert main(["plot", str(run)]) == 0
    labels = [line.get_label() for ax in figures[0].axes for line in ax.get_lines()]
    assert "validation loss" in labels and "validation accuracy" in labels
    assert (run / "curves.png").is_file()
