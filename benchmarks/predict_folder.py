"""`digitlab predict FOLDER --json` end to end: how many image files a second become labels.

    python benchmarks/predict_folder.py                  # 2,000 images, the shipped model
    python benchmarks/predict_folder.py -n 500 --runs 3  # smaller folder, best of 3
    python benchmarks/predict_folder.py --folder DIR     # keep (or reuse) the generated folder in DIR
    python benchmarks/predict_folder.py --against OLD/src  # end to end, alternating with another source tree

The folder holds N 64x64 PNGs made from MNIST test digits (the first N, cycled if N > 10,000): each upscaled
bilinearly and inverted to dark ink on white paper, the way a scanned or photographed digit arrives. Two timings:
- end to end: `python -m digitlab predict FOLDER --json` as a subprocess, from process start to exit (interpreter
  start-up, imports, model load, every file read, preprocessed and predicted, every line written);
- in process: `digitlab.cli.main(["predict", FOLDER, "--json"])` after the imports, i.e. model load plus
  files -> labels, without the interpreter and import start-up.
`--against SRC` times another source tree of digitlab (e.g. `git archive COMMIT src | tar -x -C /tmp/old`) end to
end too, run for run alternating with this one, so both see the same load; the ratio of their medians is printed.
Both report images/s; the accuracy against the MNIST labels is printed as a check that the labels are real.
The machine is printed too (CPU count, load average at the start and the end, torch threads), because on a
shared machine the load changes the numbers more than most code changes do: compare runs made back to back.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, n: int) -> list[int]:
    """Write n 64x64 dark-on-white PNGs (0000.png, ...) from MNIST test digits; returns their true labels."""
    from digitlab.data import load_dataset

    ds = load_dataset("mnist", progress=False)
    images, labels = ds.test_images.numpy(), ds.test_labels.numpy()
    folder.mkdir(parents=True, exist_ok=True)
    truth = []
    for i in range(n):
        j = i % len(images)
        path = folder / f"{i:05d}.png"
        if not path.exists():
            Image.fromarray(255 - images[j]).resize((64, 64), Image.BILINEAR).save(path)
        truth.append(int(labels[j]))
    return truth


def accuracy(lines: list[str], truth: list[int]) -> float:
    """Fraction of JSON lines whose label matches the file's MNIST label (files are named by index)."""
    right = 0
    for line in lines:
        row = json.loads(line)
        right += "label" in row and row["label"] == truth[int(Path(row["file"]).stem)]
    return right / len(truth)


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far, their worker processes included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def end_to_end(folder: Path, truth: list[int], src: Path = REPO / "src") -> tuple[float, float, float]:
    """Seconds for `python -m digitlab predict FOLDER --json` in a fresh process (digitlab from `src`), its
    accuracy, and the CPU seconds it and its workers used: on a shared machine the wall time follows the load,
    the CPU time much less."""
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(folder), "--json"],
                          capture_output=True, text=True, env=env)
    seconds, cpu = time.perf_counter() - start, children_cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"digitlab predict failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, accuracy(done.stdout.splitlines(), truth), cpu


def in_process(folder: Path, truth: list[int]) -> tuple[float, float]:
    """Seconds for cli.main(["predict", FOLDER, "--json"]) once digitlab and torch are imported."""
    from digitlab.cli import main

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["predict", str(folder), "--json"])
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"digitlab predict failed in process ({code})")
    return seconds, accuracy(out.getvalue().splitlines(), truth)


def machine() -> str:
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs, load average {load}, torch {torch.__version__} default threads "
            f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def report(what: str, n: int, seconds: list[float], acc: float, cpu: list[float] | None = None) -> None:
    best, median = min(seconds), float(np.median(seconds))
    used = f"; CPU {np.median(cpu):.2f} s median, {np.median(cpu) / n * 1e3:.2f} ms an image" if cpu else ""
    print(f"{what:<12} {n / best:8.0f} images/s best, {n / median:8.0f} median   "
          f"({best:.2f} s best of {len(seconds)}; accuracy {acc:.2%}{used})", flush=True)


def compare(folder: Path, truth: list[int], other: Path, runs: int) -> None:
    """This tree and `other` end to end, alternating run by run (each first in turn), so both see the same load."""
    times: dict[str, list[float]] = {"this": [], "against": []}
    cpu: dict[str, list[float]] = {"this": [], "against": []}
    acc: dict[str, float] = {}
    for i in range(runs):
        for name in (("this", "against") if i % 2 == 0 else ("against", "this")):
            seconds, acc[name], used = end_to_end(folder, truth, REPO / "src" if name == "this" else other.resolve())
            times[name].append(seconds)
            cpu[name].append(used)
    n = len(truth)
    report("end to end", n, times["this"], acc["this"], cpu["this"])
    report("against", n, times["against"], acc["against"], cpu["against"])
    print(f"{'':<12} this tree is {np.median(times['against']) / np.median(times['this']):.2f}x the images/s of "
          f"{other} (medians, alternating runs) and uses "
          f"{np.median(cpu['this']) / np.median(cpu['against']):.2f}x its CPU time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="images in the folder")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind; the best and median shown")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the images (default: a temp dir)")
    parser.add_argument("--skip-in-process", action="store_true", help="only the subprocess timing")
    parser.add_argument("--against", type=Path, default=None, metavar="SRC",
                        help="another digitlab source tree (its src folder), timed alternately with this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "digits"
        truth = make_folder(folder, args.n)
        print(f"start: {machine()}", flush=True)
        print(f"folder: {args.n} 64x64 PNGs (MNIST test digits, dark on white) in {folder}", flush=True)
        if args.against:
            compare(folder, truth, args.against, args.runs)
        else:
            times, acc, cpu = zip(*(end_to_end(folder, truth) for _ in range(args.runs)))
            report("end to end", args.n, list(times), acc[0], list(cpu))
        if not args.skip_in_process:
            import torch

            default_threads = torch.get_num_threads()
            times, acc = zip(*(in_process(folder, truth) for _ in range(args.runs)))
            report("in process", args.n, list(times), acc[0])
            print(f"torch threads after predict ran in process: {torch.get_num_threads()}", flush=True)
            torch.set_num_threads(default_threads)
        print(f"end:   {machine()}", flush=True)


if __name__ == "__main__":
    main()
