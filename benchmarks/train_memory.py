"""Peak memory (resident set size) of a `digitlab train` process, by default the `best` recipe.

    python benchmarks/train_memory.py                                  # best, 100 steps + evaluation + checkpoint
    python benchmarks/train_memory.py -- --preset best --epochs 3      # any `digitlab train` flags after --

Training runs as a subprocess; its peak RSS is read with resource.getrusage(RUSAGE_CHILDREN).ru_maxrss
once it has exited, so the figure covers everything it did: loading the dataset, the training steps,
the test-set evaluation (with test-time augmentation for `best`) and writing the checkpoints.
The last lines the child printed are shown too, so the run's accuracy is reported with its memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARGS = ["--preset", "best", "--epochs", "1", "--max-steps", "100"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--limit-gb", type=float, default=1.5, help="fail (exit 1) above this peak RSS")
    parser.add_argument("train_args", nargs="*", help=f"`digitlab train` flags (default: {' '.join(DEFAULT_ARGS)})")
    args = parser.parse_args(argv)
    train_args = args.train_args or DEFAULT_ARGS
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        if "--out" not in train_args:
            train_args = [*train_args, "--out", str(Path(tmp) / "run")]
        cmd = [sys.executable, "-m", "digitlab", "train", "--no-progress", *train_args]
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("running: digitlab " + " ".join(cmd[3:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - t0
    for line in proc.stdout.splitlines()[-20:]:
        print(f"  | {line}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    print(f"peak RSS of the training process: {peak_gb:.2f} GB (limit {args.limit_gb} GB); exit {proc.returncode}, "
          f"{seconds:.0f}s")
    return 0 if proc.returncode == 0 and peak_gb <= args.limit_gb else 1


if __name__ == "__main__":
    sys.exit(main())
