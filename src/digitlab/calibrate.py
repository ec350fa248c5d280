"""Fitting a checkpoint's temperature on its validation hold-out and storing it in the checkpoint's metadata.

    CalibrateAtEnd()                            # a training subscriber: best and last, once the run has finished
    calibrate_run("runs/<run>")                 # `digitlab calibrate RUN`: refit an existing run's checkpoints
    calibrate_run("model.safetensors", val_size=5000)   # a lone weights file, on its dataset's hold-out

The temperature lives in each .safetensors file's metadata (calibration.META_KEY), beside the weights it was
fitted for: a checkpoint rewritten by a resumed training carries none until that training finishes (or
`digitlab calibrate` runs), so a temperature never outlives its weights, and --force removes it with them.
Logits are scored without test-time augmentation, as `predict`, the Predictor and the server score them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from digitlab import non_digits
from digitlab.abstain import Scored, fit_abstention
from digitlab.calibration import META_KEY, NO_HOLD_OUT, Calibration
from digitlab.checkpoint import resolve_checkpoint, update_metadata
from digitlab.errors import ConfigError, DigitlabError, RunError
from digitlab.evaluation import predict_logits
from digitlab.events import Subscriber
from digitlab.runs import load_run

if TYPE_CHECKING:
    from digitlab.training import RunState, TrainResult

CHECKPOINTS = ("best", "last")  # what a training serves and resumes from: both get a temperature
NON_DIGITS = 1000  # generated non-digits (validation seeds) an abstention is fitted on


@dataclass
class Calibrated:
    """One checkpoint file and the record now in its metadata."""

    path: Path
    calibration: Calibration


def calibrate_file(path: Path, images: torch.Tensor, labels: torch.Tensor, dataset: str, val_size: int,
                   device: torch.device | str = "cpu") -> Calibrated:
    """Fit T for the weights in `path` on validation images (uint8) and labels, then the abstention (abstain.py)
    on the same images and the generated non-digits' validation part; write both into its metadata."""
    loaded = load_run(path)
    if loaded.dataset != dataset:
        raise RunError(f"{path} is a {loaded.dataset} model; its temperature cannot be fitted on {dataset}")
    model = loaded.model.to(device)
    logits = predict_logits(model, images, loaded.normalization, 1000, device).numpy()
    calibration = Calibration.fitted_on(logits, labels.cpu().numpy(), dataset, val_size)
    if dataset == "mnist" and loaded.shape.is_mnist:  # the generated non-digits are MNIST-like drawings
        others, other_extents, _ = non_digits.validation_set(NON_DIGITS)
        other_logits = predict_logits(model, torch.from_numpy(others), loaded.normalization, 1000, device).numpy()
        pixels = images.cpu().numpy()
        record, _ = fit_abstention(Scored(pixels, logits, digit_extents(pixels)),
                                   Scored(others, other_logits, other_extents), calibration.temperature,
                                   abstain_fitted_on(dataset, val_size, NON_DIGITS))
        calibration = replace(calibration, abstain=record.to_meta())
    update_metadata(path, {META_KEY: calibration.to_meta()})
    return Calibrated(path, calibration)


def digit_extents(images: np.ndarray) -> np.ndarray:
    """Each validation digit's ink extent as if drawn on the page's canvas (canvas_to_mnist_measured)."""
    from digitlab.preprocess import canvas_to_mnist_measured

    return np.array([canvas_to_mnist_measured(image)[1] for image in images], np.float64)


def abstain_fitted_on(dataset: str, val_size: int, others: int) -> str:
    """What an abstention was fitted on, in words, for its record."""
    return (f"{dataset} validation hold-out ({val_size:,} images) and {others:,} generated non-digits "
            "(digitlab.non_digits validation seeds)")


def mark_uncalibrated(path: Path, reason: str) -> Calibrated:
    """Record in `path` that its probabilities are raw (T = 1), and why."""
    calibration = Calibration(reason=reason)
    update_metadata(path, {META_KEY: calibration.to_meta()})
    return Calibrated(path, calibration)


def summary(done: list[Calibrated]) -> str:
    """One line: each checkpoint's T and what it did to the validation NLL and ECE (once for files whose weights
    are the same, as `best` and `last` often are)."""
    if not done[0].calibration.fitted:
        return f"calibration: none, {done[0].calibration.reason}"
    names: dict[float, tuple[Calibration, list[str]]] = {}
    for item in done:
        names.setdefault(item.calibration.temperature, (item.calibration, []))[1].append(item.path.name)
    parts = [f"{' and '.join(files)} temperature {c.temperature:.4g} (validation NLL {c.validation['nll_before']:.4f}"
             f" -> {c.validation['nll_after']:.4f}, ECE {c.validation['ece_before']:.2%} -> "
             f"{c.validation['ece_after']:.2%})" for c, files in names.values()]
    return f"calibration on {done[0].calibration.val_size:,} validation images: " + "; ".join(parts) + \
        abstain_summary(done[0].calibration)


def abstain_summary(calibration: Calibration) -> str:
    """The refusal rules fitted beside T, in a few words (nothing when none were fitted)."""
    if calibration.abstain is None:
        return ""
    a = calibration.abstention
    return (f"; refuses as too small under {a.min_extent:.0%} of the canvas or over {a.max_thickness:g} erosions "
            f"thick, as not a digit when {a.score} > "
            f"{a.threshold:.4g} (validation: {a.validation['digits_refused']:.1%} of digits, "
            f"{a.validation['non_digits_refused']:.1%} of generated non-digits)")


class CalibrateAtEnd(Subscriber):
    """At the end of a finished training, fit `best` and `last` on the run's validation hold-out (or record that
    there is none). A failure is a warning naming the command that retries: the weights are already safe."""

    def on_finish(self, run: RunState, result: TrainResult) -> None:
        paths = [run.run_dir / f"{name}.safetensors" for name in CHECKPOINTS]
        try:
            if "val" not in run.eval_sets:
                done = [mark_uncalibrated(path, NO_HOLD_OUT) for path in paths if path.is_file()]
            else:
                images, labels = run.eval_sets["val"]
                done = [calibrate_file(path, images, labels, run.meta["dataset"], run.cfg.val_size, run.device)
                        for path in paths if path.is_file()]
        except (DigitlabError, OSError) as e:
            run.log(f"warning: no temperature fitted ({e}); `digitlab calibrate {run.run_dir}` retries")
            return
        if done:
            run.log(summary(done))


def validation_split(dataset: str, val_size: int, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The hold-out a training with `val_size` kept out of its training images (split.py), images and labels."""
    from digitlab.data import load_dataset
    from digitlab.split import stratified_split

    ds = load_dataset(dataset, data_dir, progress=False)
    _, val_idx = stratified_split(ds.train_labels, val_size)
    return ds.train_images[val_idx], ds.train_labels[val_idx]


def run_val_size(run: Path, requested: int | None) -> int:
    """A run folder's hold-out, from its config.json; none is a ConfigError (its every image was trained on)."""
    from digitlab.runs import read_config

    cfg = read_config(run)
    if requested is not None and requested != cfg.val_size:
        raise ConfigError(f"{run} was trained with val_size {cfg.val_size}; --val-size {requested} would fit its "
                          "temperature on other images (drop --val-size)")
    if not cfg.val_size:
        raise ConfigError(f"{run} has no validation split (val_size 0): every training image was trained on, so "
                          "none is unseen to fit a temperature on; train with --val-size N")
    return cfg.val_size


def file_val_size(path: Path, requested: int | None) -> int:
    """A lone weights file's hold-out: --val-size, else the one its temperature was last fitted on."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--val-size must be at least 1, got {requested}")
        return requested
    previous = load_run(path).calibration
    if previous.fitted and previous.val_size:
        return previous.val_size
    raise ConfigError(f"{path} does not say which training images it was trained without: give --val-size N, the "
                      "hold-out it never saw (digitlab's recipes hold out 5000)")


def checkpoint_files(path: Path, checkpoints: tuple[str, ...]) -> list[Path]:
    """The run folder's checkpoints asked for that exist, or the one file given."""
    if not path.is_dir():
        return [resolve_checkpoint(path)]
    files = [path / f"{name}.safetensors" for name in checkpoints if (path / f"{name}.safetensors").is_file()]
    if not files:
        raise RunError(f"{path} has no checkpoint yet ({', '.join(checkpoints)})")
    return files


def calibrate_run(path: str | Path, checkpoints: tuple[str, ...] = CHECKPOINTS, val_size: int | None = None,
                  data_dir: str | None = None) -> list[Calibrated]:
    """Refit the temperature of a run folder's checkpoints, or of one .safetensors file: on the hold-out its run's
    config.json names (under the run's lock, so no training rewrites them meanwhile), else on --val-size's."""
    from digitlab.runs import RunLock, read_config

    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        read_config(path)  # the one-line error for a folder that is not a run
    files = checkpoint_files(path, checkpoints)
    run = files[0].parent if (files[0].parent / "config.json").is_file() else None
    held = run_val_size(run, val_size) if run else file_val_size(files[0], val_size)
    lock = RunLock(run) if run else None
    if lock:
        lock.acquire()
    try:
        dataset = load_run(files[0]).dataset
        data_dir = data_dir or (read_config(run).data_dir if run else None)
        images, labels = validation_split(dataset, held, data_dir)
        return [calibrate_file(file, images, labels, dataset, held) for file in files]
    finally:
        if lock:
            lock.release()
