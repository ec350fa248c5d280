"""Training beside another job: `digitlab train` on an idle machine and with one core kept busy by a separate
process, for each CPU thread policy, side by side in one run.

    python benchmarks/contention.py                        # fast and default (1 epoch), 3 repeats: the table
    python benchmarks/contention.py --presets fast --repeats 5
    python benchmarks/contention.py --default-epochs 2     # the `default` preset's own 2 epochs (twice as long)
    python benchmarks/contention.py --default-steps 150    # `default` cut to 150 steps (a third of its epoch)
    python benchmarks/contention.py --variants torch,threads1 --pin   # some policies; the busy loop on one CPU
    python benchmarks/contention.py --json out.json        # also every run's figures as JSON
    python benchmarks/contention.py --table-from out.json  # the table of an earlier (or interrupted) --json run

Why: torch's default is one OpenMP thread per core, each op split evenly between them. When another job holds a
core (a second training, a test run, a sweep's other trial), the thread sharing that core runs at half speed, the
others wait for it at the end of every op, and libgomp's waiting threads spin on the CPU the other job needs.

The variants (policies), each one `python -m digitlab train --preset P --seed 0 --no-progress` process:

    torch      torch's default: as many threads as torch picks (its count of cores; `--threads N` is passed so
               that digitlab's own choice stays out of it) and libgomp's default wait (spin ~3 ms, then sleep);
               torch is imported before digitlab, so nothing digitlab sets before its import reaches libgomp
    passive    the same threads with OMP_WAIT_POLICY=PASSIVE in the environment (waiting threads sleep at once)
    threads1   `--threads 1`
    digitlab   no thread flag and no OMP_WAIT_POLICY: whatever digitlab does with `threads` 0, its default
    auto-spin  like `digitlab`, with torch imported first (libgomp's default wait): the thread choice alone

The busy job is a pure-Python busy loop (`while True: pass`, ending with this script), started before each busy
block and stopped after it (with --pin, pinned to the last CPU this process may use). Each repeat runs every
preset in both conditions with the variants in a rotated order, so drifting load from elsewhere on a shared
machine hits them all alike; before each block the script waits (up to --quiet-wait s) for the machine's other
work to settle.

Reported per run and as medians: the training time digitlab prints (`test accuracy: ... after N epochs, X s`,
which starts after the threads are set, the data loaded and the model built), the process's wall time (Python
start-up and imports included), the test accuracy, the 1-minute load average just before the run and the CPUs
left idle by everything else then (/proc/stat over 0.5 s, the busy loop included). Ratios are against `torch`
in the same condition, from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
FINAL_LINE = re.compile(r"^test accuracy: ([\d.]+)% \(loss [\d.]+\) after ([\d.]+) epochs, ([\d.]+)s$", re.M)
TORCH_FIRST = "import sys, runpy, torch; sys.argv[0] = 'digitlab'; runpy.run_module('digitlab', run_name='__main__')"
VARIANTS = {  # name: (torch imported first, OMP_WAIT_POLICY or None, --threads: "n" torch's count, "1", None)
    "torch": (True, None, "n"),
    "passive": (False, "PASSIVE", "n"),
    "threads1": (False, None, "1"),
    "digitlab": (False, None, None),
    "auto-spin": (True, None, None),
}
LABELS = {"torch": "torch default (N threads, spinning)", "passive": "OMP_WAIT_POLICY=PASSIVE, N threads",
          "threads1": "--threads 1", "digitlab": "digitlab default (threads 0)",
          "auto-spin": "digitlab's thread choice, spinning"}


def torch_threads() -> int:
    """torch's own default thread count in a fresh process with this environment (OMP_NUM_THREADS included)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def free_cpus(window_s: float = 0.5) -> float:
    """CPUs of this process's affinity left idle over `window_s`, from /proc/stat (as digitlab.device reads it)."""
    def ticks() -> dict[str, tuple[int, int]]:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name in cpus:
                v = [int(x) for x in fields[:8]]
                out[name] = (v[3] + v[4], sum(v))
        return out

    before = ticks()
    time.sleep(window_s)
    after = ticks()
    return sum((after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in after if c in before)


def wait_quiet(cores: int, limit_s: float) -> float:
    """Wait until other work leaves nearly every CPU idle (at most `limit_s`); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and free_cpus(1.0) < cores - 0.3:
        time.sleep(4)
    return time.monotonic() - t0


def start_busy(pin: bool) -> subprocess.Popen:
    """The other job: one pure-Python busy loop (one core's worth of demand), pinned to the last CPU with `pin`."""
    # `while True: pass`, except that it ends with this script (its parent changes), even one killed outright
    loop = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    busy = subprocess.Popen([sys.executable, "-c", loop])
    if pin:
        os.sched_setaffinity(busy.pid, {max(os.sched_getaffinity(0))})
    time.sleep(0.5)
    return busy


def run_one(preset: str, variant: str, n_threads: int, limits: list[str], out: Path, extra: list[str]) -> dict:
    """One training process; its figures."""
    torch_first, policy, threads = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, "-c", TORCH_FIRST] if torch_first else [sys.executable, "-m", "digitlab"]
    cmd += ["train", "--preset", preset, "--seed", "0", "--no-progress", "--out", str(out), *limits, *extra]
    if threads:
        cmd += ["--threads", str(n_threads) if threads == "n" else threads]
    load = os.getloadavg()[0]
    free = free_cpus()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    match = FINAL_LINE.search(proc.stdout)
    if proc.returncode or not match:
        raise SystemExit(f"{variant} {preset} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return {"preset": preset, "variant": variant, "train_s": float(match.group(3)), "wall_s": round(wall, 2),
            "accuracy": float(match.group(1)), "epochs": float(match.group(2)), "load1": round(load, 2),
            "free_cpus": round(free, 2)}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def table(runs: list[dict], variants: list[str], presets: list[str], n_threads: int) -> str:
    """The markdown table: medians per preset, condition and variant, with ratios against `torch`."""
    lines = ["| preset | busy loop | policy | training s (median) | x torch | process wall s | test accuracy "
             "| load avg before (1-min) | idle CPUs before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for preset in presets:
        for cond in ("idle", "busy"):
            base = [r for r in runs if r["preset"] == preset and r["cond"] == cond and r["variant"] == "torch"]
            for variant in variants:
                rows = [r for r in runs if r["preset"] == preset and r["cond"] == cond and r["variant"] == variant]
                if not rows:
                    continue
                ratio = f"{median(rows, 'train_s') / median(base, 'train_s'):.2f}" if base else ""
                accs = sorted({f"{r['accuracy']:.2f}%" for r in rows})
                loads = [r["load1"] for r in rows]
                frees = [r["free_cpus"] for r in rows]
                label = LABELS[variant].replace("N threads", f"{n_threads} threads")
                each = ", ".join(f"{r['train_s']:.1f}" for r in rows)
                lines.append(f"| {preset} | {'no' if cond == 'idle' else 'yes'} | {label} "
                             f"| {median(rows, 'train_s'):.1f} ({each}) "
                             f"| {ratio} | {median(rows, 'wall_s'):.1f} | {' / '.join(accs)} "
                             f"| {min(loads):.2f}-{max(loads):.2f} | {min(frees):.1f}-{max(frees):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", default="fast,default", help="comma-separated presets")
    parser.add_argument("--default-epochs", default="1", help="--epochs for the `default` preset ('' keeps its 2)")
    parser.add_argument("--default-steps", default="", help="--max-steps for the `default` preset ('' for none)")
    parser.add_argument("--variants", default="torch,passive,threads1,digitlab",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both")
    parser.add_argument("--pin", action="store_true", help="pin the busy loop to the last CPU")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="at most this long waiting for quiet, s")
    parser.add_argument("--json", type=Path, help="also write every run as JSON here (after each run)")
    parser.add_argument("--table-from", type=Path, help="only print the table of an earlier --json run (or its part)")
    parser.add_argument("extra", nargs="*", help="more flags for `digitlab train` (after --)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill`: stop the busy loop and the training too
    presets, variants = args.presets.split(","), args.variants.split(",")
    conditions = args.conditions.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        ran = [v for v in VARIANTS if any(r["variant"] == v for r in saved["runs"])]
        done = [p for p in ("fast", "default", *presets) if any(r["preset"] == p for r in saved["runs"])]
        print(table(saved["runs"], ran, list(dict.fromkeys(done)), saved["torch_threads"]))
        return 0
    n_threads = torch_threads()
    cores = len(os.sched_getaffinity(0))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {cores} in this process's affinity; torch's default "
          f"{n_threads} threads; commit {commit}; busy loop {'pinned to the last CPU' if args.pin else 'unpinned'}",
          flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for preset in presets:
                limits = []
                if preset == "default" and args.default_epochs:
                    limits += ["--epochs", args.default_epochs]
                if preset == "default" and args.default_steps:
                    limits += ["--max-steps", args.default_steps]
                conds = conditions if rep % 2 == 0 else conditions[::-1]
                for cond in conds:
                    waited = wait_quiet(cores, args.quiet_wait)
                    busy = start_busy(args.pin) if cond == "busy" else None
                    try:
                        shift = rep % len(variants)
                        for variant in variants[shift:] + variants[:shift]:
                            out = Path(tmp) / f"{preset}-{cond}-{variant}-{rep}"
                            row = run_one(preset, variant, n_threads, limits, out, args.extra)
                            row.update(cond=cond, repeat=rep)
                            runs.append(row)
                            print(f"repeat {rep} {preset:8} {cond:5} {variant:9} training {row['train_s']:6.1f} s  "
                                  f"wall {row['wall_s']:6.1f} s  acc {row['accuracy']:.2f}%  load {row['load1']:.2f}"
                                  f"  idle CPUs {row['free_cpus']:.1f}  (waited {waited:.0f} s for quiet)",
                                  flush=True)
                            waited = 0.0
                            if args.json:  # after each run, so that a run cut short still leaves its figures
                                args.json.write_text(json.dumps({"machine": cpu_name(), "commit": commit,
                                                                 "torch_threads": n_threads, "runs": runs}, indent=1))
                    finally:
                        if busy:
                            busy.kill()
                            busy.wait()
    epochs_note = f", `default` with --epochs {args.default_epochs}" if args.default_epochs else ""
    epochs_note += f" --max-steps {args.default_steps}" if args.default_steps else ""
    print(f"\n{args.repeats} repeats{epochs_note}; medians, each repeat's figures in brackets; "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")
    print(table(runs, variants, presets, n_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
