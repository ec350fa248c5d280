"""The training loop: batch by slicing in-memory tensors, evaluate, log, checkpoint, resume.

    digitlab train --preset cnn-bn                   # a faithful recipe
    digitlab train --model lstm --epochs 2 --lr 3e-3 # any model, any field
    digitlab train --resume runs/<run> --epochs 3    # continue from the last checkpoint

The hot loop is: index slice, to device, float + normalise, forward, loss, backward, step. The data
part is timed separately and reported as `data_fraction` of each step.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from digitlab import distributed as dist
from digitlab.augment import augment
from digitlab.checkpoint import has_checkpoint, load_training_checkpoint, save_checkpoint, save_weights
from digitlab.config import TrainConfig, make_config
from digitlab.data import Dataset, load_dataset
from digitlab.device import cpu_has_native_bf16, pick_device, rng_state, set_rng_state, set_seed, training_autocast
from digitlab.ema import make_ema, update_ema
from digitlab.errors import DigitlabError, RunError
from digitlab.evaluate import predict_logits
from digitlab.models import create_model
from digitlab.normalize import normalize
from digitlab.optim import build_optimizer, lr_at, set_lr
from digitlab.synthetic import with_pen_digits
from digitlab.runs import new_run_dir, read_config, write_metrics, write_text_atomic


class TrainingError(DigitlabError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]  # one dict per evaluation, the rows of metrics.csv
    best_accuracy: float
    stopped_early: bool  # reached target_accuracy before the last epoch

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class Progress:
    """Where a run stands: what a resumed run picks up from its last checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    history: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0
    averaged_weights: dict | None = None  # with EMA, the saved average (the .safetensors file)


def restore(run_dir: Path, model, optimizer, cfg: TrainConfig, ctx: dist.DistContext, log) -> Progress:
    """Load the last checkpoint into model and optimiser, restore the RNGs, and say where to go on from."""
    if not has_checkpoint(run_dir, "last"):
        log(f"{run_dir} has no checkpoint yet (stopped in its first epoch): starting from the beginning")
        return Progress()
    if not ctx.is_main:
        dist.barrier()  # rank 0 loads first: it may finish a commit that a kill interrupted
    weights, _meta, state = load_training_checkpoint(run_dir, "last")
    if ctx.is_main:
        dist.barrier()
    model.load_state_dict(state.get("train_weights", weights))  # with EMA the .safetensors holds the average
    optimizer.load_state_dict(state["optimizer"])
    if ctx.is_main:
        set_rng_state(state["rng"])
    else:  # only rank 0's RNG state is saved; the others get a fresh, distinct stream
        set_seed(cfg.seed + ctx.rank + 1000 * state["epoch"])
    log(f"resuming {run_dir} at epoch {state['epoch']}, step {state['step']}")
    return Progress(state["epoch"], state["step"], state["history"], state["best_accuracy"], weights)


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


def prepare_run_dir(cfg: TrainConfig, ctx: dist.DistContext) -> Path:
    """Create (rank 0) and share the run folder; fail before training if it cannot be written."""
    run_dir = None
    if ctx.is_main:
        run_dir = Path(cfg.out) if cfg.out else new_run_dir(cfg)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_dir / "config.json", json.dumps(asdict(cfg), indent=2))
        except OSError as e:
            raise RunError(f"cannot write the run folder {run_dir}: {e.strerror or e}") from None
    return Path(dist.broadcast_object(str(run_dir) if run_dir else None))


def resume_config(run: str | Path, **overrides) -> TrainConfig:
    """The saved config of a run with `overrides` applied and `out` pointing back at it."""
    saved = asdict(read_config(Path(run)))
    return make_config(saved, **{**overrides, "out": str(run)})


@torch.no_grad()
def sharded_eval(model, images, labels, cfg: TrainConfig, ctx: dist.DistContext, device) -> tuple[float, float]:
    """Test loss and accuracy; each rank scores its shard and the sums are reduced."""
    x, y = images[ctx.rank::ctx.world_size], labels[ctx.rank::ctx.world_size]
    logits = predict_logits(model, x, cfg.normalization, cfg.eval_batch_size, device, cfg.tta)
    sums = torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(),
                         (logits.argmax(1) == y).sum().item(), float(y.numel())], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums.to(device)).cpu()
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def log_line(text: str) -> None:
    """Print and flush, so an epoch line reaches a log file the moment it is written."""
    print(text, flush=True)


def train(cfg: TrainConfig, dataset: Dataset | None = None, resume: bool = False,
          progress: bool = True, log=log_line) -> TrainResult:
    """Train per `cfg`, writing a run folder; with resume=True continue from cfg.out's last checkpoint."""
    cfg.validate()
    ctx = dist.context_from_env()
    device = dist.rank_device(ctx, pick_device(cfg.device))
    dist.setup(ctx, device)
    try:
        return _train(cfg, dataset, resume, progress and ctx.is_main, log if ctx.is_main else _quiet, ctx, device)
    finally:
        dist.cleanup()


def _quiet(*_args, **_kwargs) -> None:
    pass


def _train(cfg, dataset, resume, progress, log, ctx: dist.DistContext, device: torch.device) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif ctx.enabled and device.type == "cpu":  # share the cores between the local ranks
        torch.set_num_threads(max(1, (torch.get_num_threads()) // ctx.local_world_size))
    local_batch = dist.check_batch_size(ctx, cfg.batch_size)
    set_seed(cfg.seed + ctx.rank)
    ds = dataset or load_dataset(cfg.dataset, cfg.data_dir, progress=progress)
    run_dir = prepare_run_dir(cfg, ctx)

    model = create_model(cfg.model, **cfg.model_args).to(device)
    is_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if device.type == "cuda" and cfg.channels_last and is_conv:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    restored = restore(run_dir, model, optimizer, cfg, ctx, log) if resume else Progress()
    start_epoch, step, history, best_acc = restored.epoch, restored.step, restored.history, restored.best_accuracy
    ema = make_ema(model, restored.averaged_weights if step else None) if cfg.ema else None
    scored = ema or model  # what is evaluated and saved: the averaged weights when ema > 0
    net = model
    if ctx.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.compile:
        net = torch.compile(net)
    autocast = training_autocast(device, cfg.amp, cfg.cpu_amp)
    if cfg.cpu_amp and device.type == "cpu" and not cpu_has_native_bf16():
        log("cpu_amp: this CPU has no native bf16 (AMX or AVX512-BF16), so training stays fp32")

    train_x, train_y = with_pen_digits(ds.train_images, ds.train_labels, cfg.pen_digits)  # after any hold-out
    train_x, train_y = train_x.to(device), train_y.to(device)  # uint8 on the device: 47 MB for MNIST
    n = (train_x.shape[0] // ctx.world_size) * ctx.world_size  # equal shards keep ranks in step
    steps_per_epoch = math.ceil(n // ctx.world_size / local_batch)
    meta = {"model": cfg.model, "model_args": cfg.model_args, "normalization": cfg.normalization,
            "dataset": cfg.dataset, "classes": list(ds.classes), "preset": cfg.preset}
    t_start = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    stopped_early = False

    def evaluate_now(epoch_pos: float, train_sums: torch.Tensor, data_s: float, step_s: float) -> dict:
        nonlocal best_acc
        sums = dist.all_reduce_sum(train_sums.clone())
        test_loss, test_acc = sharded_eval(scored, ds.test_images, ds.test_labels, cfg, ctx, device)
        row = {"step": step, "epoch": round(epoch_pos, 4),
               "train_loss": (sums[0] / sums[2].clamp(min=1)).item(),
               "train_accuracy": (sums[1] / sums[2].clamp(min=1)).item(),
               "test_loss": test_loss, "test_accuracy": test_acc, "lr": optimizer.param_groups[0]["lr"],
               "elapsed_s": round(time.perf_counter() - t_start, 3),
               "images_per_s": round(sums[2].item() / max(step_s, 1e-9), 1),
               "data_fraction": round(data_s / max(step_s, 1e-9), 4)}
        history.append(row)
        improved = test_acc > best_acc  # test_acc is reduced over ranks, so every rank agrees
        best_acc = max(best_acc, test_acc)
        if ctx.is_main:
            if improved:
                save_weights(run_dir / "best.safetensors", scored, {**meta, "step": step, "metrics": row})
            write_metrics(run_dir, history)
        return row

    for epoch in range(start_epoch, cfg.epochs):
        perm = rank_shard(train_x.shape[0], cfg.seed, epoch, ctx.rank, ctx.world_size).to(device)  # once per epoch
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        data_s = step_s = 0.0
        net.train()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, unit="step", dynamic_ncols=True)
        for i in bar:
            t0 = time.perf_counter()
            idx = perm[i * local_batch:(i + 1) * local_batch]
            x = normalize(train_x.index_select(0, idx), cfg.normalization)  # index_select: 2x faster than [idx]
            if cfg.augment != "none":
                x = augment(x, cfg.augment)
            y = train_y.index_select(0, idx)
            if device.type == "cuda" and cfg.channels_last and is_conv:
                x = x.contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            set_lr(optimizer, lr_at(step, cfg, steps_per_epoch))
            with autocast:
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema:
                update_ema(ema, model, cfg.ema, step)
            step += 1
            sums[0] += loss.detach().double() * y.numel()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
            t2 = time.perf_counter()
            data_s, step_s = data_s + (t1 - t0), step_s + (t2 - t0)
            if device.type == "cpu" or step % cfg.log_every == 0:
                check_finite(loss, step, run_dir)
            if step % cfg.log_every == 0 and progress:
                bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.4f}",
                                acc=f"{sums[1].item() / sums[2].item():.2%}",
                                img_s=f"{sums[2].item() * ctx.world_size / step_s:.0f}")
            at_end = i == steps_per_epoch - 1 or step == cfg.max_steps
            if cfg.eval_every and step % cfg.eval_every == 0 and not at_end:
                row = evaluate_now(epoch + (i + 1) / steps_per_epoch, sums, data_s, step_s)
                if progress:
                    bar.write(f"step {step}: test loss {row['test_loss']:.4f}, acc {row['test_accuracy']:.2%}")
                if cfg.target_accuracy and row["test_accuracy"] >= cfg.target_accuracy:
                    stopped_early = True
                    break
            if step == cfg.max_steps:
                break
        bar.close()
        check_finite(sums[0], step, run_dir, model)  # before the checkpoint: never save inf/NaN weights
        row = history[-1] if stopped_early else evaluate_now(epoch + (i + 1) / steps_per_epoch, sums, data_s, step_s)
        log(format_row(row, epoch, cfg.epochs))
        if ctx.is_main:
            state = {"optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                     "history": history, "best_accuracy": best_acc, "rng": rng_state(),
                     "config": json.dumps(asdict(cfg))}
            if ema:  # resuming needs the raw weights too; the .safetensors file holds the average
                state["train_weights"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_checkpoint(run_dir, "last", scored, {**meta, "step": step, "metrics": row}, state)
            plot_curves_quietly(run_dir, history)
        dist.barrier()
        if cfg.target_accuracy and row["test_accuracy"] >= cfg.target_accuracy:
            stopped_early = True
        if stopped_early or step == cfg.max_steps:
            break
    return TrainResult(run_dir, history, best_acc, stopped_early)


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


def format_row(row: dict, epoch: int, epochs: int) -> str:
    """One fixed-format summary line per epoch."""
    return (f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
            f" | test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.2%}"
            f" | lr {row['lr']:.2e} | {row['elapsed_s']:.1f}s, {row['images_per_s']:.0f} img/s,"
            f" data {row['data_fraction']:.1%} of step")


def plot_curves_quietly(run_dir: Path, history: list[dict]) -> None:
    """Refresh curves.png after each epoch; a plotting problem never stops training."""
    from digitlab.plots import plot_curves

    try:
        plot_curves(history, run_dir / "curves.png", title=run_dir.name)
    except Exception as e:  # noqa: BLE001 - figures are a convenience, the run is what matters
        log_line(f"warning: could not draw curves.png ({e})")
