"""The GPU measurements of `fast`, `best` and `best-fashion` in one bounded run (about 8.5 minutes on one H200):
run it once on a GPU machine.

    bash benchmarks/gpu_session.sh                 # on the GPU machine; $OUT collects the results
    python benchmarks/gpu_session.py --device cpu --quick --out /tmp/gpu_out   # the same machinery, tiny, on a CPU

Phase 1, alone on the machine (nothing else shares the GPU while it is timed): time to 99% test accuracy,
benchmarks/time_to_accuracy.py with the reference example over 3 seeds and `fast` over 10 seeds on the GPU,
--parallel 3 (3 processes at a time for each side, cores/3 threads each; the output says so).

Phase 2, all at once on the one GPU: `best` with one-cycle schedules (--best-epochs, default 6 7 10: two within
half of the old 15, one at two thirds) over 3 seeds each, and `best-fashion` with its own 30-epoch schedule over 3
seeds, as it is and with random erasing added (augment flip+shift+erase). Every run holds out 5,000 validation
images and selects on them (--val-size 5000 --no-fixed-schedule), though the presets now train on all 60,000.
Their epoch times are NOT single-run speeds (a dozen processes share the GPU); the accuracies are what they measure. Runs still going at the deadline are stopped and reported with the epochs they finished.

Phase 3, evaluation of the best checkpoints (selected on validation by the runs themselves):
- for each run: validation and test accuracy with the preset's shift TTA (what the run reports) and, for
  Fashion-MNIST, with horizontal-flip TTA added (the shift views of the image and of its mirror, averaged);
- for each schedule: the ensemble of its 3 seeds (averaged logits), validation and test;
- the choice, made on VALIDATION only: the shortest `best` schedule whose mean validation accuracy is within
  --val-tolerance of the highest mean validation accuracy among the schedules; for `best-fashion`, the variant
  (erasing or not, flip TTA or not) with the highest mean validation accuracy. The test accuracies of the choices
  are then reported.

Everything lands in --out (default $OUT): session.log is written by the .sh wrapper; summary.json and summary.md
here; time_to_accuracy.json; logs.tar.gz holds every run's log, metrics.csv and config.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
T0 = time.monotonic()
FASHION_DIRS = ("shared/data", ".data", "../shared/data", "/usr/share/datasets")  # parents of fashion-mnist/
FASHION_VARIANTS = {"best-fashion": [], "best-fashion-erase": ["--augment", "flip+shift+erase"]}


def log(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def child_env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def find_fashion(explicit: str | None) -> Path | None:
    """The folder holding fashion-mnist/ (the four IDX files), searched in FASHION_DIRS, or None."""
    candidates = [Path(explicit)] if explicit else [ROOT / d for d in FASHION_DIRS]  # ROOT / "/x" is "/x"
    for parent in candidates:
        folder = parent / "fashion-mnist"
        if folder.is_dir() and len(list(folder.glob("*-ubyte*"))) >= 4:
            return parent
    return None


def phase_time_to_accuracy(args: argparse.Namespace) -> dict | None:
    """benchmarks/time_to_accuracy.py on the device, alone; its JSON, or None if it failed or ran out of time."""
    out_json = args.out / "time_to_accuracy.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--device", args.device,
           "--parallel", str(args.tta_parallel), "--seeds", str(args.fast_seeds), "--reference-seeds",
           str(args.reference_seeds), "--json", str(out_json)] + (["--quick"] if args.quick else [])
    log("phase 1: " + " ".join(cmd[1:]))
    try:
        code = subprocess.run(cmd, cwd=ROOT, env=child_env(), timeout=args.tta_budget).returncode
    except subprocess.TimeoutExpired:
        log(f"phase 1: stopped after its budget of {args.tta_budget} s")
        return None
    log(f"phase 1 exit code {code}")
    return json.loads(out_json.read_text()) if out_json.is_file() else None


def launch(name: str, preset: str, seed: int, extra: list[str], args: argparse.Namespace) -> dict:
    """Start one `digitlab train` in the background, logging to runs/<name>/../<name>.log."""
    run_dir = args.runs / name
    log_path = args.runs / f"{name}.log"
    cmd = [sys.executable, "-m", "digitlab", "train", "--preset", preset, "--seed", str(seed), "--device",
           args.device, "--threads", str(args.run_threads), "--no-progress", "--force", "--out", str(run_dir),
           "--val-size", "5000", "--no-fixed-schedule", *extra]  # tuning runs hold out and select on validation
    if args.quick:  # a net 16x cheaper than the presets', so that a CPU gets through the TTA evaluations
        cmd += ["--max-steps", "5", "--eval-batch-size", "500", "--model-args", "width=4,depth=1"]
    handle = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=handle, stderr=subprocess.STDOUT)
    return {"name": name, "preset": preset, "seed": seed, "extra": extra, "dir": run_dir, "log": log_path,
            "proc": proc, "handle": handle, "start": time.monotonic()}


def phase_trainings(args: argparse.Namespace, fashion_parent: Path | None) -> list[dict]:
    """Start every `best` and `best-fashion` run at once; wait for them up to the deadline."""
    jobs = []
    if fashion_parent is not None:  # the longest runs first
        for variant, extra in FASHION_VARIANTS.items():
            for seed in range(args.seeds):
                jobs.append(launch(f"{variant}-s{seed}", "best-fashion", seed,
                                   ["--data-dir", str(fashion_parent), *extra], args))
    else:
        log("phase 2: no fashion-mnist folder found (looked in --fashion-dir or " + ", ".join(FASHION_DIRS)
            + "): best-fashion skipped")
    for epochs in args.best_epochs:
        for seed in range(args.seeds):
            jobs.append(launch(f"best-e{epochs}-s{seed}", "best", seed, ["--epochs", str(epochs)], args))
    log(f"phase 2: {len(jobs)} trainings started: " + ", ".join(j["name"] for j in jobs))
    deadline = T0 + args.budget - args.eval_reserve
    while any(j["proc"].poll() is None for j in jobs) and time.monotonic() < deadline:
        time.sleep(2)  # a bounded poll of child processes, not a stand-in for an event
    for j in jobs:
        j["timed_out"] = j["proc"].poll() is None
        if j["timed_out"]:
            j["proc"].terminate()
            try:
                j["proc"].wait(timeout=20)
            except subprocess.TimeoutExpired:
                j["proc"].kill()
                j["proc"].wait()
        j["handle"].close()
        j["code"] = j["proc"].returncode
        j["wall_s"] = round(time.monotonic() - j["start"], 1)
        log(f"{j['name']}: exit {j['code']}{' (stopped at the deadline)' if j['timed_out'] else ''}, {j['wall_s']} s")
    return jobs


def run_record(job: dict) -> dict:
    """What a run's metrics.csv says: epochs done, final and best-on-validation rows."""
    from digitlab.runs import read_metrics

    rows = read_metrics(job["dir"]) if (job["dir"] / "metrics.csv").is_file() else []
    record = {k: job[k] for k in ("name", "preset", "seed", "extra", "code", "timed_out", "wall_s")}
    record["epochs_done"] = len(rows)
    if rows:
        best = max(rows, key=lambda r: r["val_accuracy"])  # first maximum, as the run's own best checkpoint
        record.update(final_val=rows[-1]["val_accuracy"], final_test=rows[-1]["test_accuracy"],
                      best_epoch=best["epoch"], best_val=best["val_accuracy"], best_test=best["test_accuracy"],
                      train_s=rows[-1]["elapsed_s"], curve_val=[r["val_accuracy"] for r in rows],
                      curve_test=[r["test_accuracy"] for r in rows])
    return record


def logits_for(loaded, images, device: str, flip: bool):
    """Shift-TTA logits (the presets' TTA), over the mirrored images too when flip."""
    from digitlab.evaluation import predict_logits

    return predict_logits(loaded.model.to(device), images, loaded.normalization, 500, device, tta=True, mirror=flip)


def phase_evaluate(jobs: list[dict], args: argparse.Namespace, fashion_parent: Path | None) -> dict:
    """Per-run and per-schedule (3-seed ensemble) accuracies on validation and test, with and without flip TTA."""
    import torch

    from digitlab.runs import load_run
    from digitlab.data import load_dataset
    from digitlab.presets import VAL_SIZE
    from digitlab.split import stratified_split

    device = args.device
    if device == "cpu":  # a smoke run on a shared CPU: two threads waiting on each other are many times slower
        torch.set_num_threads(args.run_threads)
    groups: dict[str, list[dict]] = {}
    for j in jobs:
        if (j["dir"] / "best.safetensors").is_file():
            key = j["name"].rsplit("-s", 1)[0]  # best-e6, best-fashion, best-fashion-erase
            groups.setdefault(key, []).append(j)
    results = {}
    for key, members in groups.items():
        fashion = key.startswith("best-fashion")
        ds = load_dataset("fashion-mnist" if fashion else "mnist", fashion_parent if fashion else None, progress=False)
        _train_idx, val_idx = stratified_split(ds.train_labels, VAL_SIZE)
        sets = {"val": (ds.train_images[val_idx], ds.train_labels[val_idx]), "test": (ds.test_images, ds.test_labels)}
        for flip in ([False, True] if fashion else [False]):
            label = f"{key}{' +flip TTA' if flip else ''}"
            summed = {name: None for name in sets}
            per_seed = []
            for j in members:
                loaded = load_run(j["dir"], "best")
                accs = {}
                for name, (x, y) in sets.items():
                    logits = logits_for(loaded, x, device, flip)
                    accs[name] = (logits.argmax(1) == y).float().mean().item()
                    summed[name] = logits.softmax(1) if summed[name] is None else summed[name] + logits.softmax(1)
                per_seed.append({"seed": j["seed"], **accs})
            ensemble = {name: (summed[name].argmax(1) == y).float().mean().item() for name, (_x, y) in sets.items()}
            results[label] = {"per_seed": per_seed, "mean_val": statistics.fmean(r["val"] for r in per_seed),
                              "mean_test": statistics.fmean(r["test"] for r in per_seed),
                              "min_test": min(r["test"] for r in per_seed), "ensemble": ensemble,
                              "seeds": len(per_seed)}
            log(f"eval {label}: per seed {per_seed}; ensemble {ensemble}")
            del summed
            torch.cuda.empty_cache() if device.startswith("cuda") else None
    return results


def choose(evals: dict, args: argparse.Namespace) -> dict:
    """The choices, on validation only: the shortest best schedule within tolerance of the top, flip or not."""
    chosen = {}
    schedules = {int(k.split("-e")[1]): v for k, v in evals.items() if k.startswith("best-e")}
    if schedules:
        top = max(v["mean_val"] for v in schedules.values())
        epochs = min(e for e, v in schedules.items() if v["mean_val"] >= top - args.val_tolerance)
        pick = schedules[epochs]
        chosen["best"] = {"epochs": epochs, "rule": f"shortest schedule with mean val >= {top:.4%} - "
                          f"{args.val_tolerance:.2%}", "mean_val": pick["mean_val"], "mean_test": pick["mean_test"],
                          "min_test": pick["min_test"], "test_per_seed": [r["test"] for r in pick["per_seed"]]}
    fashion = {k: v for k, v in evals.items() if k.startswith("best-fashion")}
    if fashion:
        label = max(fashion, key=lambda k: fashion[k]["mean_val"])
        pick = fashion[label]
        chosen["best-fashion"] = {"variant": label, "rule": "highest mean val among the variants",
                                  "mean_val": pick["mean_val"], "mean_test": pick["mean_test"],
                                  "min_test": pick["min_test"], "test_per_seed": [r["test"] for r in pick["per_seed"]]}
    return chosen


def write_markdown(summary: dict, path: Path) -> None:
    lines = [f"# GPU session ({summary['machine']})", ""]
    tta = summary.get("time_to_accuracy")
    if tta:
        lines += ["## Time to 99% (phase 1, alone on the machine)", "",
                  f"ratio {tta.get('ratio')}; reference {tta.get('reference_summary')}; "
                  f"digitlab {tta.get('digitlab_summary')}", ""]
    lines += ["## Trainings (phase 2, all sharing the GPU: epoch times are not single-run speeds)", "",
              "| run | epochs done | best epoch (val) | best val | its test | final val | final test | train s "
              "| wall s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["runs"]:
        if "best_val" in r:
            lines.append(f"| {r['name']} | {r['epochs_done']} | {r['best_epoch']} | {r['best_val']:.2%} | "
                         f"{r['best_test']:.2%} | {r['final_val']:.2%} | {r['final_test']:.2%} | {r['train_s']} | "
                         f"{r['wall_s']} |")
        else:
            lines.append(f"| {r['name']} | 0 | - | - | - | - | - | - | {r['wall_s']} |")
    lines += ["", "## Best checkpoints re-evaluated (shift TTA; flip TTA where named)", "",
              "| what | seeds | mean val | mean test | min test | 3-seed ensemble val / test |",
              "|---|---:|---:|---:|---:|---|"]
    for label, v in summary["evaluations"].items():
        lines.append(f"| {label} | {v['seeds']} | {v['mean_val']:.2%} | {v['mean_test']:.2%} | {v['min_test']:.2%} | "
                     f"{v['ensemble']['val']:.2%} / {v['ensemble']['test']:.2%} |")
    lines += ["", "## Chosen on validation", "", "```", json.dumps(summary["chosen"], indent=2), "```"]
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")), help="results folder")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the machinery, measures nothing")
    parser.add_argument("--budget", type=float, default=510, help="seconds for the whole session")
    parser.add_argument("--tta-budget", type=float, default=170, help="seconds for phase 1 at most")
    parser.add_argument("--eval-reserve", type=float, default=50, help="seconds kept for phase 3 and the summary")
    parser.add_argument("--tta-parallel", type=int, default=3, help="phase 1 processes at a time")
    parser.add_argument("--fast-seeds", type=int, default=10)
    parser.add_argument("--reference-seeds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per `best` schedule and for `best-fashion`")
    parser.add_argument("--best-epochs", type=int, nargs="+", default=[6, 7, 10], help="`best` schedules to try")
    parser.add_argument("--val-tolerance", type=float, default=0.0005,
                        help="a shorter schedule is chosen if its mean val is within this of the top one")
    parser.add_argument("--run-threads", type=int, default=1, help="torch CPU threads per training process")
    parser.add_argument("--fashion-dir", default=None, help="folder holding fashion-mnist/ (default: searched)")
    parser.add_argument("--skip-time-to-accuracy", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.fast_seeds, args.reference_seeds, args.seeds, args.best_epochs = 2, 1, 2, [1, 2]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs = Path(os.environ.get("TMPDIR", "/tmp")) / f"digitlab-gpu-runs-{os.getpid()}"
    args.runs.mkdir(parents=True)
    import torch

    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            log("no usable CUDA GPU: torch.cuda.is_available() is False; stopping")
            return 2
        machine += f", GPU {torch.cuda.get_device_name(0)}"
    log(f"machine: {machine}; load average {os.getloadavg()}")
    fashion_parent = find_fashion(args.fashion_dir)
    summary: dict = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_time_to_accuracy:
        summary["time_to_accuracy"] = phase_time_to_accuracy(args)
    jobs = phase_trainings(args, fashion_parent)
    summary["runs"] = [run_record(j) for j in jobs]
    try:
        summary["evaluations"] = phase_evaluate(jobs, args, fashion_parent)
    except Exception as e:  # noqa: BLE001 - the runs' own figures are still worth writing out
        log(f"phase 3 failed: {type(e).__name__}: {e}")
        summary["evaluations"] = {}
    summary["chosen"] = choose(summary["evaluations"], args)
    summary["elapsed_s"] = round(time.monotonic() - T0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_markdown(summary, args.out / "summary.md")
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for j in jobs:
            tar.add(j["log"], arcname=j["log"].name)
            for name in ("metrics.csv", "config.json"):
                if (j["dir"] / name).is_file():
                    tar.add(j["dir"] / name, arcname=f"{j['name']}/{name}")
    log(f"done in {summary['elapsed_s']} s; results in {args.out}")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
