"""Training events and their subscribers: how a run reports, without the loop knowing who listens.

The loop in training.py emits a few events; each subscriber overrides the ones it cares about:

    on_start(run)                     the run folder and model exist; the selection line has been logged
    on_epoch_start(run, epoch)
    on_step(run, tally)               after every optimiser step (tally: the epoch's running loss, accuracy, speed)
    on_evaluation(run, row, epoch_end)  after every evaluation (its metrics row; `best` is already saved)
    on_epoch_end(run, row)            the epoch's last evaluation, before its checkpoint is written
    on_checkpoint(run, row)           the epoch's `last` checkpoint is on disk
    on_finish(run, result)            the run ended as planned (last epoch, max_steps or target_accuracy)
    close()                           always, however the run ended (an exception, Ctrl-C, a pruned trial)

Built in (rank 0 only, see default_subscribers): MetricsCsv (metrics.csv), ConsoleProgress (the progress bar and
the epoch lines), CalibrateAtEnd (calibrate.py: the temperature of `best` and `last`), CurvesPlot (curves.png), and
TensorBoard (tracking.py). A sweep adds its pruning reporter
(sweep/objective.py). A subscriber may raise to stop the run (a pruned trial does): the last checkpoint on disk
stays as it was, and close() still runs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.runs import write_metrics

if TYPE_CHECKING:  # training.py imports this module; these names are for type checkers only
    from digitlab.training import EpochTally, RunState, TrainResult


class Subscriber:
    """A listener to one run's events; every hook does nothing unless overridden."""

    def on_start(self, run: RunState) -> None: ...

    def on_epoch_start(self, run: RunState, epoch: int) -> None: ...

    def on_step(self, run: RunState, tally: EpochTally) -> None: ...

    def on_evaluation(self, run: RunState, row: dict, epoch_end: bool) -> None: ...

    def on_epoch_end(self, run: RunState, row: dict) -> None: ...

    def on_checkpoint(self, run: RunState, row: dict) -> None: ...

    def on_finish(self, run: RunState, result: TrainResult) -> None: ...

    def close(self) -> None: ...


class Events:
    """The subscribers of one run, called in the order given."""

    def __init__(self, subscribers: Iterable[Subscriber]):
        self.subscribers = list(subscribers)

    def emit(self, event: str, *args: Any) -> None:
        for subscriber in self.subscribers:
            getattr(subscriber, event)(*args)

    def close(self) -> None:
        """Close every subscriber, even when one of them fails to (the run's own error matters more)."""
        for subscriber in self.subscribers:
            try:
                subscriber.close()
            except Exception:  # noqa: BLE001 - a tracker that cannot flush must not hide why the run ended
                pass


class MetricsCsv(Subscriber):
    """metrics.csv, rewritten whole and atomically after every evaluation, so it always parses."""

    def on_evaluation(self, run: RunState, row: dict, epoch_end: bool) -> None:
        write_metrics(run.run_dir, run.progress.history)


class ConsoleProgress(Subscriber):
    """A tqdm bar per epoch (when `show_bars` and a terminal or notebook shows it live: bars.wanted), a line per
    mid-epoch evaluation and a fixed-format line per epoch."""

    def __init__(self, log: Callable[[str], None], show_bars: bool):
        from digitlab import bars

        self.log, self.show_bars = log, bars.wanted(show_bars)
        self.bar = None
        self.epoch = 0

    def on_epoch_start(self, run: RunState, epoch: int) -> None:
        from tqdm.auto import tqdm  # a widget in a notebook, text on a terminal

        self.epoch = epoch
        if self.show_bars:
            self.bar = tqdm(total=run.steps_per_epoch, initial=run.progress.epoch_step, leave=False, unit="step",
                            desc=f"epoch {epoch + 1}/{run.cfg.epochs}", dynamic_ncols=True)

    def on_step(self, run: RunState, tally: EpochTally) -> None:
        if self.bar is None:
            return
        self.bar.update()
        if run.progress.step % run.cfg.log_every == 0:  # the running figures cost a device sync: not every step
            self.bar.set_postfix(**tally.postfix(run.ctx.world_size))

    def on_evaluation(self, run: RunState, row: dict, epoch_end: bool) -> None:
        if not epoch_end:
            (self.bar.write if self.bar is not None else self.log)(f"step {row['step']:g}: {eval_summary(row)}")

    def on_epoch_end(self, run: RunState, row: dict) -> None:
        self.close()
        words = run.selection.progress_words(run.progress.best_accuracy)
        self.log(format_row(row, self.epoch, run.cfg.epochs) + words)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CurvesPlot(Subscriber):
    """curves.png, redrawn after every epoch's checkpoint (cfg.plot); a plotting problem never stops training."""

    def on_checkpoint(self, run: RunState, row: dict) -> None:
        plot_curves_quietly(run.run_dir, run.progress.history, run.log)


def default_subscribers(run: RunState) -> list[Subscriber]:
    """What every run reports to: on rank 0, metrics.csv, the console, the temperature of `best` and `last` fitted
    on the hold-out at the end (calibrate.py), curves.png (cfg.plot) and TensorBoard (cfg.tensorboard, when the
    package is installed); nothing on the other ranks."""
    if not run.ctx.is_main:
        return []
    from digitlab.calibrate import CalibrateAtEnd  # imported here: it imports this module

    subscribers: list[Subscriber] = [MetricsCsv(), ConsoleProgress(run.log, run.show_bars), CalibrateAtEnd()]
    if run.cfg.plot:
        subscribers.append(CurvesPlot())
    if run.cfg.tensorboard:
        from digitlab.tracking import tensorboard_subscriber

        subscribers += tensorboard_subscriber(run)
    return subscribers


def eval_summary(row: dict) -> str:
    """Validation (when there is a hold-out) and test (when it was read) loss and accuracy of one evaluation."""
    parts = [f"{name} loss {row[f'{key}_loss']:.4f} acc {row[f'{key}_accuracy']:.2%}"
             for name, key in (("val", "val"), ("test", "test")) if row.get(f"{key}_accuracy") is not None]
    return " | ".join(parts)


def format_row(row: dict, epoch: int, epochs: int) -> str:
    """One fixed-format summary line per epoch."""
    return (f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
            f" | {eval_summary(row)} | lr {row['lr']:.2e} | {row['elapsed_s']:.1f}s, {row['images_per_s']:.0f} img/s,"
            f" data {row['data_fraction']:.1%} of step")


def plot_curves_quietly(run_dir: Path, history: list[dict], log: Callable[[str], None] = print) -> None:
    """Refresh curves.png; a plotting problem is a warning, never the end of a training."""
    from digitlab import plots

    try:
        plots.plot_curves(history, run_dir / "curves.png", title=run_dir.name)
    except Exception as e:  # noqa: BLE001 - figures are a convenience, the run is what matters
        log(f"warning: could not draw curves.png ({e})")
