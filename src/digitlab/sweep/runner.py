"""`digitlab sweep`: run trials of one Optuna study, in this process or in K worker processes.

    digitlab sweep --study lr-wd --trials 30 --preset default --param lr=1e-3:1e-2:log --param weight_decay=0:1e-3

`--trials N` adds N trials to the study (Optuna's n_trials): running the command again, or on another machine
against the same --storage, adds N more. `--jobs K` splits them over K processes here, each with its share of the
cores (threads divided: two trainings that each take every core run several times slower than one each).
Everything is checked before a trial runs: the search space, the base recipe with the range ends, the storage.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from digitlab.errors import DigitlabError
from digitlab.sweep.objective import TrialSpec, run_trial
from digitlab.sweep.storage import SweepError, fail_dead_trials, open_storage, storage_url

PRUNERS = ("median", "hyperband", "none")
DEFAULT_OUT_ROOT = Path("runs") / "sweeps"


@dataclass
class SweepPlan:
    """One `digitlab sweep` command, checked: which study, where, how many trials, and what each trains."""

    study: str
    storage: str
    trials: int
    jobs: int
    pruner: str
    spec: TrialSpec


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


def threads_per_trial(jobs: int, asked: int) -> int:
    """--threads if given, else the cores divided between the jobs (at least one each); 0 for one job, which
    leaves the recipe's own choice."""
    if asked:
        return asked
    return max(1, available_cores() // jobs) if jobs > 1 else 0


def check_plan(plan: SweepPlan) -> None:
    """Every error a user can make, found before the storage is touched or a trial runs: counts, the pruner, and
    the base recipe with each parameter at both ends of its range (an unknown model option fails here)."""
    if plan.trials < 1:
        raise SweepError(f"--trials must be at least 1, got {plan.trials}")
    if plan.jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {plan.jobs}")
    if plan.pruner not in PRUNERS:
        raise SweepError(f"--pruner {plan.pruner!r} is not one of: {', '.join(PRUNERS)}")
    for end in (0, -1):
        values = {p.name: p.choices[end] if p.choices else (p.low, p.high)[end] for p in plan.spec.params}
        plan.spec.trial_config(0, values)


def make_pruner(name: str):
    import optuna

    if name == "median":  # stop a trial below the median of earlier trials at the same step, after 5 trials
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(plan: SweepPlan, create: bool):
    """(storage, study): the study created if it is new (create=True), with its sweep folder recorded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # digitlab prints one line per trial instead
    storage = open_storage(plan.storage)
    sampler = optuna.samplers.TPESampler(constant_liar=True)  # parallel workers do not all sample one point
    try:
        study = optuna.create_study(study_name=plan.study, storage=storage, direction="maximize",
                                    load_if_exists=create, pruner=make_pruner(plan.pruner), sampler=sampler)
    except ValueError as e:  # a study of that name that minimises: not one of digitlab's
        raise SweepError(f"study {plan.study!r}: {e}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SweepError(f"study {plan.study!r} minimises its value: it is not a digitlab sweep")
    if "out" not in study.user_attrs:
        study.set_user_attr("out", plan.spec.out)
    return storage, study


def trial_ended(log):
    """An Optuna callback printing one line per finished trial: its state, value or error, and the best so far."""
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        if trial.state == TrialState.COMPLETE:
            what = f"validation accuracy {trial.value:.2%}"
        elif trial.state == TrialState.PRUNED:
            steps = max(trial.intermediate_values, default=0)
            what = f"pruned at step {steps} (val {trial.intermediate_values.get(steps, 0):.2%})"
        else:
            what = f"failed: {trial.user_attrs.get('error', 'see its run folder')}"
        try:
            best = f"; best so far: trial {study.best_trial.number}, {study.best_value:.2%}"
        except ValueError:  # no complete trial yet
            best = ""
        log(f"trial {trial.number} {trial.state.name.lower()}: {what}{best}")

    return callback


def objective(spec: TrialSpec, log):
    """run_trial, recording a failure's one-line reason on the trial (the sweep goes on to the next)."""
    import optuna

    def run(trial) -> float:
        try:
            return run_trial(trial, spec, log)
        except optuna.TrialPruned:
            raise
        except DigitlabError as e:
            trial.set_user_attr("error", str(e))
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise

    return run


def optimize(plan: SweepPlan, trials: int, log=print) -> None:
    """Run `trials` trials of the plan's study in this process; a failed trial is recorded and the next runs."""
    storage, study = open_study(plan, create=True)
    fail_dead_trials(storage, study, log)
    study.optimize(objective(plan.spec, log), n_trials=trials, catch=(Exception,), callbacks=[trial_ended(log)],
                   gc_after_trial=True)


def worker_main(plan: SweepPlan, trials: int) -> None:
    """A --jobs worker process: its share of the trials; output lines flushed as they come."""
    try:
        optimize(plan, trials, log=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        pass  # the parent says what happened


def run_sweep(plan: SweepPlan, log=print) -> None:
    """Check the plan, then run its trials here (jobs 1) or in `jobs` processes; a worker that dies (kill -9)
    has its running trial marked failed at once, and the others go on."""
    check_plan(plan)
    storage, study = open_study(plan, create=True)  # creates the study once, before workers race to
    fail_dead_trials(storage, study, log)
    jobs = min(plan.jobs, plan.trials)
    if jobs == 1:
        optimize(plan, plan.trials, log)
        return
    shares = [plan.trials // jobs + (1 if i < plan.trials % jobs else 0) for i in range(jobs)]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    workers = [context.Process(target=worker_main, args=(plan, share), name=f"sweep-worker-{i}")
               for i, share in enumerate(shares)]
    for worker in workers:
        worker.start()
    log(f"{jobs} workers ({', '.join(str(w.pid) for w in workers)}), {plan.spec.threads or 'default'} thread(s) "
        f"each, {plan.trials} trials")
    try:
        wait_for(workers, storage, study, log)
    except KeyboardInterrupt:
        for worker in workers:
            worker.join()
        fail_dead_trials(storage, study, log)
        raise


def wait_for(workers: list, storage, study, log) -> None:
    """Join the workers as they end; one killed by a signal gets its running trial marked failed."""
    from multiprocessing.connection import wait

    running = {worker.sentinel: worker for worker in workers}
    died = []
    while running:
        for sentinel in wait(list(running)):
            worker = running.pop(sentinel)
            worker.join()
            if worker.exitcode:
                died.append(worker)
                how = f"signal {-worker.exitcode}" if worker.exitcode < 0 else f"exit status {worker.exitcode}"
                log(f"worker {worker.pid} ended with {how}")
                fail_dead_trials(storage, study, log)
    if died:
        raise SweepError(f"{len(died)} of {len(workers)} workers did not finish; their unfinished trials are marked "
                         "failed. Run the same command again to add trials to the study")
