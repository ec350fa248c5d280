"""The explain command's PNGs, built with matplotlib's Agg backend (plots.py's conventions): each `*_figure`
returns the figure (tests read it back), `save` writes it.

- attribution_figure: a row per image: the input as given, the 28x28 the model saw, and a heat map over it for
  each explained class (predicted, runner-up), probabilities in the titles. Its pixel size is fixed by the
  number of rows and columns (attribution_figure_size), so a caller can check the layout of a written PNG.
- layers_figure: one panel per layer, its channels tiled (CNN Explainer's view).
- embedding_figure: the 2-D map of penultimate-layer features, coloured by class, mistakes marked.
- randomisation_figure, deletion_figure, ink_figure: the sanity checks per method (digitlab.attribution.sanity).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from digitlab.attribution.attributions import METHOD_NAMES  # noqa: E402

DPI = 100
CELL_W, CELL_H = 2.0, 2.3  # inches per image in the attribution figure
SIGNED = {"ig", "occlusion"}  # methods whose maps have a sign: red for the class, blue against it
TILES_PER_ROW = 16  # channels per row of a layer's mosaic
MAX_CHANNELS = 64  # channels shown per layer; more are counted in the title


def save(fig: Figure, path: str | Path, tight: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path


def attribution_figure_size(rows: int, maps: int) -> tuple[int, int]:
    """(width, height) in pixels of attribution_figure for `rows` images with `maps` maps each."""
    return round((2 + maps) * CELL_W * DPI), round(rows * CELL_H * DPI)


def heat_rgba(attribution: np.ndarray, method: str) -> np.ndarray:
    """A map as an RGBA image over the digit: opacity grows with |value| (scaled to the map's largest
    magnitude), red where a pixel speaks for the class, blue against it (signed methods); yellow-red else."""
    peak = float(np.abs(attribution).max()) or 1.0
    strength = np.clip(np.abs(attribution) / peak, 0, 1)
    rgba = np.zeros((*attribution.shape, 4), np.float32)
    if method in SIGNED:
        rgba[attribution >= 0, :3] = (1.0, 0.15, 0.1)
        rgba[attribution < 0, :3] = (0.1, 0.45, 1.0)
    else:
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = 1.0, strength, 0.1 * strength
    rgba[..., 3] = strength ** 0.6  # a gamma below 1: the weaker half of the map stays visible
    return rgba


def overlay(ax, seen: np.ndarray, attribution: np.ndarray, method: str) -> None:
    """The 28x28 image, dimmed, with the map over it."""
    ax.imshow(seen, cmap="gray", vmin=0, vmax=255 * 2.5)
    ax.imshow(heat_rgba(attribution, method))


def attribution_figure(rows: list[tuple[np.ndarray | None, object, str]], method: str) -> Figure:
    """rows: (input image as given or None, Explanation, row title). Every row has the same number of maps."""
    maps = max(len(e.targets) for _, e, _ in rows)
    width, height = attribution_figure_size(len(rows), maps)
    fig, axes = plt.subplots(len(rows), 2 + maps, figsize=(width / DPI, height / DPI), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for (original, ex, title), row in zip(rows, axes):
        shown = ex.image if original is None else original
        row[0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        row[0].set_title(title, fontsize=8)
        row[1].imshow(ex.image, cmap="gray", vmin=0, vmax=255)
        row[1].set_title("the 28x28 it saw", fontsize=8)
        for i, (target, attribution) in enumerate(zip(ex.targets, ex.maps)):
            role = "predicted" if target == ex.label else ("runner-up" if len(ex.targets) > 1 else "target")
            overlay(row[2 + i], ex.image, attribution, method)
            row[2 + i].set_title(f"{role} {ex.classes[target]} ({ex.probabilities[target]:.1%})", fontsize=8)
        for ax in row[2 + len(ex.targets):]:
            ax.axis("off")
    inches = height / DPI
    fig.suptitle(f"{METHOD_NAMES[method]}: why the model says what it says", fontsize=10, y=1 - 0.12 / inches)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.7 / inches, wspace=0.08, hspace=0.3)
    return fig


def mosaic(maps: np.ndarray, per_row: int = TILES_PER_ROW) -> np.ndarray:
    """(C, H, W) -> one 2-D image, channels tiled `per_row` a row with a 1-pixel NaN gutter (drawn blank), each
    channel scaled to 0..1 over the layer's range so channels compare within a layer."""
    c, h, w = maps.shape
    finite = maps[np.isfinite(maps)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    scaled = (maps - low) / ((high - low) or 1.0)
    cols = min(c, per_row)
    rows = math.ceil(c / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    for i in range(c):
        r, k = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = scaled[i]
    return out


def layers_figure(layers: list, image: np.ndarray, title: str, classes: tuple[str, ...] | list[str] = (),
                  probabilities: np.ndarray | None = None) -> Figure:
    """The input, then one panel per layer: its channels (up to MAX_CHANNELS) tiled, brighter = larger. The last
    layer, when it has a unit per class (the logits), is the class bar: each cell named with its class and, given
    `probabilities`, the probability it amounts to."""
    tiles = [mosaic(layer.maps[:MAX_CHANNELS]) for layer in layers]
    heights = [1.6] + [max(0.35, min(4.5, 7.6 * t.shape[0] / max(t.shape[1], 1))) for t in tiles]
    bar = len(classes) > 0 and len(layers) > 0 and layers[-1].values.size == len(classes)
    fig, axes = plt.subplots(len(layers) + 1, 1, figsize=(8, sum(heights) + 0.3 * len(heights) + 0.5 * bar),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(title, fontsize=9)
    for ax, layer, tile in zip(axes[1:], layers, tiles):
        ax.imshow(tile, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        channels = layer.maps.shape[0]
        more = f", first {MAX_CHANNELS} of {channels} channels" if channels > MAX_CHANNELS else ""
        what = "hidden state after each row (rows: steps)" if layer.kind == "recurrent" else layer.type
        ax.set_title(f"{layer.name}: {what} {tuple(layer.shape)}{more}", fontsize=8, loc="left")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if bar:
        label_class_bar(axes[-1], classes, probabilities)
    fig.tight_layout()
    return fig


def label_class_bar(ax, classes: tuple[str, ...] | list[str], probabilities: np.ndarray | None) -> None:
    """Name each cell of the output layer's one-row tile with its class (and probability), and say what the
    brightness means: without them, ten coloured cells do not say which is which."""
    names = [str(name) for name in classes]
    if probabilities is not None:
        names = [f"{name}\n{float(p):.0%}" for name, p in zip(names, probabilities)]
    ax.set_title(f"{ax.get_title(loc='left')}: the class bar, a logit per class", fontsize=8, loc="left")
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel("class (its probability below; brighter = larger logit)" if probabilities is not None
                  else "class (brighter = larger logit)", fontsize=8)


def embedding_figure(points: np.ndarray, labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...],
                     title: str, annotate: int = 40) -> Figure:
    """Points coloured by true class, the class names at their centres; mistakes drawn as black-edged crosses,
    the first `annotate` of them labelled with what the model took them for."""
    fig, ax = plt.subplots(figsize=(9, 8))
    cmap = matplotlib.colormaps["tab10"]
    right = labels == predictions
    for c in range(len(classes)):
        mask = (labels == c) & right
        ax.scatter(points[mask, 0], points[mask, 1], s=5, color=cmap(c % 10), alpha=0.6, label=classes[c])
        if (labels == c).any():
            cx, cy = np.median(points[labels == c], axis=0)
            ax.text(cx, cy, classes[c], fontsize=13, weight="bold", ha="center", va="center",
                    bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7, "lw": 0})
    wrong = np.flatnonzero(~right)
    ax.scatter(points[wrong, 0], points[wrong, 1], s=40, marker="X", c=[cmap(int(labels[i]) % 10) for i in wrong],
               edgecolors="black", linewidths=0.8, label=f"misclassified ({len(wrong)})")
    for i in wrong[:annotate]:
        ax.annotate(f"{classes[int(labels[i])]}→{classes[int(predictions[i])]}", points[i], fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best", ncols=2)
    ax.set_title(title, fontsize=10)
    return fig


def randomisation_figure(results: dict[str, dict]) -> Figure:
    """Per method: the rank correlation of trained vs re-initialised maps, signed, absolute, and absolute over
    the ink only (lower is better: the map depends on what the model learned), with its spread over images."""
    methods = list(results)
    variants = [("signed", "signed maps"), ("abs", "|map|, all pixels"), ("abs_ink", "|map|, ink pixels")]
    fig, ax = plt.subplots(figsize=(1.8 * len(methods) + 2, 3.8))
    width = 0.8 / len(variants)
    for k, (key, label) in enumerate(variants):
        xs = np.arange(len(methods)) + (k - 1) * width
        means = [results[m][f"spearman_{key}"] for m in methods]
        sds = [results[m][f"spearman_{key}_sd"] for m in methods]
        means = [np.nan if v is None else v for v in means]
        sds = [0 if v is None else v for v in sds]
        ax.bar(xs, means, width, yerr=sds, capsize=2, label=label, alpha=0.85)
        for x, v in zip(xs, means):
            if np.isfinite(v):
                ax.text(x, max(v, 0) + 0.03, f"{v:.2f}", ha="center", fontsize=6)
    ax.set_xticks(np.arange(len(methods)), [METHOD_NAMES[m] for m in methods])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-0.5, 1.1)
    ax.set_ylabel("Spearman rank correlation\ntrained vs randomised weights")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("model randomisation test (Adebayo et al. 2018): lower is better", fontsize=9)
    fig.tight_layout()
    return fig


def deletion_figure(results: dict[str, dict]) -> Figure:
    """Per method: the mean probability of the predicted class as the top-k% attributed pixels are set to
    background, against the same fraction of random pixels; the areas under both in the legend."""
    methods = list(results)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], methods):
        r = results[m]
        fractions = 100 * np.asarray(r["fractions"])
        ax.plot(fractions, r["attributed_curve"], "o-", ms=2, color="tab:red",
                label=f"most attributed first, AUC {r['auc_attributed']:.3f}")
        ax.plot(fractions, r["random_curve"], "s--", ms=2, color="tab:gray",
                label=f"random pixels, AUC {r['auc_random']:.3f}")
        ax.set_title(METHOD_NAMES[m], fontsize=9)
        ax.set_xlabel("pixels removed (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("probability of the predicted class")
    fig.suptitle("deletion test: lower area = the map found the pixels the model needs", fontsize=9)
    fig.tight_layout()
    return fig


def ink_figure(results: dict[str, dict]) -> Figure:
    """Per method: the share of the maps' positive mass on or near the ink (spread over images as error bars),
    the randomised model's maps' share beside it, and the chance level (the share of the image near the ink)."""
    methods = list(results)

    def shares(key: str) -> list[float]:
        return [np.nan if results[m].get(key) is None else 100 * results[m][key] for m in methods]

    sds = [0 if results[m]["ink_share_sd"] is None else 100 * results[m]["ink_share_sd"] for m in methods]
    chance = 100 * results[methods[0]]["ink_chance"]
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 3.4))
    xs = np.arange(len(methods))
    for dx, key, label, colour in ((-0.18, "ink_share", "trained model", "tab:red"),
                                   (0.18, "ink_share_randomised", "randomised weights", "tab:gray")):
        values, spread = shares(key), sds if key == "ink_share" else [0] * len(methods)
        ax.bar(xs + dx, values, 0.34, yerr=spread if key == "ink_share" else None, capsize=3, color=colour,
               alpha=0.85, label=label)
        for x, v, sd in zip(xs + dx, values, spread):
            if np.isfinite(v):
                ax.text(x, min(v + sd, 100) + 2, f"{v:.0f}%", ha="center", fontsize=7)
    ax.axhline(chance, color="black", ls="--", lw=1, label=f"chance: {chance:.0f}% of the image is near the ink")
    ax.set_xticks(xs, [METHOD_NAMES[m] for m in methods])
    ax.set_ylim(0, 130)
    ax.set_ylabel("positive attribution on or near\nthe ink (% of the map's mass)")
    ax.legend(fontsize=7, loc="upper center", ncols=3, frameon=False)
    ax.set_title("ink share: how much of the map is on the strokes (higher = on the digit)", fontsize=9)
    fig.tight_layout()
    return fig
