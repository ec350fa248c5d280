"""Figures written to PNG with matplotlib's Agg backend (no display needed).

Accuracy is shown in percent, as the CLI prints it, on an axis zoomed to the data: MNIST runs between 98% and
99.5% would otherwise sit flat along the top of a 0-100% axis. Each `*_figure` function builds the figure (which
the tests read back); each `plot_*` function builds and writes it.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

MIN_SPAN = 1.0  # percentage points: the narrowest accuracy axis, so a flat line is not magnified into noise
MARGIN = 0.1  # of the data's span, above and below it


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def percent(values: list[float]) -> list[float]:
    """Accuracies (fractions) as percentages."""
    return [100 * v for v in values]


def zoomed_limits(values: list[float]) -> tuple[float, float]:
    """Axis limits in percent that frame `values` (percentages) with a margin, never beyond 0-100%."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    low, high = min(finite), max(finite)
    if high - low < MIN_SPAN:
        middle = (low + high) / 2
        low, high = middle - MIN_SPAN / 2, middle + MIN_SPAN / 2
    pad = MARGIN * (high - low)
    return max(0.0, low - pad), min(100.0, high + pad)


def accuracy_axis(ax, values: list[float], label: str) -> None:
    """Label an axis showing percentages, zoom it to `values` and put a % on its ticks (one decimal when the
    axis spans under 5 points: 99.2%, not 99%, 99%, 99%)."""
    ax.set_ylabel(label)
    low, high = zoomed_limits(values)
    ax.set_ylim(low, high)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0 if high - low >= 5 else 1))


def epoch_axis(ax, epochs: list[float]) -> None:
    """Whole epochs get whole-number ticks (no 1.25 between epoch 1 and 2); fractional ones keep matplotlib's."""
    ax.set_xlabel("epoch")
    if all(float(e).is_integer() for e in epochs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


CURVE_SPLITS = (("train", "o", "tab:blue", "tab:green"), ("val", "^", "tab:purple", "tab:olive"),
                ("test", "s", "tab:orange", "tab:red"))  # split, marker, loss colour, accuracy colour


def curves_figure(history: list[dict], title: str = "", x: str = "step") -> Figure:
    """Train, validation (with a hold-out: metrics.csv's val_* columns) and test (where read) loss on the left axis,
    accuracy (%) on a twin right axis, over steps or epochs; the legend below the chart."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    acc = ax.twinx()
    accuracies: list[float] = []
    for split, marker, loss_colour, acc_colour in CURVE_SPLITS:
        rows = [r for r in history if r.get(f"{split}_accuracy") is not None]
        if not rows:
            continue
        xs = [r[x] for r in rows]
        name = "validation" if split == "val" else split
        ax.plot(xs, [r[f"{split}_loss"] for r in rows], f"{marker}-", color=loss_colour, label=f"{name} loss", ms=3)
        values = percent([r[f"{split}_accuracy"] for r in rows])
        acc.plot(xs, values, f"{marker}--", color=acc_colour, label=f"{name} accuracy", ms=3)
        accuracies += values
    if x == "epoch":
        epoch_axis(ax, [row[x] for row in history])
    else:
        ax.set_xlabel(x)
    ax.set_ylabel("loss")
    accuracy_axis(acc, accuracies, "accuracy")
    # below the chart, a column per split (its loss over its accuracy): inside, six entries hid the lines they name
    pairs = list(zip(ax.get_legend_handles_labels()[0], acc.get_legend_handles_labels()[0]))
    lines = [line for pair in pairs for line in pair]
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncols=max(1, len(pairs)), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig


def plot_curves(history: list[dict], path: Path, title: str = "", x: str = "step") -> Path:
    """curves_figure, written to `path`."""
    return _save(curves_figure(history, title, x), path)


def plot_grid(images: torch.Tensor, titles: list[str], path: Path, columns: int | None = None,
              title: str = "") -> Path:
    """grid_figure, written to `path`."""
    return _save(grid_figure(images, titles, columns, title), path)


CELL_INCHES = 1.6  # width of one image of a grid
TITLE_POINTS = 8  # font size of each image's title
LINE_INCHES = 0.16  # height of one line of title


def grid_columns(n: int) -> int:
    """Columns for n images that fill the rows as evenly as the grid's shape allows (36 -> 6x6, 12 -> 3x4, 7 -> one
    row of 7): the fewest empty cells in the last row, for a grid about as wide as it is high, never narrower."""
    low = max(1, math.ceil(math.sqrt(n)))
    high = max(low, min(n, max(10, math.ceil(1.5 * math.sqrt(n)))))
    return min(range(low, high + 1), key=lambda c: (-n % c, c))


def title_lines(text: str, width_inches: float = CELL_INCHES, points: float = TITLE_POINTS) -> str:
    """`text` in lines that fit the width of a grid cell (about 0.6 em a character, a gap kept), so a long title
    such as "Ankle boot -> Sneaker 98%" takes two lines instead of running into its neighbours; a mistake's title
    breaks after its arrow first, keeping each class name whole."""
    chars = max(8, int(0.8 * width_inches * 72 / (0.6 * points)))
    if len(text) <= chars:
        return text
    head, arrow, tail = text.partition(" -> ")
    parts = [head + arrow.rstrip(), tail] if arrow else [text]
    return "\n".join(textwrap.fill(part, chars, break_on_hyphens=False) for part in parts)


def grid_figure(images: torch.Tensor, titles: list[str], columns: int | None = None, title: str = "") -> Figure:
    """A grid of uint8 images ((H, W) grey, (1, H, W) or (3, H, W) colour), each titled (labels, or
    true/predicted); by default with grid_columns(n) columns, and titles wrapped to their cell."""
    n = len(titles)
    columns = columns or grid_columns(n)
    rows = max(1, (n + columns - 1) // columns)
    wrapped = [title_lines(text) for text in titles]
    lines = max((text.count("\n") + 1 for text in wrapped), default=1)
    height = rows * (CELL_INCHES + LINE_INCHES * lines)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * CELL_INCHES, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, wrapped):
        ax.imshow(displayable(image), cmap="gray", vmin=0, vmax=255)
        ax.set_title(text, fontsize=TITLE_POINTS)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def displayable(image: torch.Tensor) -> np.ndarray:
    """One uint8 image as imshow takes it: (H, W) for one channel, (H, W, C) for more."""
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    return (image.permute(1, 2, 0) if image.dim() == 3 else image).numpy()


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str = "") -> Figure:
    """Confusion matrix with counts in each cell; rows are true classes, columns predictions. The title gives the
    accuracy it amounts to, in percent."""
    matrix = torch.tensor(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix.float().log1p().numpy(), cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = int(matrix[i, j])
            color = "white" if value > matrix.max() / 3 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    correct, total = int(matrix.trace()), int(matrix.sum())
    accuracy = f"accuracy {100 * correct / max(total, 1):.2f}% ({correct:,} of {total:,})"
    ax.set_title(f"{title or 'confusion matrix'}: {accuracy}")
    return fig


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """confusion_figure, written to `path`."""
    return _save(confusion_figure(confusion, classes, title), path)


SPLIT_NAMES = {"val": "validation", "test": "test"}


def split_caption(splits: set[str], short: bool = False) -> str:
    """What accuracy a compare chart shows, for its title (or, short, its axis): validation, test, or both."""
    if len(splits) > 1:
        if short:
            return "validation (solid) / test (dashed) accuracy"
        return "validation accuracy (solid), test where a run has no hold-out (dashed)"
    return f"{SPLIT_NAMES[next(iter(splits), 'test')]} accuracy"


def compare_figure(histories: dict[str, list[dict]], datasets: dict[str, str] | None = None,
                   splits: dict[str, str] | None = None, faded: set[str] | None = None) -> Figure:
    """Accuracy (%) over epochs of several runs, keyed by their legend label: one chart per dataset (`datasets`
    maps a run to its dataset; without it, one chart), each axis zoomed to its own runs. `splits` says which
    accuracy each run shows, "val" or "test" (the default): a run is best read on its hold-out; where runs mix
    the two, test lines are dashed. Runs in `faded` (stopped before their planned end) are drawn paler."""
    split_of = {name: (splits or {}).get(name, "test") for name in histories}
    mixed = len(set(split_of.values())) > 1
    groups: dict[str, list[str]] = {}
    for name in histories:
        groups.setdefault((datasets or {}).get(name, ""), []).append(name)
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (dataset, names) in zip(axes[0], groups.items()):
        values: list[float] = []
        epochs: list[float] = []
        for name in names:
            accs = percent([r[f"{split_of[name]}_accuracy"] for r in histories[name]])
            style = "o--" if mixed and split_of[name] == "test" else "o-"
            ax.plot([r["epoch"] for r in histories[name]], accs, style, ms=3, label=name,
                    alpha=0.45 if name in (faded or set()) else 1.0)
            values += accs
            epochs += [r["epoch"] for r in histories[name]]
        accuracy_axis(ax, values, split_caption({split_of[name] for name in names}, short=True))
        epoch_axis(ax, epochs)
        ax.set_title(f"{dataset}: {len(names)} run{'s' * (len(names) != 1)}" if dataset else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{split_caption(set(split_of.values()))}: {len(histories)} run{'s' * (len(histories) != 1)}")
    fig.tight_layout()
    return fig


def plot_compare(histories: dict[str, list[dict]], path: Path, datasets: dict[str, str] | None = None,
                 splits: dict[str, str] | None = None, faded: set[str] | None = None) -> Path:
    """compare_figure, written to `path`."""
    return _save(compare_figure(histories, datasets, splits, faded), path)


def reliability_figure(panels: list[tuple[str, dict]], title: str = "") -> Figure:
    """Reliability diagrams side by side, one per (caption, calibration.assess() half): accuracy against mean
    confidence per bin over the diagonal of perfect calibration, the gap shaded, and below, how many images each
    bin holds (log scale: most sit in the top bin)."""
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for (caption, report), ax, counts in zip(panels, axes[0], axes[1]):
        bins = [b for b in report["bins"] if b["count"]]
        width = report["bins"][0]["high"] - report["bins"][0]["low"]
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ax.bar(centres, [b["accuracy"] for b in bins], width=width, color="tab:blue", edgecolor="white",
               label="accuracy")
        ax.bar(centres, [abs(b["confidence"] - b["accuracy"]) for b in bins],
               bottom=[min(b["confidence"], b["accuracy"]) for b in bins], width=width, facecolor=(1, 0, 0, 0.15),
               edgecolor="tab:red", hatch="//", lw=0.5, label="gap to mean confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{caption}\nECE {report['ece']:.2%}, NLL {report['nll']:.4f}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        counts.bar(centres, [b["count"] for b in bins], width=width, color="tab:grey")
        counts.set_yscale("log")
        counts.set_xlabel("confidence (top-class probability)")
        counts.set_ylabel("images")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reliability(panels: list[tuple[str, dict]], path: Path, title: str = "") -> Path:
    """reliability_figure, written to `path`."""
    return _save(reliability_figure(panels, title), path)
