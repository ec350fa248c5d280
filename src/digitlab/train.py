"""The training loop: batch by slicing in-memory tensors, evaluate, log, checkpoint, resume.

    digitlab train --preset cnn-bn                   # a faithful recipe
    digitlab train --model lstm --epochs 2 --lr 3e-3 # any model, any field
    digitlab train --resume runs/<run> --epochs 3    # continue from the last checkpoint

A run is: setup() (threads, seed, data and its validation hold-out, run folder, model, optimiser, resume,
EMA, DDP/compile), then per epoch train_one_epoch() (each step: batch, forward, loss, zero_grad, backward,
step, then EMA and bookkeeping), evaluate_and_record() and save_epoch_checkpoint(). The data part of each
step is timed separately and reported as `data_fraction`.

Model selection: with cfg.val_size > 0 the `best` checkpoint and target_accuracy go by the accuracy on a
fixed validation hold-out from the training set (split.py) and the test set is only reported; with
val_size 0 they go by test accuracy (the faithful recipes' protocol), and the run says so. With
cfg.fixed_schedule nothing is selected: `best` is the last epoch's weights, for a schedule tuned on a hold-out
and then trained on every training image.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from digitlab import distributed as dist
from digitlab.augment import augment
from digitlab.checkpoint import has_checkpoint, save_checkpoint, save_weights
from digitlab.config import TrainConfig
from digitlab.data import Dataset, load_dataset
from digitlab.device import (cpu_has_native_bf16, pick_device, rng_state, set_seed, training_autocast,
                             use_channels_last)
from digitlab.ema import make_ema, update_ema
from digitlab.errors import DigitlabError
from digitlab.evaluate import predict_logits
from digitlab.models import create_model
from digitlab.normalize import normalize
from digitlab.optim import LeanAdamW, build_optimizer, lr_at, set_lr
from digitlab.resume import Progress, prepare_run_dir, restore
from digitlab.runs import write_metrics
from digitlab.split import stratified_split


INIT_IMAGES = 5000  # what a data-dependent first layer is computed from: 3.9M 3x3 patches, a few ms


class TrainingError(DigitlabError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. Still a KeyboardInterrupt; its message says what was saved and how to go on."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]  # one dict per evaluation, the rows of metrics.csv
    best_accuracy: float  # the best checkpoint's accuracy on the split it was selected on (`selected_on`)
    stopped_early: bool  # stopped before the planned last epoch or max_steps because target_accuracy was reached
    selected_on: str = "test"  # what `best` and target_accuracy used: "validation" (val_size > 0), "test", or
    # "nothing" (fixed_schedule: `best` is the last epoch's weights)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def best_row(self) -> dict:
        """The evaluation the best checkpoint was saved at (the first to reach best_accuracy; with a fixed
        schedule, the last)."""
        if self.selected_on == "nothing":
            return self.final
        key = selection_key(self.selected_on)
        return next((row for row in self.history if row[key] == self.best_accuracy), {})


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch depends only on (seed, epoch), so a resumed run sees the same."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def rank_shard(num_examples: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's data order for one epoch: every world_size-th index of the epoch's permutation.

    The permutation is cut to a multiple of world_size so all ranks run the same number of steps. With a
    per-rank batch b = B / world_size, step i of the ranks together takes exactly perm[i*B:(i+1)*B], the
    batch one process with batch size B takes at step i.
    """
    n = (num_examples // world_size) * world_size
    return epoch_permutation(num_examples, seed, epoch)[:n][rank::world_size]


@torch.no_grad()
def sharded_eval(model, images, labels, cfg: TrainConfig, ctx: dist.DistContext, device) -> tuple[float, float]:
    """Test loss and accuracy; each rank scores its shard and the sums are reduced."""
    x, y = images[ctx.rank::ctx.world_size], labels[ctx.rank::ctx.world_size]
    logits = predict_logits(model, x, cfg.normalization, cfg.eval_batch_size, device, cfg.tta, cfg.tta_mirror)
    sums = torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(),
                         (logits.argmax(1) == y).sum().item(), float(y.numel())], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums.to(device)).cpu()
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def log_line(text: str) -> None:
    """Print and flush, so an epoch line reaches a log file the moment it is written."""
    print(text, flush=True)



def train(cfg: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
          progress: bool = True, log=log_line, force: bool = False) -> TrainResult:
    """Train per `cfg`, writing a run folder; with resume=True continue from cfg.out's last checkpoint.
    `progress` shows tqdm bars (rank 0 only). Ctrl-C raises TrainingInterrupted, saying what was saved.
    force=True lets a new run take a folder that holds files (a previous run's are removed first)."""
    cfg.validate()
    ctx = dist.context_from_env()
    device = dist.rank_device(ctx, pick_device(cfg.device))
    dist.setup(ctx, device)
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, released on every way out
            run = None
            try:
                run = setup(cfg, dataset, resume, progress and ctx.is_main, log if ctx.is_main else _quiet, ctx,
                            device, held, force)
                if not resume:  # a resumed run said it when it started; its epoch lines name the selection split
                    run.log(selection_note(run))
                result = run_epochs(run)
            except KeyboardInterrupt:
                if run is None:  # still setting up: no run folder content to speak of
                    raise
                # The selection line is logged only once `run` exists, so a Ctrl-C sent on seeing it always
                # gets the message saying what was saved.
                raise TrainingInterrupted(interrupted_message(run), run.run_dir) from None
        dist.barrier()  # every rank has finished with the group before any tears it down
        return result
    finally:
        dist.cleanup()


def _quiet(*_args, **_kwargs) -> None:
    pass


@dataclass
class RunState:
    """Everything one training run works with, built once by setup() and advanced by the loop."""

    cfg: TrainConfig
    ctx: dist.DistContext
    device: torch.device
    run_dir: Path
    log: Callable[[str], None]
    show_bars: bool
    model: torch.nn.Module  # the weights the optimiser updates
    net: torch.nn.Module  # what the training forward pass calls: model, wrapped by DDP and/or torch.compile
    scored: torch.nn.Module  # what is evaluated and saved: the EMA average with ema > 0, else model
    ema: torch.nn.Module | None
    optimizer: torch.optim.Optimizer | LeanAdamW  # LeanAdamW: `adamw-lean`, torch.optim's interface without it
    autocast: torch.autocast
    memory_format: Callable[[torch.Tensor], torch.Tensor]  # applied to every input batch (channels_last_for)
    train_x: torch.Tensor  # uint8 training images on the device, the validation hold-out removed
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "val" (with val_size) and "test", on the CPU
    local_batch: int  # this rank's batch size
    steps_per_epoch: int
    meta: dict  # what every saved weights file records: model, options, normalisation, dataset, classes
    progress: Progress
    t_start: float  # perf_counter at the run's start, moved back by the elapsed time of a resumed run
    checkpoint: tuple[int, int] | None  # (epoch, step) of the `last` checkpoint on disk, None before the first
    train_size: int  # the dataset's training images, before the hold-out and any pen digits

    @property
    def selected_on(self) -> str:
        if self.cfg.fixed_schedule:
            return "nothing"
        return "validation" if "val" in self.eval_sets else "test"


def setup(cfg: TrainConfig, dataset: Dataset | None, resume: bool, show_bars: bool, log,
          ctx: dist.DistContext, device: torch.device, held: contextlib.ExitStack, force: bool) -> RunState:
    """Threads, seed, data and its hold-out, run folder, model, optimiser, resumed progress, EMA, DDP/compile."""
    set_threads(cfg, ctx, device)
    local_batch = dist.check_batch_size(ctx, cfg.batch_size)
    set_seed(cfg.seed + ctx.rank)
    ds = dataset or load_dataset(cfg.dataset, cfg.data_dir, progress=show_bars)
    train_x, train_y, eval_sets = split_data(ds, cfg.val_size)  # a bad val_size fails before anything is written
    if cfg.pen_digits:  # imported only then: the pen generator and preprocessing cost ~36 ms of start-up
        from digitlab.synthetic import with_pen_digits

        train_x, train_y = with_pen_digits(train_x, train_y, cfg.pen_digits)  # pen digits only train, never validate
    run_dir = prepare_run_dir(cfg, ctx, resume, force, held, log)
    model = create_model(cfg.model, **cfg.model_args).to(device)
    if not resume:  # a resumed run has its data-dependent layers in the checkpoint
        init_from_data(model, train_x, cfg.normalization, device)
    memory_format = channels_last_for(model, cfg, device)
    optimizer = build_optimizer(model, cfg)
    progress = restore(run_dir, model, optimizer, cfg, ctx, log) if resume else Progress()
    ema = make_ema(model, progress.averaged_weights if progress.step else None) if cfg.ema else None
    if cfg.cpu_amp and device.type == "cpu" and not cpu_has_native_bf16():
        log("cpu_amp: this CPU has no native bf16 (AMX or AVX512-BF16), so training stays fp32")
    n = (train_x.shape[0] // ctx.world_size) * ctx.world_size  # equal shards keep ranks in step
    meta = {"model": cfg.model, "model_args": cfg.model_args, "normalization": cfg.normalization,
            "dataset": cfg.dataset, "classes": list(ds.classes), "preset": cfg.preset}
    run = RunState(cfg, ctx, device, run_dir, log, show_bars, model, wrap_for_training(model, cfg, ctx, device),
                   ema or model, ema, optimizer, training_autocast(device, cfg.amp, cfg.cpu_amp), memory_format,
                   train_x.to(device), train_y.to(device), eval_sets, local_batch,
                   math.ceil(n // ctx.world_size / local_batch), meta, progress,
                   time.perf_counter() - (progress.history[-1]["elapsed_s"] if progress.history else 0.0),
                   (progress.epoch, progress.step) if progress.epoch else None, ds.train_images.shape[0])
    return run


def init_from_data(model: torch.nn.Module, train_x: torch.Tensor, normalization: str, device: torch.device) -> None:
    """Give a model with data-dependent layers (an `init_from_data` method: DigitNet's whitening conv) its first
    INIT_IMAGES training images, normalised as it will see them; the validation hold-out is never among them."""
    if callable(getattr(model, "init_from_data", None)):
        model.init_from_data(normalize(train_x[:INIT_IMAGES], normalization).to(device))


def set_threads(cfg: TrainConfig, ctx: dist.DistContext, device: torch.device) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif ctx.enabled and device.type == "cpu":  # share the cores between the local ranks
        torch.set_num_threads(max(1, (torch.get_num_threads()) // ctx.local_world_size))


def split_data(ds: Dataset, val_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Training images and labels without the validation hold-out, and the sets evaluated: "val", "test"."""
    if not val_size:
        return ds.train_images, ds.train_labels, {"test": (ds.test_images, ds.test_labels)}
    train_idx, val_idx = stratified_split(ds.train_labels, val_size)
    return (ds.train_images[train_idx], ds.train_labels[train_idx],
            {"val": (ds.train_images[val_idx], ds.train_labels[val_idx]), "test": (ds.test_images, ds.test_labels)})


def selection_note(run: RunState) -> str:
    """One line saying what picks the best checkpoint (and stops at target_accuracy)."""
    if run.selected_on == "nothing":
        reported = " and the validation hold-out are" if "val" in run.eval_sets else " is"
        return (f"model selection: none, a fixed schedule: best.safetensors is the last epoch's weights, trained on "
                f"{run.train_x.shape[0]:,} images; the test set{reported} only reported")
    if run.selected_on == "validation":
        held = run.eval_sets["val"][0].shape[0]
        return (f"model selection: validation accuracy on {held:,} of the {run.train_size:,} training images, held out "
                "(best checkpoint, target_accuracy); the test set is only reported")
    return ("model selection: no validation split (val_size 0): the best checkpoint and target_accuracy go by "
            "TEST accuracy, so the best epoch's test figure is optimistic")


def channels_last_for(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """cfg.channels_last applied through device.use_channels_last, the one place the format is decided: convert
    the model's weights in place and return the same conversion for input batches (or the identity)."""
    return use_channels_last(model, device, cfg.channels_last)


def wrap_for_training(model: torch.nn.Module, cfg: TrainConfig, ctx: dist.DistContext,
                      device: torch.device) -> torch.nn.Module:
    """The module the training forward pass calls: DDP across ranks under torchrun, torch.compile if asked."""
    net = model
    if ctx.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.compile:
        net = torch.compile(net)
    return net


def selection_key(selected_on: str) -> str:
    """The metric best_accuracy holds: validation accuracy, else test (the last epoch's, with nothing selected)."""
    return "val_accuracy" if selected_on == "validation" else "test_accuracy"


def target_reached(run: RunState, row: dict) -> bool:
    cfg = run.cfg
    return bool(cfg.target_accuracy) and row[selection_key(run.selected_on)] >= cfg.target_accuracy


def run_epochs(run: RunState) -> TrainResult:
    """Train epoch after epoch from where `run.progress` stands: train, evaluate, log, checkpoint; stop at the
    last epoch, at max_steps, or when target_accuracy is reached."""
    cfg, progress = run.cfg, run.progress
    stopped_early = False
    for epoch in range(progress.epoch, cfg.epochs):
        tally = train_one_epoch(run, epoch)
        check_finite(tally.sums[0], progress.step, run.run_dir, run.model)  # before the checkpoint: never save NaN
        row = tally.target_row or evaluate_and_record(run, epoch + tally.steps / run.steps_per_epoch, tally)
        run.log(format_row(row, epoch, cfg.epochs, run.selected_on, progress.best_accuracy))
        progress.epoch = epoch + 1
        save_epoch_checkpoint(run, row)
        dist.barrier()
        reached, at_max_steps = target_reached(run, row), progress.step == cfg.max_steps
        if reached or at_max_steps:
            planned_end = at_max_steps or (epoch == cfg.epochs - 1 and tally.steps == run.steps_per_epoch)
            stopped_early = reached and not planned_end
            break
    return TrainResult(run.run_dir, progress.history, progress.best_accuracy, stopped_early, run.selected_on)


@dataclass
class EpochTally:
    """What one epoch has done so far: training loss and accuracy sums, steps, and where the time went."""

    sums: torch.Tensor  # float64 on the device: loss sum, correct, count (this rank)
    steps: int = 0  # steps taken in this epoch
    data_s: float = 0.0  # seconds spent preparing batches
    step_s: float = 0.0  # seconds spent in whole steps, data included
    target_row: dict | None = None  # the mid-epoch evaluation that reached target_accuracy and ended the epoch

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, t_batch: float, t_ready: float) -> None:
        """Count one step: its loss and hits, and its times from t_batch (start) and t_ready (batch ready)."""
        self.sums[0] += loss.detach().double() * y.numel()
        self.sums[1] += (logits.argmax(1) == y).sum()
        self.sums[2] += y.numel()
        self.steps += 1
        self.data_s += t_ready - t_batch
        self.step_s += time.perf_counter() - t_batch

    def postfix(self, world_size: int) -> dict:
        """The progress bar's running loss, accuracy and images per second."""
        loss, correct, count = self.sums.tolist()
        return {"loss": f"{loss / count:.4f}", "acc": f"{correct / count:.2%}",
                "img_s": f"{count * world_size / self.step_s:.0f}"}


def train_one_epoch(run: RunState, epoch: int) -> EpochTally:
    """One pass over this rank's shard of the epoch's permutation (or up to max_steps), with the mid-epoch
    evaluations eval_every asks for; ends early if one of them reaches target_accuracy."""
    cfg, progress = run.cfg, run.progress
    perm = rank_shard(run.train_x.shape[0], cfg.seed, epoch, run.ctx.rank, run.ctx.world_size).to(run.device)
    tally = EpochTally(torch.zeros(3, dtype=torch.float64, device=run.device))
    run.net.train()
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not run.show_bars,
               leave=False, unit="step", dynamic_ncols=True)
    for i in bar:
        t_batch = time.perf_counter()
        x, y = next_batch(run, perm, i)
        t_ready = time.perf_counter()
        with run.autocast:
            logits = run.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(run.optimizer, lr_at(progress.step, cfg, run.steps_per_epoch))
        run.optimizer.step()
        if run.ema:
            update_ema(run.ema, run.model, cfg.ema, progress.step)
        progress.step += 1
        tally.add(loss, logits, y, t_batch, t_ready)
        if run.device.type == "cpu" or progress.step % cfg.log_every == 0:  # on CUDA, .item() would sync each step
            check_finite(loss, progress.step, run.run_dir)
        if progress.step % cfg.log_every == 0 and run.show_bars:
            bar.set_postfix(**tally.postfix(run.ctx.world_size))
        at_end = i == run.steps_per_epoch - 1 or progress.step == cfg.max_steps
        if cfg.eval_every and progress.step % cfg.eval_every == 0 and not at_end:
            row = evaluate_and_record(run, epoch + (i + 1) / run.steps_per_epoch, tally)
            (bar.write if run.show_bars else run.log)(f"step {progress.step}: {eval_summary(row)}")
            if target_reached(run, row):
                tally.target_row = row
                break
        if progress.step == cfg.max_steps:
            break
    bar.close()
    return tally


def next_batch(run: RunState, perm: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i of the epoch: an index slice of the uint8 images on the device, normalised and augmented."""
    idx = perm[i * run.local_batch:(i + 1) * run.local_batch]
    x = normalize(run.train_x.index_select(0, idx), run.cfg.normalization)  # index_select: 2x faster than [idx]
    if run.cfg.augment != "none":
        x = augment(x, run.cfg.augment)
    return run.memory_format(x), run.train_y.index_select(0, idx)


def evaluate_and_record(run: RunState, epoch_position: float, tally: EpochTally) -> dict:
    """Score the model on the validation hold-out (if any) and the test set, append the metrics row, keep
    the best checkpoint by the selection accuracy, and rewrite metrics.csv (rank 0)."""
    progress = run.progress
    sums = dist.all_reduce_sum(tally.sums.clone())
    with run.autocast if run.cfg.eval_amp else contextlib.nullcontext():  # bf16 scoring only when asked
        scores = {name: sharded_eval(run.scored, x, y, run.cfg, run.ctx, run.device)
                  for name, (x, y) in run.eval_sets.items()}
    val_loss, val_accuracy = scores.get("val", (None, None))
    row = {"step": progress.step, "epoch": round(epoch_position, 4),
           "train_loss": (sums[0] / sums[2].clamp(min=1)).item(),
           "train_accuracy": (sums[1] / sums[2].clamp(min=1)).item(),
           "val_loss": val_loss, "val_accuracy": val_accuracy,
           "test_loss": scores["test"][0], "test_accuracy": scores["test"][1],
           "lr": run.optimizer.param_groups[0]["lr"],
           "elapsed_s": round(time.perf_counter() - run.t_start, 3),
           "images_per_s": round(sums[2].item() / max(tally.step_s, 1e-9), 1),
           "data_fraction": round(tally.data_s / max(tally.step_s, 1e-9), 4)}
    progress.history.append(row)
    selected = row[selection_key(run.selected_on)]  # reduced over ranks, so every rank agrees
    fixed = run.selected_on == "nothing"  # every epoch replaces `best`: it is the last epoch's weights
    improved = fixed or selected > progress.best_accuracy
    progress.best_accuracy = selected if fixed else max(progress.best_accuracy, selected)
    if run.ctx.is_main:
        if improved:
            save_weights(run.run_dir / "best.safetensors", run.scored,
                         {**run.meta, "step": progress.step, "metrics": row})
        write_metrics(run.run_dir, progress.history)
    return row


def save_epoch_checkpoint(run: RunState, row: dict) -> None:
    """Write the `last` checkpoint (weights, optimiser, RNGs, progress) and, with cfg.plot, refresh curves.png (rank 0).
    A Ctrl-C during the write waits for it to finish, so the checkpoint reported afterwards is the one on disk."""
    if not run.ctx.is_main:
        return
    progress = run.progress
    state = {"optimizer": run.optimizer.state_dict(), "epoch": progress.epoch, "step": progress.step,
             "history": progress.history, "best_accuracy": progress.best_accuracy, "rng": rng_state(),
             "config": json.dumps(asdict(run.cfg))}
    if run.ema:  # resuming needs the raw weights too; the .safetensors file holds the average
        state["train_weights"] = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    with interrupts_deferred():
        save_checkpoint(run.run_dir, "last", run.scored, {**run.meta, "step": progress.step, "metrics": row}, state)
        run.checkpoint = (progress.epoch, progress.step)
    if run.cfg.plot:  # `digitlab plot RUN` draws it later from metrics.csv
        plot_curves_quietly(run.run_dir, progress.history)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until the block is done, then deliver it.
    Only the main thread can set signal handlers; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def interrupted_message(run: RunState) -> str:
    """What a Ctrl-C left behind and the command that goes on from there."""
    resume = f"digitlab train --resume {run.run_dir}"
    if run.checkpoint is None:
        return (f"interrupted before the first epoch ended: no checkpoint was saved in {run.run_dir}; "
                f"`{resume}` starts it from the beginning")
    epoch, step = run.checkpoint
    return (f"interrupted; saved: the checkpoint of epoch {epoch} (step {step}) in {run.run_dir}. "
            f"Continue with: {resume}")


def check_finite(loss: torch.Tensor, step: int, run_dir: Path, model: torch.nn.Module | None = None) -> None:
    """Stop on a NaN/inf loss (or, given a model, NaN/inf weights), naming the step; checkpoints on disk
    are from before it."""
    if not torch.isfinite(loss).all():
        problem = f"loss became {loss.item()}"
    elif model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
        problem = "weights became inf/NaN"
    else:
        return
    kept = (f"the last good checkpoint is kept in {run_dir}" if has_checkpoint(run_dir, "last")
            else f"no checkpoint was written yet in {run_dir}")
    raise TrainingError(f"{problem} at step {step}; stopped, {kept} (try a lower --lr)")




def eval_summary(row: dict) -> str:
    """Validation (when there is a hold-out) and test loss and accuracy of one evaluation."""
    has_val = row.get("val_accuracy") is not None
    val = f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%} | " if has_val else ""
    return f"{val}test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.2%}"


def format_row(row: dict, epoch: int, epochs: int, selected_on: str = "test", best: float | None = None) -> str:
    """One fixed-format summary line per epoch, ending with the best accuracy so far on the selection split
    (none with a fixed schedule: nothing is selected)."""
    shown = best is not None and selected_on != "nothing"
    best_part = f" | best {'val' if selected_on == 'validation' else 'test'} {best:.2%}" if shown else ""
    return (f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
            f" | {eval_summary(row)} | lr {row['lr']:.2e} | {row['elapsed_s']:.1f}s, {row['images_per_s']:.0f} img/s,"
            f" data {row['data_fraction']:.1%} of step{best_part}")


def plot_curves_quietly(run_dir: Path, history: list[dict]) -> None:
    """Refresh curves.png after each epoch; a plotting problem never stops training."""
    from digitlab.plots import plot_curves

    try:
        plot_curves(history, run_dir / "curves.png", title=run_dir.name)
    except Exception as e:  # noqa: BLE001 - figures are a convenience, the run is what matters
        log_line(f"warning: could not draw curves.png ({e})")
