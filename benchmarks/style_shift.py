"""Style shift: how a model reads handwriting styles MNIST's writers rarely used (procedural digits, digitlab.pen).

MNIST-made benchmarks only hold MNIST's handwriting, so they cannot show that a European 1 with a long flag,
a crossed 7, an open-top 4 or a 9 with a straight tail are misread. This benchmark draws digits in 24 styles
with a simulated pen, mouse or finger (no MNIST digits, no fonts: see digitlab/pen.py) from the held-out
seed range (pen.BENCHMARK_SEEDS; training may only use pen.TRAIN_SEEDS), and reads them through exactly what
users get: `Predictor.predict` on the rendered images, i.e. digitlab.preprocess.to_mnist, then the model.

Printed: overall accuracy, per class, per style variant (the table that shows which styles fail, with what
they are taken for), per input mode, and the confusion matrix.

    python benchmarks/style_shift.py                              # shipped model, 5,000 digits (500 a class)
    python benchmarks/style_shift.py --run runs/<run> --json      # another model; machine-readable
    python benchmarks/style_shift.py --save-grid grid.png         # samples per style, and the mistakes
    python benchmarks/style_shift.py --tight-crop [--blur 0.8]    # each image cropped to its ink, no margin
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from digitlab import pen
from digitlab.errors import DigitlabError
from digitlab.predict import Predictor

CHUNK = 500  # images per Predictor.predict call


#### The set


def tight_crop(image: np.ndarray, polarity: str, blur: float = 0.0) -> np.ndarray:
    """The image cut exactly to its ink's bounding box (no margin), optionally Gaussian-blurred."""
    ink = 255.0 - image if polarity == "dark" else image.astype(np.float64)
    ink = ink - np.median(ink)  # the paper is the majority of pixels
    mask = ink > 0.25 * ink.max()
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    out = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if blur:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur)))
    return out


def make_set(count: int, seed: int, size: int, polarity: str, modes: list[str]) -> list[pen.Sample]:
    """The held-out samples; refuses seeds that a training set may use."""
    seeds = pen.seed_range(seed, count)
    pen.check_disjoint(seeds, pen.TRAIN_SEEDS, "the benchmark seeds and the training range")
    return pen.generate_samples(count, seed, size, polarity, modes=modes)


#### Reading it


def read_as(prediction) -> int:
    """The digit the model reads, also where its abstention refuses to name it (docs/not_a_digit.md): this
    benchmark measures reading."""
    return prediction.top_k[0][0]


def predict_all(predictor: Predictor, images: list[np.ndarray]) -> tuple[np.ndarray, dict[int, str]]:
    """Labels through Predictor.predict, i.e. to_mnist then the model: exactly what users get.

    An image the preprocessing refuses gets label -1 (counted as wrong) and its error message, as
    `digitlab predict` reports an error line for it instead of stopping.
    """
    labels: list[int] = []
    errors: dict[int, str] = {}
    for i in range(0, len(images), CHUNK):
        chunk = list(images[i:i + CHUNK])
        try:
            labels += [read_as(p) for p in predictor.predict(chunk)]
        except DigitlabError:  # one image failed: read this chunk one by one
            for k, image in enumerate(chunk):
                try:
                    labels.append(read_as(predictor.predict(image)[0]))
                except DigitlabError as e:
                    labels.append(-1)
                    errors[i + k] = str(e)
    return np.array(labels, dtype=np.int64), errors


def group_table(keys: list[str], truth: np.ndarray, predicted: np.ndarray, name: str) -> tuple[str, list[dict]]:
    """Markdown table of accuracy per key, with what the misread digits were taken for; and its rows."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    lines = [f"| {name} | images | accuracy | misread as |", "|---|---:|---:|---|"]
    rows = []
    for key in sorted(groups):
        idx = np.array(groups[key])
        right = int((predicted[idx] == truth[idx]).sum())
        wrong = Counter(predicted[idx][predicted[idx] != truth[idx]].tolist()).most_common(3)
        taken = ", ".join(f"{d if d >= 0 else 'error'} ({c / len(idx):.0%})" for d, c in wrong)
        lines.append(f"| {key} | {len(idx)} | {right / len(idx):.1%} | {taken} |")
        rows.append({name: key, "images": len(idx), "accuracy": right / len(idx),
                     "misread_as": {str(d): c for d, c in wrong}})
    return "\n".join(lines), rows


def confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """10x11 counts: rows the true digit, columns the model's answer; the last column images it could not read."""
    m = np.zeros((10, 11), dtype=np.int64)
    np.add.at(m, (truth, np.where(predicted < 0, 10, predicted)), 1)
    return m


def confusion_text(m: np.ndarray) -> str:
    """The confusion matrix as aligned text."""
    head = "true\\read " + "".join(f"{d:>6}" for d in range(10)) + " error"
    return "\n".join([head] + [f"{t:>9} " + "".join(f"{v:>6}" for v in row) for t, row in enumerate(m)])


#### Grid


def tile(image: np.ndarray, side: int, polarity: str) -> Image.Image:
    """A sample shown dark on light at side x side (nearest neighbour: pixels stay visible)."""
    shown = image if polarity == "dark" else 255 - image
    return Image.fromarray(shown).convert("RGB").resize((side, side), Image.NEAREST)


def save_grid(path: Path, samples: list[pen.Sample], images: list[np.ndarray], predicted: np.ndarray,
              polarity: str, per_style: int = 12, max_mistakes: int = 96) -> None:
    """Two panels in one PNG: `per_style` samples of each style (a row each, framed green if read right,
    red if not), then the mistakes: each the input and the 28x28 the model saw, captioned style and true->read.
    """
    from digitlab.preprocess import to_mnist

    side, pad, caption = 64, 4, 12
    by_style: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_style[s.style].append(i)
    styles = [s for s in pen.STYLES if s in by_style]
    mistakes = [i for i, s in enumerate(samples) if predicted[i] != s.label][:max_mistakes]
    cols = 8
    width = max(110 + per_style * (side + pad), cols * (2 * side + 2 * pad))
    top_h = len(styles) * (side + pad) + 20
    bottom_h = -(-len(mistakes) // cols) * (side + caption + 2 * pad) + 20
    canvas = Image.new("RGB", (width, top_h + bottom_h), "white")
    draw = ImageDraw.Draw(canvas)  # captions use Pillow's built-in default font (embedded, not a file)
    draw.text((4, 4), "samples per style (green frame: read right, red: misread)", fill="black")
    for row, style in enumerate(styles):
        y = 20 + row * (side + pad)
        draw.text((4, y + side // 2 - 6), style, fill="black")
        for col, i in enumerate(by_style[style][:per_style]):
            x = 110 + col * (side + pad)
            ok = predicted[i] == samples[i].label
            draw.rectangle([x - 2, y - 2, x + side + 1, y + side + 1], fill=(40, 160, 40) if ok else (210, 30, 30))
            canvas.paste(tile(samples[i].image, side, polarity), (x, y))
    y0 = top_h
    draw.text((4, y0 + 2), f"mistakes (first {len(mistakes)}): input | what the model saw; style true->read",
              fill="black")
    for k, i in enumerate(mistakes):
        x = (k % cols) * (2 * side + 2 * pad)
        y = y0 + 20 + (k // cols) * (side + caption + 2 * pad)
        canvas.paste(tile(images[i], side, polarity), (x, y))
        if predicted[i] >= 0:  # what the model saw (nothing: the preprocessing refused the image)
            canvas.paste(tile(255 - to_mnist(images[i]), side, "dark"), (x + side, y))
        read = predicted[i] if predicted[i] >= 0 else "error"
        draw.text((x, y + side), f"{samples[i].style} {samples[i].label}->{read}", fill=(200, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


#### Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder or .safetensors (default: the shipped model)")
    parser.add_argument("--count", type=int, default=5000, help="digits (consecutive seeds: balanced classes)")
    parser.add_argument("--seed", type=int, default=pen.BENCHMARK_SEED_BASE,
                        help="first seed; the set is seeds [seed, seed + count), outside the training range")
    parser.add_argument("--size", type=int, default=64, help="rendered image side in pixels")
    parser.add_argument("--polarity", choices=("dark", "light"), default="dark",
                        help="dark ink on light paper, or light on dark")
    parser.add_argument("--modes", default=",".join(pen.MODES), help="input modes drawn from")
    parser.add_argument("--tight-crop", action="store_true", help="crop each image exactly to its ink box")
    parser.add_argument("--blur", type=float, default=0.0, help="Gaussian blur radius after --tight-crop")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--save-grid", type=Path, default=None, help="PNG of samples per style and mistakes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.blur < 0 or (args.blur and not args.tight_crop):
        parser.error("--blur takes a radius >= 0 and goes with --tight-crop")
    return args


def evaluate(args: argparse.Namespace) -> dict:
    """Render, read, tabulate; everything the report prints, as plain data."""
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_run(args.run)
    start = time.time()
    samples = make_set(args.count, args.seed, args.size, args.polarity, args.modes.split(","))
    render_s = time.time() - start
    images = [tight_crop(s.image, args.polarity, args.blur) if args.tight_crop else s.image for s in samples]
    start = time.time()
    predicted, errors = predict_all(predictor, images)
    read_s = time.time() - start
    truth = np.array([s.label for s in samples])
    tables = {}
    for name, keys in (("digit", [str(s.label) for s in samples]), ("style", [s.style for s in samples]),
                       ("mode", [s.mode for s in samples])):
        tables[name] = group_table(keys, truth, predicted, name)
    info = predictor.describe()
    return {"model": info["name"], "source": str(predictor.info.source), "mnist_test_accuracy": info["test_accuracy"],
            "count": args.count, "seeds": [args.seed, args.seed + args.count], "size": args.size,
            "polarity": args.polarity, "modes": args.modes.split(","), "tight_crop": args.tight_crop,
            "blur": args.blur, "render_seconds": round(render_s, 1), "read_seconds": round(read_s, 1),
            "accuracy": float((predicted == truth).mean()), "tables": tables, "errors": len(errors),
            "first_errors": [f"seed {samples[i].seed} ({samples[i].style}): {m}" for i, m in list(errors.items())[:5]],
            "confusion": confusion(truth, predicted), "samples": samples, "images": images, "predicted": predicted}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        r = evaluate(args)
    except DigitlabError as e:
        print(f"style_shift: error: {e}", file=sys.stderr)
        return 2
    if args.save_grid:
        save_grid(args.save_grid, r["samples"], r["images"], r["predicted"], args.polarity)
    if args.json:
        out = {k: v for k, v in r.items() if k not in ("samples", "images", "predicted", "tables", "confusion")}
        out.update({f"per_{k}": rows for k, (_, rows) in r["tables"].items()})
        out["confusion"] = r["confusion"].tolist()
        print(json.dumps(out))
        return 0
    acc = r["mnist_test_accuracy"]
    crop = f", tight crop{f' + blur {args.blur}' if args.blur else ''}" if args.tight_crop else ""
    print(f"model: {r['model']} from {r['source']} (MNIST test accuracy "
          f"{f'{acc:.2%}' if acc is not None else 'not recorded'})")
    print(f"set: {r['count']} pen digits, seeds [{r['seeds'][0]}, {r['seeds'][1]}), {r['size']}x{r['size']}, "
          f"ink {r['polarity']}, modes {','.join(r['modes'])}{crop}; rendered in {r['render_seconds']}s, "
          f"read through Predictor.predict (to_mnist) in {r['read_seconds']}s")
    print(f"\naccuracy: {r['accuracy']:.1%}; images the preprocessing refused (counted wrong): {r['errors']}")
    print("".join(f"  {line}\n" for line in r["first_errors"]))
    for name in ("digit", "style", "mode"):
        print(r["tables"][name][0] + "\n")
    print(confusion_text(r["confusion"]))
    if args.save_grid:
        print(f"\ngrid: {args.save_grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
