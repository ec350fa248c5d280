"""`digitlab sweep show NAME`: a study's trials, its best trial, Optuna's own plots, and the best recipe as a file.

    number  state     value    params                         run
    0       complete  98.91%   lr=0.0031, weight_decay=0.0002  runs/sweeps/NAME/trial-0000
    ...
    best: trial 7, validation accuracy 99.12% (lr=..., ...)
    wrote runs/sweeps/NAME/{history,importances,parallel}.png and best.toml (`digitlab train --config ...`)

The plots are optuna.visualization.matplotlib's: the optimisation history, the parameter importances (fANOVA)
and the parallel coordinates of the complete trials. best.toml is the best trial's recipe with the test set read
again (eval_test on) and no run folder or thread count of its own: `digitlab train --config best.toml` retrains it
and reports test once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from digitlab.sweep.storage import SweepError, open_storage, redact

PLOTS = {"history": "plot_optimization_history", "importances": "plot_param_importances",
         "parallel": "plot_parallel_coordinate"}


@dataclass
class StudyReport:
    study: str
    storage: str
    trials: list[dict]
    best: dict | None
    folder: str
    figures: dict[str, str] = field(default_factory=dict)
    best_config: str | None = None
    notes: list[str] = field(default_factory=list)


def load_study(name: str, url: str):
    """The study `name` in the storage at `url`, or a SweepError listing the studies there."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    database = sqlite_file(url)
    if database is not None and not database.is_file():  # looking must not create an empty database
        raise SweepError(f"no study {name!r}: {database} does not exist (no sweep has run with this storage)")
    storage = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        there = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise SweepError(f"no study {name!r} in {redact(url)} ({there})") from None


def sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:///FILE URL (None for other databases and SQLite in memory)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and len(url) > len(prefix) else None


def trial_row(trial) -> dict:
    """One trial as plain data: number, state, value, params, run folder, seconds, and why it failed."""
    seconds = ((trial.datetime_complete - trial.datetime_start).total_seconds()
               if trial.datetime_complete and trial.datetime_start else None)
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "params": trial.params, "run": trial.user_attrs.get("run"), "seconds": seconds,
            "last_step": max(trial.intermediate_values, default=None), "error": trial.user_attrs.get("error")}


def study_report(name: str, url: str, folder: str | None = None, figures: bool = True) -> StudyReport:
    """Read the study, draw its plots and write best.toml into `folder` (default: the folder its first sweep
    command used)."""
    study = load_study(name, url)
    rows = [trial_row(t) for t in study.trials]
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    out = Path(folder or study.user_attrs.get("out") or Path("runs") / "sweeps" / name)
    report = StudyReport(name, redact(url), rows, best, str(out))
    if best is not None:
        report.best_config = str(write_best_config(study, out))
    if figures:
        draw_figures(study, out, report)
    return report


def write_best_config(study, out: Path) -> Path:
    """best.toml: the best trial's recipe for `digitlab train --config`, test evaluation back on."""
    from digitlab.config import make_config
    from digitlab.config_files import write_config_file

    trial = study.best_trial
    recipe = dict(trial.user_attrs["config"])
    recipe.update(out=None, threads=0, eval_test=True)
    cfg = make_config(recipe)
    out.mkdir(parents=True, exist_ok=True)
    comment = (f"The best trial ({trial.number}) of the digitlab sweep {study.study_name!r}: validation accuracy "
               f"{trial.value:.4%}.\nRetrain it and report test once: digitlab train --config {out / 'best.toml'}")
    return write_config_file(cfg, out / "best.toml", comment)


def draw_figures(study, out: Path, report: StudyReport) -> None:
    """Optuna's plots as PNGs; a plot that needs more trials than there are is a note, not an error."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings from Optuna's matplotlib backend
                axes = getattr(ovm, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure  # an Axes, or an array of them
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            path = out / f"{name}.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            report.figures[name] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
            report.notes.append(f"no {name} plot: {e}")


def format_report(report: StudyReport) -> str:
    """The table a person reads."""
    shown = [(row, params_words(row["params"])) for row in report.trials]
    width = max([len("params"), *(len(words) for _, words in shown)])
    lines = [f"study {report.study} in {report.storage}: {len(report.trials)} trials "
             f"({', '.join(f'{n} {s}' for s, n in state_counts(report.trials).items())}); a pruned trial's value "
             "is its last validation accuracy",
             f"{'number':>6}  {'state':<9}{'value':>8}  {'params':<{width}}  run"]
    for row, words in shown:
        value = f"{row['value']:.2%}" if row["value"] is not None else "-"
        lines.append(f"{row['number']:>6}  {row['state']:<9}{value:>8}  {words:<{width}}  {row['run'] or '-'}")
    if report.best:
        best = report.best
        lines.append(f"best: trial {best['number']}, validation accuracy {best['value']:.2%} "
                     f"({params_words(best['params'])})")
        lines.append(f"best recipe: {report.best_config} (retrain: digitlab train --config {report.best_config})")
    else:
        lines.append("best: none yet (no trial has completed)")
    if report.figures:
        lines.append(f"wrote {', '.join(report.figures.values())}")
    lines += report.notes
    return "\n".join(lines)


def params_words(params: dict) -> str:
    """lr=0.0029, model_args.width=24: floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def state_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts
