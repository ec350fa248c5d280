"""Time to 99% MNIST test accuracy, measured honestly: the canonical PyTorch example (benchmarks/reference_example.py)
over several seeds against digitlab's `fast`, a fixed schedule, over ten seeds, in one run.

    python benchmarks/time_to_accuracy.py                      # 3 reference seeds + 10 `fast` seeds: the headline
    python benchmarks/time_to_accuracy.py --parallel 2         # 2 processes at a time, cores/2 threads each
    python benchmarks/time_to_accuracy.py --device cuda        # both sides on the GPU (records its name)
    python benchmarks/time_to_accuracy.py --skip-reference     # re-measure digitlab only (no ratio)
    python benchmarks/time_to_accuracy.py --quick              # smoke run: 2 seeds x 20 steps, 1 short reference epoch
    python benchmarks/time_to_accuracy.py --json out.json      # also write every figure as JSON
    python benchmarks/time_to_accuracy.py --reference-from ref.json  # the reference runs of an earlier --json
    python benchmarks/time_to_accuracy.py --reference-from ref.json --digitlab-from dig.json  # combine two runs
    python benchmarks/time_to_accuracy.py -- --batch-size 256  # extra flags for `digitlab train`

The reference: the example evaluates the test set after every epoch; a seed's time to 99% is from spawning its
process to the line reporting the first epoch at or above the target (the example's own way of counting, start-up
and data loading included). Reported per seed with the epoch it crossed in; the headline uses the MEAN over seeds,
not the luckiest one.

digitlab: each seed is one `python -m digitlab train --preset fast --seed S` process. `fast` is a fixed schedule
that evaluates once, at its end: nothing in it looks at the test set before that, and nothing is stopped on it.
Reported per seed: final test (and validation) accuracy and the wall time from spawning the process to its exit
(Python start-up, imports, data, training, the evaluation, writing the run folder). As airbench reports: the mean
accuracy (which must be >= the target), the minimum, and the mean time.

Headline: digitlab's mean wall time to exit / the reference's mean time to the target.

--parallel K runs K seeds at a time (of each side, one side after the other), each with cores/K torch threads
unless --threads says otherwise; every process's own wall time is still what is reported, so parallel runs make
both sides' figures slower, not faster. The output says which mode ran, the machine, its load before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "reference_example.py"
REF_LINE = re.compile(r"^Test set: epoch (\d+), .*Accuracy: ([\d.]+)%")
DIGITLAB_LINE = re.compile(r"^epoch [\d]+/\d+: .*\| test loss [\d.]+ acc ([\d.]+)%")
QUICK_STEPS = 20  # --quick: digitlab seeds stop after this many steps, reference epochs too (a smoke test)
_PRINT_LOCK = threading.Lock()


def say(text: str) -> None:
    with _PRINT_LOCK:
        print(text, flush=True)


def child_env() -> dict:
    """The children import this checkout's digitlab (src/ first on the path), unbuffered."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def run_timed(cmd: list[str], pattern: re.Pattern, echo: bool, label: str) -> tuple[list, float, int]:
    """Run cmd, timestamping each stdout line matching pattern; (matches, seconds to exit, return code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=child_env())
    matches, tail = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        tail = (tail + [line.rstrip()])[-5:]
        m = pattern.search(line)
        if m:
            matches.append((now, m))
        if echo or m:
            say(f"  [{label} {now:7.1f}s] {line.rstrip()}")
    code = proc.wait()
    if code != 0:
        say(f"  [{label}] exit code {code}; last lines:\n    " + "\n    ".join(tail))
    return matches, time.perf_counter() - t0, code


def measure_reference(seed: int, args: argparse.Namespace) -> dict:
    """One run of the example: seconds to the first epoch at the target (None if never), and to exit."""
    cmd = [sys.executable, str(REFERENCE), "--target-accuracy", str(args.target), "--max-epochs",
           str(args.reference_max_epochs), "--threads", str(args.threads), "--seed", str(seed)]
    if args.device == "cpu":
        cmd.append("--no-accel")
    if args.quick:
        cmd += ["--max-steps", str(QUICK_STEPS)]
    say(f"reference: {' '.join(cmd[1:])}")
    matches, exit_s, code = run_timed(cmd, REF_LINE, args.echo, f"ref seed {seed}")
    hit = next(((t, m) for t, m in matches if float(m.group(2)) / 100 >= args.target), None)
    return {"seed": seed, "exit_s": round(exit_s, 2), "code": code, "target_s": round(hit[0], 2) if hit else None,
            "epoch": int(hit[1].group(1)) if hit else None,
            "epoch_accuracies": [float(m.group(2)) / 100 for _t, m in matches]}


def measure_digitlab(seed: int, args: argparse.Namespace) -> dict:
    """One `digitlab train --preset PRESET --seed SEED` from spawn to exit, and its final accuracies."""
    from digitlab.runs import read_metrics

    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "digitlab", "train", "--preset", args.preset, "--seed", str(seed),
               "--threads", str(args.threads), "--device", args.device, "--no-progress", "--out", str(out),
               *args.digitlab_args]
        say(f"digitlab: {' '.join(cmd[1:])}")
        _matches, exit_s, code = run_timed(cmd, DIGITLAB_LINE, args.echo, f"fast seed {seed}")
        rows = read_metrics(out) if (out / "metrics.csv").is_file() else []
    last = rows[-1] if rows else {}
    return {"seed": seed, "exit_s": round(exit_s, 2), "code": code, "accuracy": last.get("test_accuracy"),
            "val_accuracy": last.get("val_accuracy"), "train_s": last.get("elapsed_s"), "step": last.get("step"),
            "evaluations": len(rows)}


def run_seeds(measure, seeds: list[int], args: argparse.Namespace) -> list[dict]:
    """measure(seed, args) for every seed, args.parallel at a time; results in seed order."""
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        return list(pool.map(lambda s: measure(s, args), seeds))


def summarise_digitlab(runs: list[dict], target: float) -> dict:
    accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    complete = len(accuracies) == len(runs)
    mean = statistics.fmean(accuracies) if complete else None
    return {"mean_accuracy": mean, "min_accuracy": min(accuracies) if complete else None,
            "sd_accuracy": statistics.stdev(accuracies) if complete and len(accuracies) > 1 else None,
            "mean_exit_s": statistics.fmean(r["exit_s"] for r in runs),
            "mean_reached": mean is not None and mean >= target,
            "seeds_at_target": sum(a >= target for a in accuracies)}


def summarise_reference(runs: list[dict]) -> dict:
    times = [r["target_s"] for r in runs]
    reached = all(t is not None for t in times)
    return {"mean_target_s": statistics.fmean(times) if reached and times else None, "all_reached": reached,
            "epochs": [r["epoch"] for r in runs]}


def machine_info(device: str) -> dict:
    import torch

    from digitlab.device import cpu_has_native_bf16

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "native_bf16": cpu_has_native_bf16(), "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to compare at")
    parser.add_argument("--preset", default="fast", help="digitlab preset (a fixed schedule)")
    parser.add_argument("--seeds", type=int, default=10, help="digitlab runs, seeds 0 .. N-1")
    parser.add_argument("--reference-seeds", type=int, default=3, help="reference runs, seeds 1 .. N")
    parser.add_argument("--reference-max-epochs", type=int, default=14, help="give up on the reference after this")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N) for both sides")
    parser.add_argument("--parallel", type=int, default=1, help="seeds run at a time, on each side")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0: cores / --parallel, or torch's default without it)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: 2 digitlab seeds and 1 reference epoch, {QUICK_STEPS} steps each")
    parser.add_argument("--skip-reference", action="store_true", help="measure digitlab only")
    parser.add_argument("--skip-digitlab", action="store_true", help="measure the reference only")
    parser.add_argument("--echo", action="store_true", help="show every line the children print")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--reference-from", default=None, metavar="JSON",
                        help="take the reference's runs from an earlier --json file instead of running them (the "
                             "table says so, with that run's load): on a busy machine the reference takes an hour")
    parser.add_argument("--digitlab-from", default=None, metavar="JSON",
                        help="likewise, digitlab's runs from an earlier --json file (to combine two runs' halves)")
    parser.add_argument("digitlab_args", nargs="*", help="extra `digitlab train` flags, after --")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.reference_seeds < 1 or args.parallel < 1:
        parser.error("--seeds, --reference-seeds and --parallel must be at least 1")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: this machine has no usable CUDA GPU (torch.cuda.is_available() is False)")
    if args.threads == 0 and args.parallel > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.parallel)
    if args.quick:
        args.seeds, args.reference_seeds, args.reference_max_epochs = min(args.seeds, 2), 1, 1
        args.digitlab_args = [*args.digitlab_args, "--max-steps", str(QUICK_STEPS)]
    return args


def pct(x: float | None) -> str:
    return f"{x:.2%}" if x is not None else "-"


def markdown_table(info: dict, loads: tuple[str, str], refs: list[dict], digs: list[dict], ref_sum: dict | None,
                   dig_sum: dict | None, ratio: float | None, args: argparse.Namespace,
                   earlier: dict | None = None, earlier_digitlab: dict | None = None) -> str:
    """The whole result as one markdown table: the setting rows, then one row per seed, then the summary."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    mode = (f"{args.parallel} processes at a time" if args.parallel > 1 else "one process at a time") + \
        f", {args.threads or 'torch default'} thread(s) each"
    if earlier and earlier_digitlab:
        mode = "nothing run here: both sides combined from the earlier runs named below"
    lines = ["| | seed | test accuracy | time |", "|---|---|---:|---:|",
             f"| machine | | {info['cpu']}, {info['cores']} cores{gpu}; torch {info['torch']}, "
             f"native bf16 {'yes' if info['native_bf16'] else 'no'} | |",
             f"| setting | | device {args.device}; {mode}" + ("; --quick (smoke run, not a measurement)"
                                                              if args.quick else "") + " | |",
             f"| load average (1/5/15 min) | | before {loads[0]}; after {loads[1]} | |"]
    if earlier:
        lines.append(f"| reference from an earlier run | | {args.reference_from}: load before "
                     f"{earlier['load_before']}; after {earlier['load_after']}; {earlier['parallel']} at a time, "
                     f"{earlier['threads']} thread(s) each | |")
    if earlier_digitlab:
        e = earlier_digitlab
        lines.append(f"| digitlab from an earlier run | | {args.digitlab_from}: load before {e['load_before']}; after "
                     f"{e['load_after']}; {e['parallel']} at a time, {e['threads']} thread(s) each | |")
    for r in refs:
        curve = ", ".join(f"{a:.2%}" for a in r["epoch_accuracies"])
        reached = f"{r['target_s']:.1f} s to {args.target:.0%}" if r["target_s"] is not None else "not reached"
        lines.append(f"| reference example | {r['seed']} | epoch {r['epoch'] or '-'} ({curve}) | {reached} |")
    if ref_sum:
        mean = f"{ref_sum['mean_target_s']:.1f} s" if ref_sum["mean_target_s"] is not None else "not every seed"
        lines.append(f"| **reference, mean time to {args.target:.0%}** | | epochs {ref_sum['epochs']} | **{mean}** |")
    for r in digs:
        val = f" (val {r['val_accuracy']:.2%})" if r.get("val_accuracy") is not None else ""
        lines.append(f"| digitlab `{args.preset}`, process start to exit | {r['seed']} | {pct(r['accuracy'])}{val} | "
                     f"{r['exit_s']:.1f} s |")
    if dig_sum:
        lines.append(f"| **digitlab, mean (min)** | {len(digs)} seeds | **{pct(dig_sum['mean_accuracy'])} "
                     f"({pct(dig_sum['min_accuracy'])})**, {dig_sum['seeds_at_target']} of {len(digs)} seeds "
                     f">= {args.target:.0%} | **{dig_sum['mean_exit_s']:.1f} s** |")
    if ratio is not None:
        lines.append(f"| **ratio**: digitlab mean wall / reference mean time to {args.target:.0%} | | | "
                     f"**{ratio:.3f}** ({1 / ratio:.1f}x) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    info = machine_info(args.device)
    load_before = load_average()
    say(f"machine: {info}; load average {load_before}; parallel {args.parallel}, threads {args.threads or 'default'}")
    earlier = json.loads(Path(args.reference_from).read_text()) if args.reference_from else None
    if earlier:
        refs = earlier["reference"]
        say(f"reference: {len(refs)} runs taken from {args.reference_from} (load {earlier['load_before']} -> "
            f"{earlier['load_after']}, {earlier['parallel']} at a time, {earlier['threads']} thread(s) each)")
    else:
        refs = [] if args.skip_reference else run_seeds(measure_reference,
                                                        list(range(1, args.reference_seeds + 1)), args)
    earlier_digitlab = json.loads(Path(args.digitlab_from).read_text()) if args.digitlab_from else None
    if earlier_digitlab:
        digs = earlier_digitlab["digitlab"]
        say(f"digitlab: {len(digs)} runs taken from {args.digitlab_from} (load {earlier_digitlab['load_before']} -> "
            f"{earlier_digitlab['load_after']}, {earlier_digitlab['parallel']} at a time, "
            f"{earlier_digitlab['threads']} thread(s) each)")
    else:
        digs = [] if args.skip_digitlab else run_seeds(measure_digitlab, list(range(args.seeds)), args)
    load_after = load_average()
    ref_sum = summarise_reference(refs) if refs else None
    dig_sum = summarise_digitlab(digs, args.target) if digs else None
    ratio = None
    if ref_sum and dig_sum and ref_sum["mean_target_s"] and dig_sum["mean_accuracy"] is not None:
        ratio = dig_sum["mean_exit_s"] / ref_sum["mean_target_s"]
    print()
    print(markdown_table(info, (load_before, load_after), refs, digs, ref_sum, dig_sum, ratio, args, earlier,
                         earlier_digitlab))
    if dig_sum and not args.quick and not dig_sum["mean_reached"]:
        print(f"\nNOTE: digitlab's mean accuracy is below the target {args.target:.1%}: the ratio does not count")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "device": args.device, "parallel": args.parallel, "threads": args.threads,
             "quick": args.quick, "load_before": load_before, "load_after": load_after, "reference": refs,
             "reference_summary": ref_sum, "digitlab": digs, "digitlab_summary": dig_sum, "ratio": ratio,
             "preset": args.preset, "digitlab_args": args.digitlab_args, "reference_from": args.reference_from},
            indent=2))
    crashed = any(r["code"] != 0 for r in refs + digs)
    missed = not args.quick and ref_sum is not None and not ref_sum["all_reached"]  # no time to compare with
    return 1 if crashed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
