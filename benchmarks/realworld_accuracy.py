"""Accuracy on photo-like digits: `digitlab predict` (MNIST-style preprocessing) against naive resizing.

The folder comes from make_realworld_digits.py: MNIST *test* digits rendered as phone photos, scans,
screenshots, transparent PNGs, blue pen on lined paper, odd file formats... (rendered, not photographed:
there is no camera here). Three ways to read each file with the same model:
  digitlab predict   the real CLI, `digitlab predict [RUN] FILES --json`: cleaning, polarity, 20 px box,
                     centre of mass (digitlab.preprocess.to_mnist);
  naive              what most MNIST demos do: convert("L"), resize the whole picture to 28x28, predict;
  naive + invert     the same, inverted when the picture's median is bright (dark ink on light paper).
The untouched MNIST digits give the ceiling. Prints a markdown table, per kind and overall.

    python benchmarks/realworld_accuracy.py                 # shipped model, 300 digits x 17 kinds, seed 0
    python benchmarks/realworld_accuracy.py --run runs/<run> --count 100
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_realworld_digits as realworld  # noqa: E402  (a sibling script, not a package)

from digitlab.data import load_dataset  # noqa: E402
from digitlab.predict import Predictor  # noqa: E402

CHUNK = 1500  # files per `digitlab predict` call: keeps the command line far below the OS limit


#### The folder


def expected_indices(count: int, seed: int) -> list[int]:
    """The MNIST test indices make_realworld_digits.write_folder draws for (count, seed)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(10_000, size=count, replace=False)).tolist()


def read_index(folder: Path) -> list[dict]:
    """index.csv rows: file, label, variant, mnist_test_index."""
    with open(folder / "index.csv", newline="") as f:
        return [{**row, "label": int(row["label"]), "mnist_test_index": int(row["mnist_test_index"])}
                for row in csv.DictReader(f)]


def folder_matches(folder: Path, count: int, seed: int) -> bool:
    """True if `folder` holds exactly the (count, seed) rendering of every variant, all files present."""
    if not (folder / "index.csv").is_file():
        return False
    rows = read_index(folder)
    indices = sorted({r["mnist_test_index"] for r in rows})
    kinds = {r["variant"] for r in rows}
    return (indices == expected_indices(count, seed) and kinds == set(realworld.VARIANTS)
            and len(rows) == count * len(kinds) and all((folder / r["file"]).is_file() for r in rows))


def ensure_folder(folder: Path, count: int, seed: int) -> list[dict]:
    """Reuse the folder if it is the requested rendering, else render it; the index rows."""
    if folder_matches(folder, count, seed):
        print(f"reusing {folder} ({count} MNIST test digits x {len(realworld.VARIANTS)} kinds, seed {seed})")
    else:
        start = time.time()
        realworld.write_folder(folder, count, seed, list(realworld.VARIANTS))
        print(f"rendered {folder} ({count} MNIST test digits x {len(realworld.VARIANTS)} kinds, seed {seed}) "
              f"in {time.time() - start:.0f}s")
    return read_index(folder)


#### Three ways to read a file


def cli_labels(run: str | None, files: list[Path], threads: int) -> dict[str, int | None]:
    """`digitlab predict [RUN] FILES --json` in subprocesses: file -> label (None for an error line)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    labels: dict[str, int | None] = {}
    for i in range(0, len(files), CHUNK):
        command = [sys.executable, "-m", "digitlab", "predict", *([run] if run else []),
                   *map(str, files[i:i + CHUNK]), "--json"]
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        if proc.returncode not in (0, 1) or not lines:  # 1: some files were errors, reported line by line
            raise SystemExit(f"digitlab predict failed ({proc.returncode}): {proc.stderr.strip()}")
        labels.update({line["file"]: line.get("label") for line in lines})
    return labels


def naive_image(path: Path, invert_bright: bool) -> np.ndarray:
    """What naive demos feed the model: grey, the whole picture resized to 28x28; optionally inverted."""
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L").resize((28, 28)))
    if invert_bright and np.median(pixels) > 127:  # a bright background: make the ink bright, like MNIST
        pixels = 255 - pixels
    return pixels


def naive_labels(predictor: Predictor, files: list[Path], invert_bright: bool) -> list[int]:
    """Naive baseline predictions, one batch."""
    batch = torch.from_numpy(np.stack([naive_image(f, invert_bright) for f in files]))
    return predictor.probabilities(batch).argmax(1).tolist()


#### Report


def accuracy_table(rows: list[dict], methods: dict[str, list[int | None]]) -> str:
    """Markdown table: one row per kind, then all; one accuracy column per method."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_kind[row["variant"]].append(i)
    labels = np.array([r["label"] for r in rows])
    lines = ["| kind | images | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for kind, idx in [*by_kind.items(), ("**all**", list(range(len(rows))))]:
        cells = []
        for predicted in methods.values():
            hits = sum(predicted[i] == labels[i] for i in idx)
            cells.append(f"{hits / len(idx):.1%}")
        lines.append(f"| {kind} | {len(idx)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder or .safetensors (default: the shipped model)")
    parser.add_argument("--count", type=int, default=300, help="MNIST test digits to render")
    parser.add_argument("--seed", type=int, default=0, help="which digits, and the rendering's randomness")
    parser.add_argument("--folder", type=Path, default=Path("runs/realworld"), help="rendered folder (reused)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for `digitlab predict`")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    predictor = Predictor.from_run(args.run)
    info = predictor.describe()
    acc = info["test_accuracy"]
    print(f"model: {info['name']} from {predictor.info.source} (MNIST test accuracy "
          f"{f'{acc:.2%}' if acc is not None else 'not recorded'})")
    rows = ensure_folder(args.folder, args.count, args.seed)
    files = [args.folder / r["file"] for r in rows]

    start = time.time()
    by_file = cli_labels(args.run, files, args.threads)
    cli_seconds = time.time() - start
    errors = sum(by_file[str(f)] is None for f in files)
    methods = {"digitlab predict": [by_file[str(f)] for f in files],
               "naive resize": naive_labels(predictor, files, invert_bright=False),
               "naive + invert if bright": naive_labels(predictor, files, invert_bright=True)}

    ds = load_dataset(predictor.dataset, progress=False)
    indices = sorted({r["mnist_test_index"] for r in rows})
    originals = torch.from_numpy(predictor.probabilities(ds.test_images[indices]).argmax(1))
    ceiling = float((originals == ds.test_labels[indices]).float().mean())

    print(f"digitlab predict read {len(files)} files in {cli_seconds:.0f}s "
          f"({len(files) / cli_seconds:.1f} files/s, {args.threads} thread(s)); {errors} error lines")
    print(f"the same {len(indices)} MNIST test digits, untouched: {ceiling:.1%}\n")
    print(accuracy_table(rows, methods))


if __name__ == "__main__":
    main()
