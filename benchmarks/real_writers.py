"""Real writers: how digitlab reads digits written by people outside MNIST, read as a user's image files are.

Every other benchmark holds MNIST's writers (tight_crops, realworld_accuracy) or our own pen (style_shift), and
the shipped model scores 99%+ on all of them. scikit-learn bundles 1,797 digits by 13 other writers (the UCI
optical digits: 32x32 bitmaps, each digit stretched to the bitmap's full height and most of its width whatever
its shape, counted in 4x4 blocks to 8x8 at 17 grey levels), loadable anywhere with no download. They are a
development set: digitlab never trains on them.

Each digit becomes what a user would hand `digitlab predict`: dark ink on white, upscaled to 64x64 (bicubic), a
PNG file. The files are read by Predictor.predict_files, the call `digitlab predict FILE...` makes (to_mnist on
the file, then the model), with the model `digitlab predict` loads: the shipped one on ONNX Runtime where it
can be (Predictor.from_shipped), or --run. Printed: overall and per-class accuracy, the confusion matrix, the
most common confusions; written: a PNG confusion matrix and a grid of the misread digits (the file as given,
then the 28x28 the model saw, true -> read and the probability). Then how these writers' digits differ from
MNIST's in shape after preprocessing (ink box width/height, stroke width, slant, grey edges), per class,
against MNIST test digits put through the same measurement: what a training recipe would have to cover to read
other writers. Last, the control: MNIST's own test digits made the way the set's were (cropped, stretched to
the set's box, thresholded, counted in 4x4 blocks to 8x8) and read the same way, which says how much of the gap
is the format (8x8, stretched, blurred) rather than the writers.

    python benchmarks/real_writers.py                                   # shipped model; PNGs in the current folder
    python benchmarks/real_writers.py --run runs/<run> --out figs/      # another model
    python benchmarks/real_writers.py --json                            # one JSON object
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from digitlab.errors import DigitlabError
from digitlab.predict import Predictor
from digitlab.preprocess import BOX_LEVEL

SIDE = 64  # the picture a user's file holds: 8x8 upscaled 8 times
LEVELS = 16  # scikit-learn's digits count ink from 0 (paper) to 16 (a 4x4 block all ink)
CLASSES = 10
REFUSED = CLASSES  # the confusion matrix's last column: files the preprocessing refused
BITMAP = 32  # the set's digits were 32x32 bitmaps, counted in 4x4 blocks
WRITER_BOX = (32, 24)  # rows, columns their ink fills (measured: all 8 rows, columns 1..6 of 8 for most digits)
GRID_COLUMNS = 12  # tiles per row in the misread grid: 6 digits, each as given and as seen
GRID_MAX = 60  # misread digits shown at most (the most confident mistakes first)

#### The set


def load_writers() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, (1797, 8, 8) floats 0..16 with bright ink, and labels: real, other writers."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def as_picture(digit: np.ndarray, side: int = SIDE) -> Image.Image:
    """One 8x8 digit as a user's file would hold it: dark ink on white paper, upscaled to side x side (bicubic)."""
    paper = np.round(255 - np.asarray(digit, np.float64) * (255 / LEVELS)).astype(np.uint8)
    return Image.fromarray(paper).resize((side, side), Image.BICUBIC)


def write_pictures(digits: np.ndarray, folder: Path) -> list[Path]:
    """Each digit as a PNG file in `folder`: the form `digitlab predict` reads."""
    paths = []
    for i, digit in enumerate(digits):
        path = folder / f"{i:04d}.png"
        as_picture(digit).save(path)
        paths.append(path)
    return paths


def as_writer_digit(ink: np.ndarray) -> np.ndarray:
    """An MNIST digit (uint8, bright ink) made the way the set's digits were made: cropped to its ink, stretched
    to WRITER_BOX (centred in a 32x32 bitmap), thresholded at half and counted in 4x4 blocks: 8x8 at 0..16."""
    rows, cols = np.flatnonzero((ink > 0).any(axis=1)), np.flatnonzero((ink > 0).any(axis=0))
    box = np.ascontiguousarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    height, width = WRITER_BOX
    bitmap = np.zeros((BITMAP, BITMAP), bool)
    left = (BITMAP - width) // 2
    bitmap[:height, left:left + width] = np.asarray(Image.fromarray(box).resize((width, height), Image.BOX)) > 127
    return bitmap.reshape(8, BITMAP // 8, 8, BITMAP // 8).sum(axis=(1, 3)).astype(np.float64)


#### Reading them


def load_predictor(run: str | None) -> Predictor:
    """The model `digitlab predict` loads: the shipped one (on ONNX Runtime where it can be) or a run's, with one
    PyTorch thread as `digitlab predict` sets while it reads files."""
    if run is None:
        return Predictor.from_shipped(threads=1)
    import torch

    torch.set_num_threads(1)
    return Predictor.from_run(run)


def read_files(predictor: Predictor, paths: Sequence[Path], workers: int = 1
               ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """What `digitlab predict FILE...` computes for each file (Predictor.predict_files): the 28x28 the model saw,
    its probabilities (NaN where the preprocessing refused the file) and the refusals' messages."""
    seen = np.zeros((len(paths), 28, 28), np.uint8)
    probs = np.full((len(paths), CLASSES), np.nan)
    errors: dict[int, str] = {}
    for i, result in enumerate(predictor.predict_files(paths, top_k=1, workers=workers)):
        if result.error is not None:
            errors[i] = result.error
            continue
        seen[i], probs[i] = result.image, result.prediction.probabilities
    return seen, probs, errors


def labels_of(probs: np.ndarray) -> np.ndarray:
    """The label each file was read as; REFUSED where it was not read."""
    refused = np.isnan(probs).any(axis=1)
    return np.where(refused, REFUSED, np.nan_to_num(probs, nan=0.0).argmax(axis=1))


#### Scoring


def confusion(truth: np.ndarray, read: np.ndarray) -> np.ndarray:
    """10x11 counts: rows the true digit, columns what it was read as; the last column the refused files."""
    m = np.zeros((CLASSES, CLASSES + 1), np.int64)
    np.add.at(m, (truth, read), 1)
    return m


def confusion_text(m: np.ndarray) -> str:
    """The confusion matrix as aligned text."""
    head = "true\\read" + "".join(f"{d:>6}" for d in range(CLASSES)) + " refused"
    return "\n".join([head] + [f"{t:>9}" + "".join(f"{v:>6}" for v in row) for t, row in enumerate(m)])


def per_class(m: np.ndarray) -> list[float]:
    """Accuracy of each true digit."""
    return [float(m[c, c] / max(m[c].sum(), 1)) for c in range(CLASSES)]


def top_confusions(m: np.ndarray, k: int = 8) -> list[tuple[int, int, int]]:
    """The k most frequent (true, read as, count) mistakes, most frequent first."""
    off = [(int(t), int(r), int(m[t, r])) for t in range(CLASSES) for r in range(CLASSES + 1) if t != r and m[t, r]]
    return sorted(off, key=lambda x: (-x[2], x[0], x[1]))[:k]


def label_name(read: int) -> str:
    return "refused" if read == REFUSED else str(read)


#### Shape: what differs from MNIST


def ink_of(image: np.ndarray) -> np.ndarray:
    """A 28x28 uint8 MNIST-style image as ink in [0, 1]."""
    return np.asarray(image, np.float64) / 255


def box_aspect(image: np.ndarray) -> float:
    """Width / height of the ink's box (ink >= BOX_LEVEL, as the preprocessing boxes it): MNIST keeps a digit's
    own proportions, a writer set scaled to fill a square does not."""
    mask = ink_of(image) >= BOX_LEVEL
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return float("nan")
    return (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)


def stroke_width(image: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the ink's mass over its outline's length (total variation with forward
    differences, right for diagonal edges too). A stroke of width w and length L: mass L*w, outline 2L."""
    ink = np.pad(ink_of(image), 1)
    dx, dy = np.diff(ink, axis=1)[:-1, :], np.diff(ink, axis=0)[:, :-1]
    outline = float(np.hypot(dx, dy).sum())
    return 2 * float(ink.sum()) / outline if outline else float("nan")


def slant(image: np.ndarray) -> float:
    """Shear of the ink (columns per row, from its second moments), positive when the top leans right: the
    amount a deskew would undo."""
    ink = ink_of(image)
    mass = ink.sum()
    if not mass:
        return float("nan")
    rows, cols = np.indices(ink.shape)
    cy, cx = (ink * rows).sum() / mass, (ink * cols).sum() / mass
    var_y = (ink * (rows - cy) ** 2).sum() / mass
    cov = (ink * (rows - cy) * (cols - cx)).sum() / mass
    return float(-cov / var_y)


def grey_share(image: np.ndarray) -> float:
    """Share of the ink's pixels (> 0.1) that are grey (< 0.75): soft, blurred edges against crisp pen strokes."""
    ink = ink_of(image)
    on = ink > 0.1
    return float((on & (ink < 0.75)).sum() / on.sum()) if on.any() else float("nan")


MEASURES = {"width/height": box_aspect, "stroke px": stroke_width, "slant": slant, "grey share": grey_share}


def measure(images: np.ndarray) -> np.ndarray:
    """(N, len(MEASURES)): each 28x28 image's box aspect, stroke width, slant and grey share."""
    return np.array([[f(image) for f in MEASURES.values()] for image in images], np.float64)


def mnist_test(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n MNIST test digits (uint8 28x28, bright ink) and labels: what the models learnt from."""
    from digitlab.data import load_dataset

    ds = load_dataset("mnist", progress=False)
    return ds.test_images[:n].numpy(), ds.test_labels[:n].numpy()


def spread(values: np.ndarray) -> dict:
    """Median and 10th / 90th percentiles, ignoring NaN (a blank image); None for a class with no digits."""
    values = values[np.isfinite(values)]
    if not values.size:
        return {"median": None, "p10": None, "p90": None}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"median": round(float(p50), 3), "p10": round(float(p10), 3), "p90": round(float(p90), 3)}


def spread_text(s: dict, percentiles: bool) -> str:
    """A spread as a table cell: the median, with the 10th..90th percentiles if asked."""
    if s["median"] is None:
        return "-"
    return f"{s['median']:.2f}" + (f" ({s['p10']:.2f}..{s['p90']:.2f})" if percentiles else "")


def shape_rows(writers: np.ndarray, w_labels: np.ndarray, mnist: np.ndarray, m_labels: np.ndarray) -> list[dict]:
    """Per class and for all: each measure's spread for the writers and for MNIST."""
    rows = []
    for c in [*range(CLASSES), None]:
        w = writers if c is None else writers[w_labels == c]
        m = mnist if c is None else mnist[m_labels == c]
        row = {"digit": "all" if c is None else str(c), "writers": len(w), "mnist": len(m)}
        for k, name in enumerate(MEASURES):
            row[name] = {"writers": spread(w[:, k]), "mnist": spread(m[:, k])}
        rows.append(row)
    return rows


def shape_table(rows: list[dict]) -> str:
    """Markdown: medians per class, writers against MNIST; the 'all' row adds the 10th-90th percentile range."""
    head = "| digit | " + " | ".join(f"{n}: writers | {n}: MNIST" for n in MEASURES) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(MEASURES))]
    for row in rows:
        cells = [spread_text(row[name][who], row["digit"] == "all")
                 for name in MEASURES for who in ("writers", "mnist")]
        lines.append(f"| {row['digit']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#### Figures


def save_confusion(m: np.ndarray, path: Path, title: str) -> Path:
    """The confusion matrix as a PNG (digitlab.plots), with a column for refused files if there are any."""
    from digitlab.plots import plot_confusion

    if m[:, REFUSED].any():
        square = np.zeros((CLASSES + 1, CLASSES + 1), np.int64)
        square[:CLASSES] = m
        return plot_confusion(square.tolist(), [*map(str, range(CLASSES)), "refused"], path, title)
    return plot_confusion(m[:, :CLASSES].tolist(), [str(c) for c in range(CLASSES)], path, title)


def given_tile(digit: np.ndarray) -> np.ndarray:
    """The file as given (dark on white), shrunk to 28x28 so it sits in the same grid as what the model saw."""
    return np.asarray(as_picture(digit).resize((28, 28), Image.BOX))


def misread_order(truth: np.ndarray, read: np.ndarray, probs: np.ndarray) -> list[int]:
    """Indices of the misread digits, the most confident mistakes first (refusals last)."""
    wrong = np.flatnonzero(read != truth)
    confidence = [np.nanmax(probs[i]) if read[i] != REFUSED else -1.0 for i in wrong]
    return [int(wrong[k]) for k in np.argsort(confidence, kind="stable")[::-1]]


def save_misread(digits: np.ndarray, seen: np.ndarray, truth: np.ndarray, read: np.ndarray, probs: np.ndarray,
                 path: Path, title: str, limit: int = GRID_MAX) -> Path:
    """A grid of the misread digits (digitlab.plots): each the file as given, then the 28x28 the model saw,
    captioned with its index, true -> read and the probability."""
    import torch

    from digitlab.plots import plot_grid

    chosen = misread_order(truth, read, probs)
    tiles, titles = [], []
    for i in chosen[:limit]:
        p = f"{np.nanmax(probs[i]):.0%}" if read[i] != REFUSED else ""
        tiles += [given_tile(digits[i]), seen[i]]
        titles += [f"#{i} given", f"{truth[i]}->{label_name(read[i])} {p}"]
    shown = f"{min(limit, len(chosen))} of {len(chosen)} misread" if chosen else "nothing misread"
    images = torch.from_numpy(np.stack(tiles)) if tiles else torch.zeros((1, 28, 28), dtype=torch.uint8)
    return plot_grid(images, titles or ["none"], path, columns=GRID_COLUMNS, title=f"{title}: {shown}")


#### The report


def read_set(predictor: Predictor, digits: np.ndarray, truth: np.ndarray, folder: Path, workers: int) -> dict:
    """Write 8x8 digits as files in `folder`, read them as `digitlab predict` does and score them."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    seen, probs, errors = read_files(predictor, write_pictures(digits, folder), workers)
    read = labels_of(probs)
    m = confusion(truth, read)
    return {"digits": len(truth), "seconds": round(time.time() - start, 1), "accuracy": float((read == truth).mean()),
            "per_class": per_class(m), "refused": len(errors), "confusion": m, "top_confusions": top_confusions(m),
            "truth": truth, "read": read, "probs": probs, "seen": seen, "digits_8x8": digits, "errors": errors}


def evaluate(run: str | None, workers: int, n_mnist: int, folder: Path) -> dict:
    """The writers' files read as `digitlab predict` does, scored and measured against MNIST; and MNIST's own
    digits made the way the writers' were (the control: what the format alone costs)."""
    predictor = load_predictor(run)
    info = predictor.describe()
    digits, truth = load_writers()
    r = read_set(predictor, digits, truth, folder / "writers", workers)
    r.update({"model": info["name"], "source": str(predictor.info.source), "runtime": info["runtime"],
              "mnist_test_accuracy": info["test_accuracy"], "mnist_measured": n_mnist})
    mnist, m_labels = mnist_test(n_mnist)
    ok = r["read"] != REFUSED
    r["shapes"] = shape_rows(measure(r["seen"][ok]), truth[ok], measure(mnist), m_labels)
    control = read_set(predictor, np.stack([as_writer_digit(d) for d in mnist]), m_labels, folder / "mnist", workers)
    ok = control["read"] != REFUSED
    control["shapes"] = shape_rows(measure(control["seen"][ok]), m_labels[ok], measure(mnist), m_labels)
    r["control"] = control
    return r


def tag_of(run: str | None) -> str:
    """A short name for the model in figure names: 'shipped', or the run folder's or file's name."""
    return "shipped" if run is None else Path(run).stem if Path(run).suffix else Path(run).name


def small_png(path: Path) -> Path:
    """Re-save a figure with a 64-colour palette: a third of the bytes, so the PNGs can live in docs/."""
    with Image.open(path) as im:
        small = im.convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=64)
    small.save(path, optimize=True)
    return path


def save_figures(r: dict, out: Path, tag: str, grid_max: int = GRID_MAX) -> list[str]:
    """The confusion matrix and the misread grid as PNGs in `out`."""
    title = f"{tag} model, scikit-learn digits"
    cm = save_confusion(r["confusion"], out / f"real_writers-confusion-{tag}.png", title)
    grid = save_misread(r["digits_8x8"], r["seen"], r["truth"], r["read"], r["probs"],
                        out / f"real_writers-misread-{tag}.png", title, grid_max)
    return [str(small_png(cm)), str(small_png(grid))]


def scores_json(r: dict) -> dict:
    """One read set's scores as plain data: accuracy, per class, confusions, refusals."""
    out = {k: r[k] for k in ("digits", "seconds", "accuracy", "per_class", "refused", "shapes") if k in r}
    out["confusion"] = r["confusion"].tolist()
    out["top_confusions"] = [{"true": t, "read": label_name(x), "count": c} for t, x, c in r["top_confusions"]]
    out["refusals"] = {str(i): e for i, e in r["errors"].items()}
    return out


def as_json(r: dict) -> dict:
    """The report as plain data."""
    keep = ("model", "source", "runtime", "mnist_test_accuracy", "mnist_measured", "figures")
    out = {k: r[k] for k in keep if k in r}
    out.update(scores_json(r))
    order = misread_order(r["truth"], r["read"], r["probs"])
    out["misread"] = [{"index": i, "true": int(r["truth"][i]), "read": label_name(int(r["read"][i])),
                       "probability": None if r["read"][i] == REFUSED else round(float(np.nanmax(r["probs"][i])), 4)}
                      for i in order]
    if "control" in r:
        out["control"] = scores_json(r["control"])
    return out


def print_scores(r: dict) -> None:
    """Accuracy, per class, the most common confusions and the confusion matrix of one read set."""
    right = int(np.trace(r["confusion"][:, :CLASSES]))
    print(f"\naccuracy: {r['accuracy']:.2%} ({right} of {r['digits']}); refused by the preprocessing: {r['refused']}")
    print("\n| digit | " + " | ".join(map(str, range(CLASSES))) + " |\n|---|" + "---:|" * CLASSES)
    print("| accuracy | " + " | ".join(f"{a:.1%}" for a in r["per_class"]) + " |")
    print("\nmost common confusions: " + ", ".join(f"{t} -> {label_name(x)}: {c}" for t, x, c in r["top_confusions"]))
    print("\n" + confusion_text(r["confusion"]))


def print_report(r: dict) -> None:
    """Accuracy, per class, confusions, the shape table and the control, as text and markdown."""
    acc = r["mnist_test_accuracy"]
    print(f"model: {r['model']} from {r['source']} on {r['runtime']} (MNIST test accuracy "
          f"{f'{acc:.2%}' if acc is not None else 'not recorded'})")
    print(f"set: scikit-learn digits, {r['digits']} by 13 writers, 8x8 -> dark on white 64x64 PNG (bicubic), read "
          f"by Predictor.predict_files as `digitlab predict` reads files, in {r['seconds']}s")
    print_scores(r)
    read = int(sum(r["read"] != REFUSED))
    print(f"\nshape after preprocessing, medians (all: 10th..90th percentile); writers: the {read} files as the model "
          f"saw them; MNIST: the first {r['mnist_measured']} test digits as the models learnt them;\nslant: columns "
          "per row, + leans right; grey share: ink pixels (> 0.1) that are grey (< 0.75)")
    print(shape_table(r["shapes"]))
    if "control" in r:
        c = r["control"]
        print(f"\ncontrol: the first {c['digits']} MNIST test digits made the way the set's were (cropped to the ink, "
              f"stretched to {WRITER_BOX[0]}x{WRITER_BOX[1]} in a {BITMAP}x{BITMAP} bitmap, thresholded, 4x4 blocks "
              f"counted to 8x8), then the same files, in {c['seconds']}s")
        print_scores(c)
        everyone = c["shapes"][-1]
        print("\ntheir shape after preprocessing (medians, all): " + ", ".join(
            f"{name} {spread_text(everyone[name]['writers'], False)}" for name in MEASURES))
    if r.get("figures"):
        print("\nfigures: " + ", ".join(r["figures"]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder or .safetensors (default: the shipped model, as "
                                                    "`digitlab predict` loads it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the two PNGs")
    parser.add_argument("--tag", default=None, help="the model's name in the PNGs' names (default: shipped, or the "
                                                    "run's name)")
    parser.add_argument("--no-figures", action="store_true", help="write no PNGs")
    parser.add_argument("--grid-max", type=int, default=GRID_MAX, help="misread digits shown in the grid at most")
    parser.add_argument("--mnist", type=int, default=2000, help="first N MNIST test digits for the shape table and "
                                                                "the control")
    parser.add_argument("--workers", type=int, default=1, help="processes preprocessing the files")
    args = parser.parse_args(argv)
    if args.mnist < 1:
        parser.error("--mnist must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="real_writers-") as folder:
            r = evaluate(args.run, args.workers, args.mnist, Path(folder))
    except DigitlabError as e:
        print(f"real_writers: error: {e}", file=sys.stderr)
        return 2
    if not args.no_figures:
        r["figures"] = save_figures(r, args.out, args.tag or tag_of(args.run), args.grid_max)
    if args.json:
        print(json.dumps(as_json(r)))
    else:
        print_report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
