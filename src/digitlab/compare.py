"""What `digitlab compare` computes from run folders: one summary row per run, and the spread of
runs that repeat one recipe with other seeds."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from digitlab.errors import RunError
from digitlab.runs import read_config, read_metrics

# Fields that change where or how fast a run goes, not what it learns: runs that differ only in these
# (and in the seed) are repeats of one recipe.
NOT_RECIPE = ("seed", "out", "device", "threads", "data_dir", "log_every", "eval_batch_size", "compile")


class IncompleteRun(RunError):
    """A run folder with a valid config.json whose training never reached its first evaluation (it failed or
    was killed early, or is still in its first epoch): nothing to compare yet, but nothing wrong either."""


def run_summary(run: Path) -> tuple[dict, list[dict]]:
    """One compare-table row for a run folder (from config.json and metrics.csv), and its history."""
    if not run.is_dir():
        raise RunError(f"{run} is not a run folder")
    cfg = read_config(run)
    if not (run / "metrics.csv").is_file():
        raise IncompleteRun(f"{run}: it has no metrics.csv yet")
    history = read_metrics(run)
    if not history:
        raise IncompleteRun(f"{run}: its metrics.csv has no rows yet")
    last = history[-1]
    recipe = {k: v for k, v in asdict(cfg).items() if k not in NOT_RECIPE}
    return {"run": str(run), "recipe": json.dumps(recipe, sort_keys=True), "preset": cfg.preset,
            "model": cfg.model, "dataset": cfg.dataset, "epochs": last["epoch"],
            "final_accuracy": last["test_accuracy"], "best_accuracy": max(r["test_accuracy"] for r in history),
            "seconds_per_epoch": last["elapsed_s"] / last["epoch"] if last["epoch"] else None}, history


def recipe_spread(rows: list[dict]) -> list[dict]:
    """Mean, sample standard deviation and range of the final accuracy for every recipe that two or more
    runs share (same config but for the seed and NOT_RECIPE), so a reader sees how far one run's figure
    can be trusted."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["recipe"], []).append(row)
    spread = []
    for members in groups.values():
        if len(members) < 2:
            continue
        accs = [m["final_accuracy"] for m in members]
        mean = sum(accs) / len(accs)
        sd = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
        first = members[0]
        spread.append({"runs": [m["run"] for m in members], "preset": first["preset"], "model": first["model"],
                       "dataset": first["dataset"], "epochs": first["epochs"], "mean_accuracy": mean,
                       "sd_accuracy": sd, "min_accuracy": min(accs), "max_accuracy": max(accs)})
    return spread
