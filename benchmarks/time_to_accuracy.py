"""digitlab's `fast` preset, a fixed schedule, over several seeds, against the canonical PyTorch MNIST
example's time to 99% test accuracy (benchmarks/reference_example.py), measured in one run.

    python benchmarks/time_to_accuracy.py                         # 5 seeds of `fast` + the reference: the headline
    python benchmarks/time_to_accuracy.py --seeds 10              # more seeds
    python benchmarks/time_to_accuracy.py --skip-reference        # re-measure digitlab only
    python benchmarks/time_to_accuracy.py --skip-digitlab         # the reference only (about 13 min on 2 cores)
    python benchmarks/time_to_accuracy.py --threads 1             # both sides on one thread (busy machine)
    python benchmarks/time_to_accuracy.py --quick --skip-reference  # a smoke run: 2 seeds of 20 steps
    python benchmarks/time_to_accuracy.py -- --batch-size 256     # extra flags for `digitlab train`

digitlab: each seed is one `python -m digitlab train --preset fast --seed S` subprocess. `fast` trains a fixed
0.7-epoch one-cycle schedule (328 steps) and evaluates the test set once, at its end: it never looks at the test
set to decide anything. Reported per seed: the final test accuracy and the wall time from just before the
process is spawned to its exit (Python start-up, `import torch`, reading the data, training, the one
evaluation, writing the checkpoint and curves.png); then the mean and minimum accuracy and the mean time.

The reference: the example evaluates the test set after every epoch and stops at the first epoch that reaches
the target; its time is from spawn to the line reporting that epoch (what the example itself would call its
time to 99%; it watches the test set, as the original does). Each of --reference-seeds runs is one subprocess.

Headline ratio: digitlab's mean wall time to exit / the reference's mean time to the target. The runs are
sequential, so the two sides share the machine's load only as far as it stays the same.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
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
QUICK_STEPS = 20  # --quick: digitlab seeds stop after this many steps (a smoke test, not a measurement)


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


def measure_reference(seed: int, target: float, max_epochs: int, threads: int, echo: bool) -> dict:
    """One run of the example: seconds to the first epoch at `target` (None if never), and to exit."""
    cmd = [sys.executable, str(REFERENCE), "--target-accuracy", str(target), "--max-epochs", str(max_epochs),
           "--threads", str(threads), "--seed", str(seed)]
    print(f"reference: {' '.join(cmd[1:])}", flush=True)
    matches, exit_s, code = run_timed(cmd, REF_LINE, echo)
    hit = next(((t, m) for t, m in matches if float(m.group(2)) / 100 >= target), None)
    last = hit or (matches[-1] if matches else None)
    return {"seed": seed, "exit_s": exit_s, "code": code, "target_s": hit[0] if hit else None,
            "accuracy": float(last[1].group(2)) / 100 if last else None, "epochs": len(matches)}


def measure_digitlab(preset: str, seed: int, threads: int, extra: list[str], echo: bool) -> dict:
    """One `digitlab train --preset PRESET --seed SEED` from spawn to exit, and its final test accuracy."""
    from digitlab.runs import read_metrics

    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "digitlab", "train", "--preset", preset, "--seed", str(seed),
               "--threads", str(threads), "--no-progress", "--out", str(out), *extra]
        print(f"digitlab: {' '.join(cmd[1:])}", flush=True)
        _matches, exit_s, code = run_timed(cmd, DIGITLAB_LINE, echo)
        rows = read_metrics(out) if (out / "metrics.csv").is_file() else []
    last = rows[-1] if rows else {}
    return {"seed": seed, "exit_s": exit_s, "code": code, "accuracy": last.get("test_accuracy"),
            "epoch": last.get("epoch"), "step": last.get("step"), "evaluations": len(rows)}


def summarise_digitlab(runs: list[dict], target: float) -> dict:
    accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    return {"mean_accuracy": statistics.fmean(accuracies) if accuracies else None,
            "min_accuracy": min(accuracies) if accuracies else None,
            "mean_exit_s": statistics.fmean(r["exit_s"] for r in runs),
            "all_reached": len(accuracies) == len(runs) and min(accuracies) >= target}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to compare at")
    parser.add_argument("--preset", default="fast", help="digitlab preset (a fixed schedule)")
    parser.add_argument("--seeds", type=int, default=5, help="digitlab runs, seeds 0 .. N-1")
    parser.add_argument("--reference-seeds", type=int, default=1, help="reference runs, seeds 1 .. N")
    parser.add_argument("--reference-max-epochs", type=int, default=14, help="give up on the reference after this")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for both sides (0: torch's default); 1 is faster on a busy machine")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: 2 digitlab seeds of {QUICK_STEPS} steps, 1 reference epoch; no measurement")
    parser.add_argument("--skip-reference", action="store_true", help="measure digitlab only")
    parser.add_argument("--skip-digitlab", action="store_true", help="measure the reference only")
    parser.add_argument("--echo", action="store_true", help="show every line the children print")
    parser.add_argument("digitlab_args", nargs="*", help="extra `digitlab train` flags, after --")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.reference_seeds < 1:
        parser.error("--seeds and --reference-seeds must be at least 1")
    if args.quick:
        args.seeds, args.reference_seeds = min(args.seeds, 2), 1
        args.reference_max_epochs = 1
        args.digitlab_args = [*args.digitlab_args, "--max-steps", str(QUICK_STEPS)]
    return args


def report_digitlab(runs: list[dict], summary: dict, args: argparse.Namespace) -> None:
    print(f"\ndigitlab --preset {args.preset}, a fixed schedule (no test-set look before its end), "
          f"{len(runs)} seeds:")
    for r in runs:
        accuracy = f"{r['accuracy']:.2%}" if r["accuracy"] is not None else "none (no evaluation)"
        step = f"{r['step']:g}" if r["step"] is not None else "-"
        print(f"  seed {r['seed']}: test accuracy {accuracy} at step {step}, "
              f"{r['exit_s']:.1f}s from process start to exit (exit code {r['code']})")
    if summary["mean_accuracy"] is not None:
        print(f"  mean {summary['mean_accuracy']:.2%}, minimum {summary['min_accuracy']:.2%} "
              f"({'every seed reached' if summary['all_reached'] else 'NOT every seed reached'} {args.target:.1%}); "
              f"mean time {summary['mean_exit_s']:.1f}s")


def report_reference(runs: list[dict], args: argparse.Namespace) -> float | None:
    """Print the reference runs; return their mean time to the target if every run reached it."""
    print(f"\nreference example, time to its first epoch with test accuracy >= {args.target:.1%} "
          f"(it evaluates the test set after every epoch), {len(runs)} seed(s):")
    for r in runs:
        reached = f"{r['target_s']:.1f}s" if r["target_s"] is not None else "not reached"
        print(f"  seed {r['seed']}: {reached} (epoch {r['epochs']}, accuracy {r['accuracy']:.2%}); "
              f"process exit {r['exit_s']:.1f}s")
    times = [r["target_s"] for r in runs]
    return statistics.fmean(times) if all(t is not None for t in times) else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load_average()}" + (" (--quick: a smoke run, not a measurement)" if args.quick else ""),
          flush=True)
    refs = [] if args.skip_reference else [
        measure_reference(seed, args.target, args.reference_max_epochs, args.threads, args.echo)
        for seed in range(1, args.reference_seeds + 1)]
    digs = [] if args.skip_digitlab else [
        measure_digitlab(args.preset, seed, args.threads, args.digitlab_args, args.echo) for seed in range(args.seeds)]
    print(f"load average at the end: {load_average()}")
    ref_time = report_reference(refs, args) if refs else None
    summary = summarise_digitlab(digs, args.target) if digs else None
    if summary:
        report_digitlab(digs, summary, args)
    if summary and ref_time and summary["min_accuracy"] is not None:
        ratio = summary["mean_exit_s"] / ref_time
        print(f"\nratio digitlab mean wall time / reference time to {args.target:.1%}: {ratio:.3f} "
              f"(speed-up {1 / ratio:.1f}x); digitlab minimum accuracy {summary['min_accuracy']:.2%}")
    crashed = any(r["code"] != 0 for r in refs + digs)
    missed = not args.quick and any(r["target_s"] is None for r in refs)  # no time to compare with
    return 1 if crashed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
