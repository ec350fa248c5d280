"""One trial of a sweep: an ordinary run folder, trained with a validation split, scored on validation only.

The trial's recipe is the sweep's base recipe (preset, --config, train flags) with the sampled values over it, and
three things the sweep owns: out = DIR/trial-NNNN, eval_test = false (the test set is never read, so nothing the
sweep chooses has seen it), and a validation hold-out (the base's val_size, else DEFAULT_VAL_SIZE). The value
Optuna maximises is the run's best validation accuracy; every validation evaluation is reported to the pruner,
which may stop the trial there (its run folder keeps what it trained, its state is PRUNED).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from digitlab.config import TrainConfig, make_config
from digitlab.events import Subscriber
from digitlab.sweep.space import Param, apply_params
from digitlab.sweep.storage import this_process

DEFAULT_VAL_SIZE = 5000  # as the presets hold out: about 0.3 points of noise at 99% accuracy


@dataclass
class TrialSpec:
    """What every trial of one sweep command shares; plain data, so worker processes receive it whole."""

    base: dict  # the base recipe: TrainConfig fields as a dict
    params: list[Param]
    out: str  # the sweep's folder: trials go to OUT/trial-NNNN
    threads: int = 0  # CPU threads per trial (0: the base recipe's)
    quiet: bool = True  # no per-epoch lines from trials (the sweep prints one line per trial)
    extra: dict = field(default_factory=dict)

    def trial_config(self, number: int, values: dict) -> TrainConfig:
        """The recipe of trial `number` with the sampled values: validated (a bad model option is a ConfigError)."""
        recipe = apply_params(self.base, values)
        recipe.update(out=str(Path(self.out) / f"trial-{number:04d}"), eval_test=False,
                      val_size=recipe.get("val_size") or DEFAULT_VAL_SIZE, fixed_schedule=False)
        if self.threads:
            recipe["threads"] = self.threads
        return make_config(recipe)


class PruningReporter(Subscriber):
    """Reports each validation accuracy to the Optuna trial at its optimiser step; raises TrialPruned when the
    pruner says this trial will not beat the others (the run stops there, its folder intact)."""

    def __init__(self, trial):
        self.trial = trial

    def on_evaluation(self, run, row: dict, epoch_end: bool) -> None:
        import optuna

        self.trial.report(row["val_accuracy"], step=int(row["step"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {row['step']:g} (val accuracy {row['val_accuracy']:.2%})")


def run_trial(trial, spec: TrialSpec, log=print) -> float:
    """Optuna's objective: sample, train the trial's run folder, return its best validation accuracy."""
    from digitlab.training import train

    values = {p.name: p.suggest(trial) for p in spec.params}
    for key, value in this_process().items():
        trial.set_user_attr(key, value)
    cfg = spec.trial_config(trial.number, values)
    trial.set_user_attr("run", cfg.out)
    trial.set_user_attr("config", asdict(cfg))
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    log(f"trial {trial.number} started: {shown} -> {cfg.out}")
    result = train(cfg, dataset=cached_dataset(cfg.dataset, cfg.data_dir), progress=False,
                   log=(lambda *_: None) if spec.quiet else log, subscribers=[PruningReporter(trial)])
    return result.best_accuracy


@functools.lru_cache(maxsize=2)
def cached_dataset(name: str, data_dir: str | None):
    """A dataset read (and checksummed) once per sweep process, not once per trial."""
    from digitlab.data import load_dataset

    return load_dataset(name, data_dir, progress=False)
