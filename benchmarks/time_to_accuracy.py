"""Wall-clock time from process start to 99% MNIST test accuracy: digitlab's `fast` preset against
the canonical PyTorch MNIST example (benchmarks/reference_example.py), measured in one run.

    python benchmarks/time_to_accuracy.py                         # both, side by side: the headline
    python benchmarks/time_to_accuracy.py --skip-reference        # re-measure digitlab only
    python benchmarks/time_to_accuracy.py --skip-digitlab         # the reference only (about 13 min on 2 cores)
    python benchmarks/time_to_accuracy.py --threads 1             # both sides on one thread (busy machine)
    python benchmarks/time_to_accuracy.py -- --batch-size 256     # extra flags for `digitlab train`

Each side runs as a subprocess, one after the other, and its clock starts just before the process
is spawned, so Python start-up, `import torch` and reading the data count. The time to the target is
when the line reporting the evaluation that reached it is read from the child's stdout; the time to
exit adds what the child does afterwards (digitlab writes its checkpoint and curves.png).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "reference_example.py"
REF_LINE = re.compile(r"^Test set: epoch (\d+), .*Accuracy: ([\d.]+)%")
DIGITLAB_LINE = re.compile(r"^epoch [\d]+/\d+: .*\| test loss [\d.]+ acc ([\d.]+)%")


def run_timed(cmd: list[str], pattern: re.Pattern, echo: bool) -> tuple[list[tuple[float, re.Match]], float, int]:
    """Run cmd, timestamping each stdout line matching pattern; (matches, seconds to exit, return code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    matches = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        m = pattern.search(line)
        if m:
            matches.append((now, m))
        if echo or m:
            print(f"  [{now:7.1f}s] {line.rstrip()}", flush=True)
    code = proc.wait()
    return matches, time.perf_counter() - t0, code


def measure_reference(target: float, max_epochs: int, threads: int, echo: bool) -> dict:
    cmd = [sys.executable, str(REFERENCE), "--target-accuracy", str(target), "--max-epochs", str(max_epochs),
           "--threads", str(threads)]
    print(f"reference: {' '.join(cmd[1:])}", flush=True)
    matches, exit_s, code = run_timed(cmd, REF_LINE, echo)
    hit = next(((t, m) for t, m in matches if float(m.group(2)) / 100 >= target), None)
    last = hit or (matches[-1] if matches else None)
    return {"exit_s": exit_s, "code": code, "target_s": hit[0] if hit else None,
            "accuracy": float(last[1].group(2)) / 100 if last else None, "epochs": len(matches)}


def measure_digitlab(preset: str, target: float, threads: int, extra: list[str], echo: bool) -> dict:
    from digitlab.runs import read_metrics

    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "digitlab", "train", "--preset", preset, "--target-accuracy", str(target),
               "--threads", str(threads), "--no-progress", "--out", str(out), *extra]
        print(f"digitlab: {' '.join(cmd[1:])}", flush=True)
        matches, exit_s, code = run_timed(cmd, DIGITLAB_LINE, echo)
        rows = read_metrics(out) if (out / "metrics.csv").is_file() else []
    last = rows[-1] if rows else {}
    reached = bool(last) and last["test_accuracy"] >= target
    return {"exit_s": exit_s, "code": code, "target_s": matches[-1][0] if reached and matches else None,
            "accuracy": last.get("test_accuracy"), "epochs": last.get("epoch"), "steps": last.get("step"),
            "evaluations": len(rows)}


def fmt(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach")
    parser.add_argument("--preset", default="fast", help="digitlab preset")
    parser.add_argument("--reference-max-epochs", type=int, default=14, help="give up on the reference after this")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for both sides (0: torch's default); 1 is faster on a busy machine")
    parser.add_argument("--skip-reference", action="store_true", help="measure digitlab only")
    parser.add_argument("--skip-digitlab", action="store_true", help="measure the reference only")
    parser.add_argument("--echo", action="store_true", help="show every line the children print")
    parser.add_argument("digitlab_args", nargs="*", help="extra `digitlab train` flags, after --")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    ref = dig = None
    if not args.skip_reference:
        ref = measure_reference(args.target, args.reference_max_epochs, args.threads, args.echo)
        print(f"reference example: {fmt(ref['target_s'])} to {args.target:.1%} (epoch {ref['epochs']}, "
              f"accuracy {ref['accuracy']:.2%}); process exit {ref['exit_s']:.1f}s", flush=True)
    if not args.skip_digitlab:
        dig = measure_digitlab(args.preset, args.target, args.threads, args.digitlab_args, args.echo)
        print(f"digitlab --preset {args.preset}: {fmt(dig['target_s'])} to {args.target:.1%} "
              f"(epoch {dig['epochs']}, step {dig['steps']:g}, {dig['evaluations']} evaluations, accuracy "
              f"{dig['accuracy']:.2%}); process exit {dig['exit_s']:.1f}s", flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if ref and dig and ref["target_s"] and dig["target_s"]:
        print(f"ratio digitlab / reference: {dig['target_s'] / ref['target_s']:.3f} "
              f"(speed-up {ref['target_s'] / dig['target_s']:.1f}x)")
    failed = any(r is not None and (r["target_s"] is None or r["code"] != 0) for r in (ref, dig))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
