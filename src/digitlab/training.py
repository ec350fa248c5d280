"""The training loop: batch by slicing in-memory tensors, evaluate, log, checkpoint, resume.

    digitlab train --preset cnn-bn                   # a faithful recipe
    digitlab train --model lstm --epochs 2 --lr 3e-3 # any model, any field
    digitlab train --resume runs/<run> --epochs 3    # continue from the last checkpoint

A run is: setup() (threads, seed, data and its validation hold-out, run folder, model, optimiser, resume,
EMA, DDP/compile), then the loop in run_epochs() and train_one_epoch(), which reads top to bottom:

    per epoch:  each step (batch, forward, loss, zero_grad, backward, lr, step, EMA), with an evaluation every
                cfg.eval_every steps; at the end of the epoch an evaluation, then the `last` checkpoint (a run
                that max_steps or its target stops mid-epoch checkpoints there too, with its step in the epoch:
                a resume goes on with the same epoch's data order from that step)
    evaluate(): score the validation hold-out and the test set, append the metrics row, keep `best`

Everything that reports (metrics.csv, the progress bar and epoch lines, curves.png, TensorBoard, a sweep's pruner)
listens to the loop's events (events.py); what picks `best` and stops at target_accuracy is selection.py. The
data part of each step is timed separately and reported as `data_fraction`.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from digitlab import distributed as dist
from digitlab.augment import augment
from digitlab.checkpoint import has_checkpoint, save_checkpoint, save_weights
from digitlab.config import TrainConfig
from digitlab.data import Dataset, load_dataset
from digitlab.device import (cpu_has_native_bf16, pick_device, rng_state, set_seed, training_autocast,
                             training_threads, use_channels_last)
from digitlab.ema import make_ema, update_ema
from digitlab.errors import ConfigError, DigitlabError, RunError
from digitlab.evaluation import predict_logits
from digitlab.events import Events, Subscriber, default_subscribers
from digitlab.models import create_model
from digitlab.normalize import normalize
from digitlab.optim import LeanAdamW, build_optimizer, lr_at, set_lr
from digitlab.resume import Progress, restore
from digitlab.runs import prepare_run_dir
from digitlab.selection import Selection
from digitlab.shapes import InputShape
from digitlab.split import stratified_split


INIT_IMAGES = 5000  # what a data-dependent first layer is computed from: 3.9M 3x3 patches, a few ms


class TrainingError(DigitlabError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a container or a scheduler stopping the job) during training: raised where Ctrl-C raises
    KeyboardInterrupt, so both end a run the same way (the lock released, the last checkpoint kept, a message)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training. Still a KeyboardInterrupt; its message says what was saved and how to
    go on; exit_code is the shell's for the signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, run_dir: Path, exit_code: int = 130):
        super().__init__(message)
        self.run_dir = run_dir
        self.exit_code = exit_code


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]  # one dict per evaluation, the rows of metrics.csv
    best_accuracy: float  # the best checkpoint's accuracy on the split it was selected on (`selected_on`)
    stopped_early: bool  # stopped before the planned last epoch or max_steps because target_accuracy was reached
    selected_on: str = "test"  # what `best` and target_accuracy used: "validation" (val_size > 0), "test", or
    # "nothing" (fixed_schedule: no best.safetensors; the last epoch's weights are the run's model)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def best_row(self) -> dict:
        """The evaluation the best checkpoint was saved at (the first to reach best_accuracy; with a fixed
        schedule, the last)."""
        return Selection(self.selected_on).best_row(self.history, self.best_accuracy)


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
def sharded_eval(model, images, labels, cfg: TrainConfig, ctx: dist.DistContext, device,
                 kept: list | None = None) -> tuple[float, float]:
    """Loss and accuracy on a whole set, each rank scoring its shard and the sums reduced. `kept`, if given,
    receives this rank's logits (the whole set's with one process), for the figures a run ends with."""
    x, y = images[ctx.rank::ctx.world_size], labels[ctx.rank::ctx.world_size]
    logits = predict_logits(model, x, cfg.normalization, cfg.eval_batch_size, device, cfg.tta, cfg.tta_mirror)
    sums = torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(),
                         (logits.argmax(1) == y).sum().item(), float(y.numel())], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums.to(device)).cpu()
    if kept is not None:
        kept.append(logits)
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def log_line(text: str) -> None:
    """Print and flush, so an epoch line reaches a log file the moment it is written."""
    print(text, flush=True)



def train(cfg: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
          progress: bool = True, log=log_line, force: bool = False,
          subscribers: list[Subscriber] | tuple = ()) -> TrainResult:
    """Train per `cfg`, writing a run folder; with resume=True continue from cfg.out's last checkpoint.
    `progress` shows tqdm bars (rank 0 only, where a terminal or a notebook shows them: digitlab.bars).
    Ctrl-C raises TrainingInterrupted, saying what was saved.
    force=True lets a new run take a folder that holds files (a previous run's are removed first).
    `subscribers` hear the run's events after the built-in ones (events.py): a tracker, a sweep's pruner."""
    cfg.validate()
    ctx = dist.context_from_env()
    device = dist.rank_device(ctx, pick_device(cfg.device))
    dist.setup(ctx, device)
    try:
        # the run folder's lock and the subscribers, closed on every way out (SIGTERM's too)
        with sigterm_as_interrupt(), contextlib.ExitStack() as held:
            run = None
            try:
                run = setup(cfg, dataset, resume, progress and ctx.is_main, log if ctx.is_main else _quiet, ctx,
                            device, held, force)
                if not resume:  # a resumed run said it when it started; its epoch lines name the selection split
                    run.log(selection_note(run))
                run.events = Events([*default_subscribers(run), *subscribers])
                held.callback(run.events.close)
                run.events.emit("on_start", run)
                result = run_epochs(run)
                run.events.emit("on_finish", run, result)
            except KeyboardInterrupt as e:
                if run is None:  # still setting up: no run folder content to speak of
                    raise
                # The selection line is logged only once `run` exists, so a Ctrl-C sent on seeing it always
                # gets the message saying what was saved.
                terminated = isinstance(e, Terminated)
                raise TrainingInterrupted(interrupted_message(run, "terminated (SIGTERM)" if terminated else
                                                              "interrupted"), run.run_dir,
                                          143 if terminated else 130) from None
            except RuntimeError as e:  # a collective whose other end died: one line, not the backend's traceback
                if ctx.enabled and dist.is_peer_lost(e):
                    raise dist.peer_lost(ctx, e) from None
                raise
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
    checkpoint: tuple[float, int] | None  # (epochs done, step) of the `last` checkpoint on disk, None before the first
    train_size: int  # the dataset's training images, before the hold-out and any pen digits
    selection: Selection  # what picks `best` and stops at target_accuracy
    events: Events = field(default_factory=lambda: Events([]))  # who hears the loop (set once the run starts)
    # (set name, logits, images, labels) of the latest evaluation's last set scored, whole (one process only)
    last_scored: tuple[str, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def selected_on(self) -> str:
        return self.selection.on


def setup(cfg: TrainConfig, dataset: Dataset | None, resume: bool, show_bars: bool, log,
          ctx: dist.DistContext, device: torch.device, held: contextlib.ExitStack, force: bool) -> RunState:
    """Threads, seed, data and its hold-out, run folder, model, optimiser, resumed progress, EMA, DDP/compile."""
    set_threads(cfg, ctx, device)
    local_batch = dist.check_batch_size(ctx, cfg.batch_size)
    set_seed(cfg.seed + ctx.rank)
    ds = dataset or load_dataset(cfg.dataset, cfg.data_dir, progress=show_bars)
    shape = dataset_shape(ds, cfg)
    train_x, train_y, eval_sets = split_data(ds, cfg.val_size, cfg.eval_test)  # a bad val_size fails here, early
    if cfg.pen_digits:  # imported only then: the pen generator and preprocessing cost ~36 ms of start-up
        from digitlab.synthetic import with_pen_digits

        train_x, train_y = with_pen_digits(train_x, train_y, cfg.pen_digits)  # pen digits only train, never validate
    if cfg.non_digits:
        from digitlab.synthetic import with_non_digits

        train_x, train_y = with_non_digits(train_x, train_y, cfg.non_digits)  # labelled OUTLIER (-1)
    run_dir = prepare_run_dir(cfg, ctx, resume, force, held, log)
    model = create_model(cfg.model, **cfg.model_args, **shape.to_meta()).to(device)
    if not resume:  # a resumed run has its data-dependent layers in the checkpoint
        init_from_data(model, train_x, cfg.normalization, device)
    memory_format = channels_last_for(model, cfg, device)
    optimizer = build_optimizer(model, cfg)
    progress = restore(run_dir, model, optimizer, cfg, ctx, log) if resume else Progress()
    ema = make_ema(model, progress.averaged_weights if progress.step else None) if cfg.ema else None
    if cfg.cpu_amp and device.type == "cpu" and not cpu_has_native_bf16():
        log("cpu_amp: this CPU has no native bf16 (AMX or AVX512-BF16), so training stays fp32")
    n = (train_x.shape[0] // ctx.world_size) * ctx.world_size  # equal shards keep ranks in step
    steps_per_epoch = math.ceil(n // ctx.world_size / local_batch)
    meta = {"model": cfg.model, "model_args": cfg.model_args, "normalization": cfg.normalization,
            "dataset": ds.name, "classes": list(ds.classes), "preset": cfg.preset, **shape.to_meta()}
    elapsed = progress.history[-1]["elapsed_s"] if progress.history else 0.0
    return RunState(
        cfg=cfg, ctx=ctx, device=device, run_dir=run_dir, log=log, show_bars=show_bars, model=model,
        net=wrap_for_training(model, cfg, ctx, device), scored=ema or model, ema=ema, optimizer=optimizer,
        autocast=training_autocast(device, cfg.amp, cfg.cpu_amp), memory_format=memory_format,
        train_x=train_x.to(device), train_y=train_y.to(device), eval_sets=eval_sets, local_batch=local_batch,
        steps_per_epoch=steps_per_epoch, meta=meta, progress=progress, t_start=time.perf_counter() - elapsed,
        checkpoint=(progress.epoch + progress.epoch_step / steps_per_epoch, progress.step) if progress.step else None,
        train_size=ds.train_images.shape[0], selection=Selection.for_config(cfg))


def dataset_shape(ds: Dataset, cfg: TrainConfig) -> InputShape:
    """The shape the model is built for, from the dataset; pen digits and non-digits are MNIST-shaped, so they
    only join a dataset of that shape."""
    shape = ds.shape
    if (cfg.pen_digits or cfg.non_digits) and not shape.is_mnist:
        raise ConfigError(f"pen_digits and non_digits are 1x28x28 pictures; {ds.name} has {shape}")
    return shape


def init_from_data(model: torch.nn.Module, train_x: torch.Tensor, normalization: str, device: torch.device) -> None:
    """Give a model with data-dependent layers (an `init_from_data` method: DigitNet's whitening conv) its first
    INIT_IMAGES training images, normalised as it will see them; the validation hold-out is never among them."""
    if callable(getattr(model, "init_from_data", None)):
        model.init_from_data(normalize(train_x[:INIT_IMAGES], normalization).to(device))


def set_threads(cfg: TrainConfig, ctx: dist.DistContext, device: torch.device) -> None:
    """cfg.threads, or with 0 the CPUs idle at the start (device.training_threads): torch's threads spinning
    beside another job's run a training several times slower than one thread each (docs/benchmarks.md)."""
    torch.set_num_threads(training_threads(cfg.threads, device, ctx.local_world_size if ctx.enabled else 1))


def split_data(ds: Dataset, val_size: int, eval_test: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Training images and labels without the validation hold-out, and the sets evaluated: "val" (with
    val_size), "test" (unless eval_test is off: a sweep's trials never read it)."""
    test = {"test": (ds.test_images, ds.test_labels)} if eval_test else {}
    if not val_size:
        return ds.train_images, ds.train_labels, test
    train_idx, val_idx = stratified_split(ds.train_labels, val_size)
    return (ds.train_images[train_idx], ds.train_labels[train_idx],
            {"val": (ds.train_images[val_idx], ds.train_labels[val_idx]), **test})


def selection_note(run: RunState) -> str:
    """One line saying what picks the best checkpoint (and stops at target_accuracy)."""
    held = run.eval_sets["val"][0].shape[0] if "val" in run.eval_sets else 0
    return run.selection.note(run.train_x.shape[0], held, run.train_size, "test" in run.eval_sets)


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


def run_epochs(run: RunState) -> TrainResult:
    """Train epoch after epoch from where `run.progress` stands; stop after the last epoch, at max_steps, or once
    an evaluation reaches target_accuracy."""
    cfg, progress = run.cfg, run.progress
    stopped_early = False
    for epoch in range(progress.epoch, cfg.epochs):
        # train: every step of the epoch, with the evaluations eval_every asks for in between
        tally = train_one_epoch(run, epoch)
        check_finite(tally.sums[0], progress.step, run.run_dir, run.model)  # before the checkpoint: never save NaN
        # evaluate at the epoch's end, or where max_steps stopped it (unless a mid-epoch evaluation reached the
        # target and ended it)
        position = epoch + progress.epoch_step / run.steps_per_epoch
        row = tally.target_row or evaluate(run, position, tally, epoch_end=True)
        run.events.emit("on_epoch_end", run, row)
        # checkpoint: `last` holds the weights, the optimiser, the RNGs, the history and the step in the epoch
        if progress.epoch_step == run.steps_per_epoch:
            progress.epoch, progress.epoch_step = epoch + 1, 0
        save_epoch_checkpoint(run, row)
        run.events.emit("on_checkpoint", run, row)
        dist.barrier()
        # stop: at the target, or at max_steps
        reached, at_max_steps = run.selection.reached(row), progress.step == cfg.max_steps
        if reached or at_max_steps:
            planned_end = at_max_steps or progress.epoch == cfg.epochs
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
        digits = (y >= 0).sum()  # outlier-exposure images (label -1) count in the loss, not in the accuracy
        self.sums[0] += loss.detach().double() * digits
        self.sums[1] += (logits.argmax(1) == y).sum()
        self.sums[2] += digits
        self.steps += 1
        self.data_s += t_ready - t_batch
        self.step_s += time.perf_counter() - t_batch

    def postfix(self, world_size: int) -> dict:
        """The progress bar's running loss, accuracy and images per second."""
        loss, correct, count = self.sums.tolist()
        return {"loss": f"{loss / count:.4f}", "acc": f"{correct / count:.2%}",
                "img_s": f"{count * world_size / self.step_s:.0f}"}


def train_one_epoch(run: RunState, epoch: int) -> EpochTally:
    """One pass over this rank's shard of the epoch's permutation (or up to max_steps), from the step in the epoch
    a resumed run stopped at, with the mid-epoch evaluations eval_every asks for; ends early if one of them
    reaches target_accuracy. The tally counts only the steps taken here."""
    cfg, progress = run.cfg, run.progress
    start = resume_position(run)
    perm = rank_shard(run.train_x.shape[0], cfg.seed, epoch, run.ctx.rank, run.ctx.world_size).to(run.device)
    tally = EpochTally(torch.zeros(3, dtype=torch.float64, device=run.device))
    run.net.train()
    run.events.emit("on_epoch_start", run, epoch)
    for i in range(start, run.steps_per_epoch):
        t_batch = time.perf_counter()
        x, y = next_batch(run, perm, i)
        t_ready = time.perf_counter()
        loss, logits = train_step(run, x, y)
        progress.epoch_step = i + 1
        tally.add(loss, logits, y, t_batch, t_ready)
        if run.device.type == "cpu" or progress.step % cfg.log_every == 0:  # on CUDA, .item() would sync each step
            check_finite(loss, progress.step, run.run_dir)
        run.events.emit("on_step", run, tally)
        if progress.step == cfg.max_steps or i == run.steps_per_epoch - 1:
            break  # the epoch's own evaluation follows in run_epochs
        if cfg.eval_every and progress.step % cfg.eval_every == 0:
            row = evaluate(run, epoch + (i + 1) / run.steps_per_epoch, tally, epoch_end=False)
            if run.selection.reached(row):
                tally.target_row = row
                break
    return tally


def resume_position(run: RunState) -> int:
    """The step in the current epoch to go on from: 0, or where a run cut by max_steps stopped. One past the
    epoch's last step cannot be (the checkpoint was saved with another world size, or tampered with)."""
    start = run.progress.epoch_step
    if start >= run.steps_per_epoch:
        raise RunError(f"{run.run_dir}: the checkpoint stopped at step {start} of an epoch, but an epoch here has "
                       f"{run.steps_per_epoch} steps; resume it with the number of processes it was trained with")
    return start


def train_step(run: RunState, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on batch (x, y): forward, loss, zero_grad, backward, lr, step, then the EMA average.
    Returns the loss and the logits, for the epoch's running figures."""
    cfg, progress = run.cfg, run.progress
    with run.autocast:
        logits = run.net(x)
        loss = training_loss(logits.float(), y, cfg)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    set_lr(run.optimizer, lr_at(progress.step, cfg, run.steps_per_epoch))
    run.optimizer.step()
    if run.ema:
        update_ema(run.ema, run.model, cfg.ema, progress.step)
    progress.step += 1
    return loss, logits


def training_loss(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy on the digits; with outlier exposure (cfg.non_digits), plus outlier_weight times the
    cross-entropy of the non-digits (label -1) to the uniform answer, so that the model learns low confidence
    on what is no digit and an energy threshold can refuse it."""
    if not cfg.non_digits:
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    digit = (y >= 0).to(logits.dtype)  # masks rather than indexing: no host sync on CUDA, no empty-batch NaN
    ce = F.cross_entropy(logits, y.clamp(min=0), label_smoothing=cfg.label_smoothing, reduction="none")
    to_uniform = -F.log_softmax(logits, dim=1).mean(dim=1)
    return ((ce * digit).sum() / digit.sum().clamp(min=1)
            + cfg.outlier_weight * (to_uniform * (1 - digit)).sum() / (1 - digit).sum().clamp(min=1))


def next_batch(run: RunState, perm: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i of the epoch: an index slice of the uint8 images on the device, normalised and augmented."""
    idx = perm[i * run.local_batch:(i + 1) * run.local_batch]
    x = normalize(run.train_x.index_select(0, idx), run.cfg.normalization)  # index_select: 2x faster than [idx]
    if run.cfg.augment != "none":
        x = augment(x, run.cfg.augment)
    return run.memory_format(x), run.train_y.index_select(0, idx)


def evaluate(run: RunState, epoch_position: float, tally: EpochTally, epoch_end: bool) -> dict:
    """Score the model on the validation hold-out (if any) and the test set (unless eval_test is off), append
    the metrics row, save `best` when the selection rule says so (rank 0), and tell the subscribers."""
    progress = run.progress
    sums = dist.all_reduce_sum(tally.sums.clone())
    scores = score_sets(run)
    row = {"step": progress.step, "epoch": round(epoch_position, 4),
           "train_loss": (sums[0] / sums[2].clamp(min=1)).item(),
           "train_accuracy": (sums[1] / sums[2].clamp(min=1)).item(),
           "val_loss": scores.get("val", (None, None))[0], "val_accuracy": scores.get("val", (None, None))[1],
           "test_loss": scores.get("test", (None, None))[0], "test_accuracy": scores.get("test", (None, None))[1],
           "lr": run.optimizer.param_groups[0]["lr"],
           "elapsed_s": round(time.perf_counter() - run.t_start, 3),
           "images_per_s": round(sums[2].item() / max(tally.step_s, 1e-9), 1),
           "data_fraction": round(tally.data_s / max(tally.step_s, 1e-9), 4)}
    progress.history.append(row)
    improved = run.selection.improves(row, progress.best_accuracy)  # scores are reduced: every rank agrees
    if improved:
        progress.best_accuracy = run.selection.score(row)
        if run.ctx.is_main and run.selection.keeps_best:
            save_weights(run.run_dir / "best.safetensors", run.scored,
                         {**run.meta, "step": progress.step, "metrics": row})
        elif run.ctx.is_main:  # a run begun by a digitlab that wrote one: `best` would name older weights
            (run.run_dir / "best.safetensors").unlink(missing_ok=True)
    run.events.emit("on_evaluation", run, row, epoch_end)
    return row


def score_sets(run: RunState) -> dict[str, tuple[float, float]]:
    """(loss, accuracy) of every evaluated set, keeping the last set's logits for the figures a run ends with."""
    scores = {}
    with run.autocast if run.cfg.eval_amp else contextlib.nullcontext():  # bf16 scoring only when asked
        for name, (x, y) in run.eval_sets.items():
            kept: list[torch.Tensor] = []
            scores[name] = sharded_eval(run.scored, x, y, run.cfg, run.ctx, run.device, kept)
            if run.ctx.world_size == 1 and kept:
                run.last_scored = (name, kept[0], x, y)
    return scores


def save_epoch_checkpoint(run: RunState, row: dict) -> None:
    """Write the `last` checkpoint (weights, optimiser, RNGs, progress) on rank 0. A Ctrl-C during the write
    waits for it to finish, so the checkpoint reported afterwards is the one on disk."""
    if not run.ctx.is_main:
        return
    progress = run.progress
    state = {"optimizer": run.optimizer.state_dict(), "epoch": progress.epoch, "step": progress.step,
             "epoch_step": progress.epoch_step, "history": progress.history, "best_accuracy": progress.best_accuracy, "rng": rng_state(),
             "config": json.dumps(asdict(run.cfg))}
    if run.ema:  # resuming needs the raw weights too; the .safetensors file holds the average
        state["train_weights"] = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    with interrupts_deferred():
        save_checkpoint(run.run_dir, "last", run.scored, {**run.meta, "step": progress.step, "metrics": row}, state)
        run.checkpoint = (progress.epoch + progress.epoch_step / run.steps_per_epoch, progress.step)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated, as Ctrl-C raises KeyboardInterrupt: without it, Python dies at
    once on SIGTERM, silently, leaving the run folder's .lock behind. Only the main thread can set signal
    handlers; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum, _frame) -> None:
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) or SIGTERM that arrives inside the block until the block is done, then deliver it.
    Only the main thread can set signal handlers; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, _frame: received.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(received):  # each signal once, in the order they came
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)  # Python's SIGINT handler raises KeyboardInterrupt, sigterm_as_interrupt's Terminated
        elif handler == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)


def interrupted_message(run: RunState, what: str = "interrupted") -> str:
    """What a Ctrl-C (or SIGTERM: `what`) left behind and the command that goes on from there."""
    resume = f"digitlab train --resume {run.run_dir}"
    if run.checkpoint is None:
        return (f"{what} before the first epoch ended: no checkpoint was saved in {run.run_dir}; "
                f"`{resume}` starts it from the beginning")
    epoch, step = run.checkpoint
    return (f"{what}; saved: the checkpoint of epoch {epoch:.4g} (step {step}) in {run.run_dir}. "
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

