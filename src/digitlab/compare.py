"""What `digitlab compare` computes from run folders: one summary row per run, whether the run got to its planned
end, the checkpoint its selection picked, and the spread over seeds of every recipe.

A run stopped before its planned end (killed, interrupted, still training) is `unfinished`: its last figures are
not the recipe's, so the command leaves it out of the table and of every recipe group unless asked to show it.
The best row goes by validation accuracy where the run held out a validation split, as training chose its
`best` checkpoint; without one it goes by test accuracy (an optimistic figure, and the table says so); with a
fixed schedule nothing was selected and the best row is the last.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from digitlab.config import TrainConfig
from digitlab.errors import RunError
from digitlab.runs import Thinned, iter_metrics, read_config
from digitlab.selection import Selection

# Fields that change where or how fast a run goes, or what it reports along the way, not what it learns: runs
# that differ only in these (and in the seed) are repeats of one recipe.
NOT_RECIPE = ("seed", "out", "device", "threads", "data_dir", "log_every", "eval_batch_size", "compile", "plot",
              "tensorboard", "eval_test")
# What the table and chart read of metrics.csv, and how many rows of a run the chart draws at most.
COMPARED_COLUMNS = ("step", "epoch", "val_accuracy", "test_accuracy", "elapsed_s")
MAX_CHART_POINTS = 2000
# Settings named at most in a legend label when two recipes of one preset or model differ, before "+N more".
MAX_LABEL_SETTINGS = 3


class IncompleteRun(RunError):
    """A run folder with a valid config.json whose training never reached its first evaluation (it failed or
    was killed early, or is still in its first epoch): nothing to compare yet, but nothing wrong either."""

    def __init__(self, run: Path, what: str, progress: str):
        super().__init__(f"{run} ({what}): unfinished, {progress}")
        self.run, self.what, self.progress = str(run), what, progress


def run_words(cfg: TrainConfig) -> str:
    """What a run is, in a warning: its recipe (preset, else model) and seed."""
    return f"{cfg.preset or cfg.model}, seed {cfg.seed}"


def better_row(best: dict | None, row: dict, selection: Selection) -> dict:
    """One step of finding the evaluation training's `best` checkpoint holds, over a stream of rows: `row` if it
    replaces `best` (the best so far; None before the first row). The best is the first with the highest
    accuracy on the selection split (later ties did not replace it), or the last row when nothing was selected
    or scored."""
    if best is None or selection.on == "nothing":
        return row
    score, best_score = selection.score(row), selection.score(best)
    if best_score is None:  # nothing scored yet: the latest row stands in
        return row
    return row if score is not None and score > best_score else best


def is_finished(cfg: TrainConfig, last: dict) -> bool:
    """Whether the run's last evaluation is its planned end: all cfg.epochs, the max_steps limit, or
    target_accuracy reached (a run stopped by its target has finished, early on purpose)."""
    if last["epoch"] >= cfg.epochs:
        return True
    if cfg.max_steps and last["step"] >= cfg.max_steps:
        return True
    return Selection.for_config(cfg).reached(last)


def progress_words(cfg: TrainConfig, last: dict | None) -> str:
    """How far a run got, for warnings and the table: "epoch 1 of 2", with its steps when max_steps bounds it."""
    if last is None:
        return f"no evaluation yet, epoch 0 of {cfg.epochs}"
    words = f"epoch {last['epoch']:g} of {cfg.epochs}"
    if cfg.max_steps:
        words += f", step {last['step']:g} of {cfg.max_steps}"
    return words


def run_summary(run: Path) -> tuple[dict, list[dict]]:
    """One compare-table row for a run folder (from config.json and metrics.csv), and its history for the chart:
    metrics.csv is read as a stream, its last and best rows found on the way, and at most MAX_CHART_POINTS rows
    (of the columns the table and chart use) kept."""
    if not run.is_dir():
        raise RunError(f"{run} is not a run folder")
    cfg = read_config(run)
    selection = Selection.for_config(cfg)
    chart, best = Thinned(MAX_CHART_POINTS), None
    if (run / "metrics.csv").is_file():
        for row in iter_metrics(run, COMPARED_COLUMNS):
            chart.add(row)
            best = better_row(best, row, selection)
    if chart.last is None:
        raise IncompleteRun(run, run_words(cfg), progress_words(cfg, None))
    last, history = chart.last, chart.rows
    recipe = {k: v for k, v in asdict(cfg).items() if k not in NOT_RECIPE}
    return {"run": str(run), "recipe": json.dumps(recipe, sort_keys=True), "preset": cfg.preset,
            "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "what": run_words(cfg),
            "finished": is_finished(cfg, last), "progress": progress_words(cfg, last),
            "epochs": last["epoch"], "planned_epochs": cfg.epochs, "steps": last["step"],
            "final_test_accuracy": last.get("test_accuracy"), "final_val_accuracy": last.get("val_accuracy"),
            "selected_on": selection.on, "best_epoch": best["epoch"], "best_step": best["step"],
            "best_val_accuracy": best.get("val_accuracy"), "best_test_accuracy": best.get("test_accuracy"),
            "seconds_per_epoch": last["elapsed_s"] / last["epoch"] if last["epoch"] else None}, history


def spread(values: list[float]) -> dict:
    """n, mean, sample standard deviation (None for one value: one run says nothing of the spread) and range."""
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def spread_of(values: list[float | None]) -> dict | None:
    """spread() of a split's accuracies, or None where the runs have no figure on that split (no hold-out)."""
    return spread(values) if values and all(v is not None for v in values) else None


def recipe_groups(rows: list[dict]) -> list[dict]:
    """The finished runs grouped by recipe (same config but for the seed and NOT_RECIPE), in order of first
    appearance, with the spread of their final test accuracy and, where they hold out a split, of their final
    validation accuracy: how far one run's figure can be trusted. Unfinished runs are in no group."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["finished"]:
            groups.setdefault(row["recipe"], []).append(row)
    names = dict(zip(groups, recipe_names([members[0] for members in groups.values()])))
    return [{"recipe": names[key], "runs": [m["run"] for m in members], "n": len(members),
             "seeds": [m["seed"] for m in members], "preset": members[0]["preset"], "model": members[0]["model"],
             "dataset": members[0]["dataset"], "epochs": members[0]["planned_epochs"],
             "test": spread_of([m["final_test_accuracy"] for m in members]),
             "val": spread_of([m["final_val_accuracy"] for m in members])} for key, members in groups.items()]


def setting_words(key: str, value: object) -> str:
    """One config setting as a legend names it: "augment affine", "ema 0.9"."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), sort_keys=True)
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{key} {value}"


def telling_settings(recipes: list[dict]) -> list[str]:
    """The settings whose values differ between recipes that share one preset or model name."""
    keys = sorted({k for recipe in recipes for k in recipe} - {"dataset", "preset"})
    return [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in recipes}) > 1]


def recipe_words(recipe: dict, keys: list[str]) -> str:
    """The settings `keys` of one recipe, at most MAX_LABEL_SETTINGS of them, for a legend label."""
    words = [setting_words(k, recipe.get(k)) for k in keys[:MAX_LABEL_SETTINGS]]
    if len(keys) > MAX_LABEL_SETTINGS:
        words.append(f"+{len(keys) - MAX_LABEL_SETTINGS} more")
    return ", ".join(words)


def recipe_names(rows: list[dict]) -> list[str]:
    """Each row's recipe in words: its preset (else model), plus the settings that tell it apart from other
    recipes of that name among `rows`: "digitnet (augment affine, ema 0.9)"."""
    names = [row["preset"] or row["model"] for row in rows]
    recipes: dict[str, dict[str, dict]] = {}
    for name, row in zip(names, rows):
        recipes.setdefault(name, {})[row["recipe"]] = json.loads(row["recipe"])
    keys = {name: telling_settings(list(by_recipe.values())) for name, by_recipe in recipes.items()}
    return [f"{name} ({recipe_words(recipes[name][row['recipe']], keys[name])})" if keys[name] else name
            for name, row in zip(names, rows)]


def run_labels(rows: list[dict]) -> list[str]:
    """Legend names that say what each run is rather than when it started: recipe and seed, "default, seed 1";
    plus the dataset when runs mix datasets, "unfinished" for a run stopped early, and the folder name where
    all that is still the same."""
    mixed = len({row["dataset"] for row in rows}) > 1
    labels = [f"{name}, seed {row['seed']}" + f", {row['dataset']}" * mixed + ", unfinished" * (not row["finished"])
              for name, row in zip(recipe_names(rows), rows)]
    return distinct(labels, rows)


def distinct(labels: list[str], rows: list[dict]) -> list[str]:
    """Labels made unique by the run's folder name (its path if folder names repeat too): a rerun of one recipe
    and seed is its own line."""
    out = list(labels)
    for label in set(labels):
        same = [i for i, other in enumerate(labels) if other == label]
        if len(same) < 2:
            continue
        folders = [Path(rows[i]["run"]).name for i in same]
        if len(set(folders)) < len(folders):
            folders = [rows[i]["run"] for i in same]
        for i, folder in zip(same, folders):
            out[i] = f"{label} [{folder}]"
    return out


def plotted_split(row: dict) -> str:
    """What the chart draws for a run: "val" where it held out a validation split, else "test"."""
    return "val" if row["final_val_accuracy"] is not None else "test"
