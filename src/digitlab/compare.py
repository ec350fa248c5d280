"""What `digitlab compare` reads from run folders: one summary row per run."""
from __future__ import annotations

from pathlib import Path

from digitlab.errors import RunError
from digitlab.runs import read_config, read_metrics


def run_summary(run: Path) -> tuple[dict, list[dict]]:
    """One compare-table row for a run folder (from config.json and metrics.csv), and its history."""
    if not run.is_dir():
        raise RunError(f"{run} is not a run folder")
    cfg, history = read_config(run), read_metrics(run)
    if not history:
        raise RunError(f"{run}/metrics.csv has no rows yet")
    last = history[-1]
    return {"run": str(run), "preset": cfg.preset, "model": cfg.model, "dataset": cfg.dataset,
            "epochs": last["epoch"], "final_accuracy": last["test_accuracy"],
            "best_accuracy": max(r["test_accuracy"] for r in history),
            "seconds_per_epoch": last["elapsed_s"] / last["epoch"] if last["epoch"] else None}, history
