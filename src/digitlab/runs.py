"""Run folders: config.json, metrics.csv, checkpoints and figures of one training run.

    runs/<time>-<name>/
        config.json          everything needed to rebuild model and preprocessing
        metrics.csv          one row per evaluation
        last.safetensors     weights after the latest epoch (+ last.state.pt to resume)
        best.safetensors     weights with the best test accuracy so far
        curves.png           loss and accuracy curves

load_run() rebuilds a model from a folder (or a lone .safetensors file) through the model registry;
nothing in a run folder is ever unpickled.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from digitlab.checkpoint import commit, read_weights, write_tmp
from digitlab.config import TrainConfig, config_from_json
from digitlab.data import get_spec
from digitlab.errors import ConfigError, RunError
from digitlab.models import create_model
from digitlab.normalize import NORMALIZATIONS

METRIC_COLUMNS = ["step", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                  "test_accuracy", "lr", "elapsed_s", "images_per_s", "data_fraction"]  # val_*: empty without val_size


def new_run_dir(cfg: TrainConfig, root: str | Path = "runs") -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<preset or model>, made unique if it exists."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset or cfg.model}"
    path = Path(root) / stem
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stem}-{n}"
    return path


def write_text_atomic(path: Path, text: str) -> None:
    commit((write_tmp(path, lambda tmp: tmp.write_text(text)), path))


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv from the full history (small), atomically, so it always parses."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv rows with numbers parsed."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise RunError(f"{run_dir} has no metrics.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in rows]


def read_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder: it has no config.json")
    try:
        return config_from_json(path.read_text())
    except ConfigError as e:
        raise RunError(f"{path}: {e}") from None


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what is needed to feed it."""

    model: torch.nn.Module
    model_name: str
    model_args: dict
    normalization: str
    dataset: str
    classes: tuple[str, ...]
    source: Path
    meta: dict


def build_model_checked(name, args, weights: dict, source: Path) -> torch.nn.Module:
    """create_model(name, **args) whose state_dict has exactly the shapes of `weights`, else a RunError.

    The model is first built on the meta device (no memory), so metadata asking for a huge model
    fails here instead of allocating more than the weights file holds.
    """
    if not isinstance(name, str) or not isinstance(args, dict):
        raise RunError(f"{source}: checkpoint metadata does not name a model and its options")
    try:
        with torch.device("meta"):
            probe = create_model(name, **args)
    except (ConfigError, TypeError, ValueError, RuntimeError) as e:
        detail = str(e).splitlines()[0] if str(e) else repr(e)
        raise RunError(f"{source}: cannot rebuild model {name!r} with {args} ({detail})") from None
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise RunError(f"{source}: weights do not fit model {name!r} with {args} "
                       f"(first differing tensors, name and shape: {diff})")
    return create_model(name, **args)


def build_from_weights(weights: dict, meta: dict, source: Path) -> LoadedModel:
    """Rebuild the registered model named in `meta` and load `weights` into it strictly."""
    if "model" not in meta:
        raise RunError(f"{source}: checkpoint metadata does not name a model")
    name, args = meta["model"], meta.get("model_args", {})
    model = build_model_checked(name, args, weights, source)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise RunError(f"{source}: weights do not fit model {name!r} with {args} ({detail})") from None
    model.eval()
    dataset, normalization = meta.get("dataset", "mnist"), meta.get("normalization", "standard")
    classes = meta.get("classes") or get_spec(dataset).classes
    if normalization not in NORMALIZATIONS:
        raise RunError(f"{source}: unknown normalization {normalization!r} in its metadata")
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise RunError(f"{source}: class names in its metadata are not a list of strings")
    return LoadedModel(model, name, args, normalization, dataset, tuple(classes), source, meta)


def resolve_checkpoint(path: str | Path, checkpoint: str = "best") -> Path:
    """A run folder + 'best'/'last', or a .safetensors file given directly."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RunError(f"{path} does not exist (expected a run folder or a .safetensors file)")
    if checkpoint not in ("best", "last"):
        raise RunError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    candidate = path / f"{checkpoint}.safetensors"
    if not candidate.is_file():
        raise RunError(f"{path} has no {checkpoint}.safetensors: is it a digitlab run folder, "
                       "and did its first epoch finish?")
    return candidate


def load_run(path: str | Path, checkpoint: str = "best") -> LoadedModel:
    """Load a trained model from a run folder (or .safetensors file), ready for inference on CPU."""
    source = resolve_checkpoint(path, checkpoint)
    if source.parent.joinpath("config.json").is_file() and Path(path).is_dir():
        read_config(source.parent)  # a run folder whose config is broken is an error, not ignored
    weights, meta = read_weights(source)
    return build_from_weights(weights, meta, source)
