"""Figures written to PNG with matplotlib's Agg backend (no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import torch  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(history: list[dict], path: Path, title: str = "", x: str = "step") -> Path:
    """Train and test loss on the left axis, accuracy on a twin right axis, over steps or epochs."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [row[x] for row in history]
    ax.plot(xs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="train loss", ms=3)
    ax.plot(xs, [r["test_loss"] for r in history], "s-", color="tab:orange", label="test loss", ms=3)
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    acc = ax.twinx()
    acc.plot(xs, [r["train_accuracy"] for r in history], "o--", color="tab:green", label="train acc", ms=3)
    acc.plot(xs, [r["test_accuracy"] for r in history], "s--", color="tab:red", label="test acc", ms=3)
    acc.set_ylabel("accuracy")
    lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def plot_grid(images: torch.Tensor, titles: list[str], path: Path, columns: int = 5,
              title: str = "") -> Path:
    """A grid of 28x28 uint8 images, each titled (labels, or true/predicted)."""
    n = len(titles)
    rows = max(1, (n + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles):
        ax.imshow(image.reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Confusion matrix with counts in each cell; rows are true classes, columns predictions."""
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
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def plot_compare(histories: dict[str, list[dict]], path: Path) -> Path:
    """Test accuracy over epochs for several runs on one chart."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, history in histories.items():
        ax.plot([r["epoch"] for r in history], [r["test_accuracy"] for r in history], "o-", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
