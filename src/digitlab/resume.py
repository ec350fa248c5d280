"""Resuming a training: where a run stands and its checkpoint.

    resume_config("runs/<run>", epochs=5)    # the run's saved recipe, checked against what a resume may change
    restore(run_dir, model, optimizer, ...)  # the last checkpoint into model, optimiser and RNGs -> Progress

Nothing in the run folder changes until a resume is known to be compatible and its checkpoint has loaded;
the rules themselves (what a resume may change, the lock, which folders a new run may take) and the claiming of
a run folder (prepare_run_dir) are in runs.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from digitlab import distributed as dist
from digitlab.checkpoint import has_checkpoint, load_model_state, load_optimizer_state, load_training_checkpoint
from digitlab.config import TrainConfig, make_config
from digitlab.device import set_rng_state, set_seed
from digitlab.errors import RunError
from digitlab.runs import check_resume_compatible, check_work_left, read_config, write_config


@dataclass
class Progress:
    """How far a run has got. A checkpoint saves it, restore() returns it to a resumed run, and the loop
    advances it as it trains."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    epoch_step: int = 0  # steps taken in epoch `epoch` (a run cut by max_steps stops mid-epoch): where it goes on
    history: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0  # best selection accuracy so far (validation with val_size, else test)
    averaged_weights: dict | None = None  # with EMA, the saved average (the .safetensors file)


def restore(run_dir: Path, model, optimizer, cfg: TrainConfig, ctx: dist.DistContext, log) -> Progress:
    """Load the last checkpoint into model and optimiser, restore the RNGs, and say where to go on from.

    Only once all of it has loaded is config.json rewritten with the resumed settings (rank 0), so a resume
    that fails (a damaged checkpoint, nothing left to train) leaves the run folder as it was.
    """
    if not has_checkpoint(run_dir, "last"):
        log(f"{run_dir} has no checkpoint yet (stopped in its first epoch): starting from the beginning")
        if ctx.is_main:
            write_config(run_dir, cfg)
        return Progress()
    if not ctx.is_main:
        dist.barrier()  # rank 0 loads first: it may finish a commit that a kill interrupted
    weights, _meta, state = load_training_checkpoint(run_dir, "last")
    if ctx.is_main:
        dist.barrier()
    check_work_left(run_dir, cfg, state["epoch"], state["step"])
    source = run_dir / "last.state.pt"
    load_model_state(model, state.get("train_weights", weights), source)  # with EMA .safetensors is the average
    load_optimizer_state(optimizer, state["optimizer"], source)
    if ctx.is_main:
        try:
            set_rng_state(state["rng"])
        except (RuntimeError, ValueError, TypeError, OverflowError) as e:
            raise RunError(f"{source}: the saved 'rng' state cannot be restored ({e})") from None
        write_config(run_dir, cfg)
    else:  # only rank 0's RNG state is saved; the others get a fresh, distinct stream
        set_seed(cfg.seed + ctx.rank + 1000 * state["epoch"])
    epoch_step = state.get("epoch_step", 0)  # absent in checkpoints written only at epoch ends
    within = f" (its step {epoch_step} of epoch {state['epoch'] + 1})" if epoch_step else ""
    log(f"resuming {run_dir} at epoch {state['epoch']}, step {state['step']}{within}")
    return Progress(epoch=state["epoch"], step=state["step"], epoch_step=epoch_step, history=state["history"],
                    best_accuracy=state["best_accuracy"], averaged_weights=weights)


def resume_config(run: str | Path, **overrides) -> TrainConfig:
    """The saved config of a run with `overrides` applied and `out` pointing back at it; overriding a field that
    changes what is learned (anything but runs.RESUMABLE) is a ConfigError naming the fields."""
    saved = read_config(Path(run))
    cfg = make_config(asdict(saved), **{**overrides, "out": str(run)})
    check_resume_compatible(saved, cfg, Path(run))
    return cfg
