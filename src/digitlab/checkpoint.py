"""Checkpoints that survive a kill and never run code when loaded.

A checkpoint is two files in a run folder:
- ``<name>.safetensors``: the model weights, with plain-string metadata (model, step, metrics, and the
  temperature fitted on the run's hold-out once the training finished: calibration.py);
- ``<name>.state.pt``: optimiser, RNG and history, plain tensors and numbers only, loaded with
  ``torch.load(weights_only=True)`` so a crafted pickle is refused instead of executed.

Both files are first written to ``<file>.tmp`` and fsynced, then renamed over the old ones, the
state file last: it is the commit point. If a kill lands between the two renames, the state on disk is
the old one (or, on the first commit, absent) and its ``step`` does not match the weights;
load_training_checkpoint then finishes the interrupted commit from the complete ``.tmp`` file.
Both files are serialised in memory and written with plain Python file I/O, so a full disk is always an
OSError (torch.save and safetensors' save_file, writing on their own, report it as a RuntimeError or not at
all). A write that fails removes its ``.tmp`` file and raises a RunError; the files it was to replace are
untouched (digitlab.atomic).

A state file is checked field by field when read, and an optimiser state against the parameters it is
loaded for, so a tampered file is a one-line RunError. build_from_weights() rebuilds a trained model through the
model registry (runs.load_run: from a run folder or a lone .safetensors file); nothing is ever unpickled.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from digitlab import atomic
from digitlab.calibration import UNCALIBRATED, Calibration
from digitlab.data import get_spec
from digitlab.errors import ConfigError, DigitlabError, RunError
from digitlab.models import check_model_args, create_model
from digitlab.normalize import NORMALIZATIONS
from digitlab.runs import read_config
from digitlab.shapes import MNIST_SHAPE, InputShape

FORMAT = "digitlab-checkpoint-1"
HISTORY_KEYS = ("step", "elapsed_s")  # what a resumed run reads from its saved history


def write_weights_tmp(path: Path, model: torch.nn.Module, meta: dict) -> Path:
    """Safetensors of the model's weights, `meta` (JSON-encoded values) as metadata, into path.tmp."""
    return write_tensors_tmp(path, {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, meta)


def write_tensors_tmp(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Safetensors of `tensors`, `meta` (JSON-encoded values) as metadata, into path.tmp."""
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    data = safetensors_bytes(tensors, metadata=metadata)
    return atomic.write_tmp(path, lambda tmp: tmp.write_bytes(data))


def save_weights(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """Write weights-only checkpoint (e.g. `best`) atomically."""
    atomic.commit((write_weights_tmp(path, model, meta), path))


def update_metadata(path: Path, changes: dict) -> dict:
    """Rewrite a checkpoint's metadata with `changes` over it, the same tensors, atomically (a calibration fitted
    after training); returns the new metadata. The step stays, so a `last` pair still matches its state file."""
    tensors, meta = read_weights(path)
    meta = {**meta, **changes}
    atomic.commit((write_tensors_tmp(path, tensors, meta), path))
    return meta


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and decoded metadata of a safetensors checkpoint; a clear RunError if unusable."""
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(not_safetensors(path, e)) from None
    if raw_meta.get("format") != FORMAT:
        raise RunError(f"{path} was not written by digitlab (no {FORMAT!r} marker)")
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise RunError(f"{path} has corrupted metadata ({e})") from None
    return tensors, meta


def not_safetensors(path: Path, error: Exception) -> str:
    """Why `path` cannot be read as weights, naming the files `digitlab export` writes, which users pass here."""
    if is_torchscript(path):
        return (f"{path} is a TorchScript file (`digitlab export --format torchscript`): digitlab never loads "
                "TorchScript, whose loading runs the code inside it; give the run, its .safetensors file or its "
                ".onnx export")
    hint = ("; an .onnx file from `digitlab export` goes to `predict --onnx`, `eval` or `serve`"
            if path.suffix.lower() == ".onnx" else "")
    return f"{path} is not a readable safetensors checkpoint ({error}){hint}"


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip file holding a code/ folder (torch.save's zip files hold
    none). Only the zip's directory is read; nothing in it is unpickled or run."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in f"/{name}" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def read_state(path: Path) -> dict:
    """Load a state file with weights_only=True: code hidden in a pickle is refused, never run."""
    if not path.is_file():
        raise RunError(f"checkpoint state {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RunError(f"refused to load {path}: it holds objects other than plain tensors and "
                       f"numbers, which could run code ({unpickling_reason(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise RunError(f"{path} is not a readable checkpoint state ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise RunError(f"{path} is not a digitlab checkpoint state")
    check_state_fields(state, path)
    return state


def check_state_fields(state: dict, path: Path) -> None:
    """Every field a resume reads is there with the right type, so a tampered file fails here, in one line,
    and not halfway through restoring."""
    for key in ("step", "epoch"):
        if not isinstance(state.get(key), int) or isinstance(state[key], bool) or state[key] < 0:
            raise RunError(f"{path}: {key!r} is missing or not a whole number ({state.get(key)!r})")
    epoch_step = state.get("epoch_step", 0)
    if not isinstance(epoch_step, int) or isinstance(epoch_step, bool) or epoch_step < 0:
        raise RunError(f"{path}: 'epoch_step' is not a whole number ({epoch_step!r})")
    if not isinstance(state.get("best_accuracy"), (int, float)):
        raise RunError(f"{path}: 'best_accuracy' is missing or not a number")
    history = state.get("history")
    if not isinstance(history, list) or not all(
            isinstance(row, dict) and all(isinstance(row.get(k), (int, float)) for k in HISTORY_KEYS)
            for row in history):
        raise RunError(f"{path}: 'history' is missing or not a list of rows with {', '.join(HISTORY_KEYS)}")
    optimizer = state.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list) and optimizer["param_groups"]):
        raise RunError(f"{path}: 'optimizer' is missing or not an optimiser state (state and param_groups)")
    rng = state.get("rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
            and isinstance(rng.get("python"), list)):
        raise RunError(f"{path}: 'rng' is missing or not the random generators' state")
    raw = state.get("train_weights")
    if raw is not None and not (isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())):
        raise RunError(f"{path}: 'train_weights' is not a dict of tensors")


def unpickling_reason(error: Exception) -> str:
    """The line of torch's weights_only refusal that names what was refused (e.g. 'GLOBAL posix.system')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower() or "GLOBAL" in line:
            return line
    return "unsupported content"


def save_checkpoint(run_dir: Path, name: str, model: torch.nn.Module, meta: dict, state: dict) -> None:
    """Write weights and state to .tmp files, then rename weights, then state (the commit point)."""
    weights_path, state_path = run_dir / f"{name}.safetensors", run_dir / f"{name}.state.pt"
    weights_tmp = write_weights_tmp(weights_path, model, meta)
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        state_tmp = atomic.write_tmp(state_path, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    except RunError:
        weights_tmp.unlink(missing_ok=True)
        raise
    atomic.commit((weights_tmp, weights_path), (state_tmp, state_path))


def has_checkpoint(run_dir: Path, name: str = "last") -> bool:
    """Whether a commit of checkpoint `name` ever completed its first rename (the weights file)."""
    return (run_dir / f"{name}.safetensors").is_file()


def load_training_checkpoint(run_dir: Path, name: str = "last") -> tuple[dict, dict, dict]:
    """(weights, meta, state) of a consistent checkpoint pair, repairing an interrupted commit."""
    weights_path, state_path = run_dir / f"{name}.safetensors", run_dir / f"{name}.state.pt"
    pending = state_path.with_name(state_path.name + ".tmp")
    # No state file at all is the first commit interrupted between its renames: repaired below.
    state = read_state(state_path) if state_path.is_file() or not pending.is_file() else None
    weights, meta = read_weights(weights_path)
    if state is not None and meta.get("step") == state["step"]:
        return weights, meta, state
    # A kill between the two renames: the weights are one commit ahead of the state. The new state
    # is still complete in its .tmp file (written and fsynced before either rename).
    if pending.is_file():
        try:
            new_state = read_state(pending)
        except RunError:
            new_state = None
        if new_state is not None and new_state["step"] == meta.get("step"):
            os.replace(pending, state_path)
            return weights, meta, new_state
    state_step = state["step"] if state is not None else "missing"
    raise RunError(f"{run_dir}: weights (step {meta.get('step')}) and state (step {state_step}) "
                   "do not match and cannot be repaired")


def load_model_state(model: torch.nn.Module, weights: dict, source: Path) -> None:
    """load_state_dict(strict) with a RunError naming `source` when the tensors do not fit the model."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise RunError(f"{source}: the saved weights do not fit the model ({detail})") from None


def load_optimizer_state(optimizer, saved: dict, source: Path) -> None:  # torch.optim or optim.LeanAdamW
    """Load an optimiser state, refusing one whose per-parameter tensors do not have their parameter's shape:
    torch accepts those and fails (or silently broadcasts) only at the next step."""
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:200]
        raise RunError(f"{source}: the optimiser state does not fit this model and optimiser ({detail})") from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise RunError(f"{source}: optimiser state {key!r} has shape {tuple(value.shape)} for a "
                                   f"parameter of shape {tuple(param.shape)}")
                if not isinstance(value, (torch.Tensor, int, float)) and value is not None:
                    raise RunError(f"{source}: optimiser state {key!r} is a {type(value).__name__}, not a tensor")


# ---------------------------------------------------------------------------------------------
# Loading a trained model: through the model registry, never by unpickling


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
    calibration: Calibration = UNCALIBRATED  # the temperature its probabilities are shown with
    shape: InputShape = MNIST_SHAPE  # classes, channels and image size it was built for (from the metadata)


def build_model_checked(name, args, weights: dict, source: Path, shape: InputShape = MNIST_SHAPE) -> torch.nn.Module:
    """create_model(name, **args) for `shape` whose state_dict has exactly the shapes of `weights`, else a RunError.

    The model is first built on the meta device (no memory, models.check_model_args), so metadata asking for
    a huge model fails here instead of allocating more than the weights file holds.
    """
    if not isinstance(name, str) or not isinstance(args, dict):
        raise RunError(f"{source}: checkpoint metadata does not name a model and its options")
    try:
        probe = check_model_args(name, args, shape)
    except ConfigError as e:
        raise RunError(f"{source}: cannot rebuild model {name!r} with {args} ({e})") from None
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise RunError(f"{source}: weights do not fit model {name!r} with {args} "
                       f"(first differing tensors, name and shape: {diff})")
    return create_model(name, **args, **shape.to_meta())


def shape_from_meta(meta: dict, classes: tuple[str, ...], source: Path) -> InputShape:
    """The shape a checkpoint records (MNIST's when it predates the keys), checked against its class names."""
    try:
        shape = InputShape.from_meta(meta)
    except ConfigError as e:
        raise RunError(f"{source}: its metadata has an unusable shape ({e})") from None
    if shape.num_classes != len(classes):
        raise RunError(f"{source}: its metadata names {len(classes)} classes for a model of {shape.num_classes}")
    return shape


def build_from_weights(weights: dict, meta: dict, source: Path) -> LoadedModel:
    """Rebuild the registered model named in `meta` and load `weights` into it strictly."""
    if "model" not in meta:
        raise RunError(f"{source}: checkpoint metadata does not name a model")
    name, args = meta["model"], meta.get("model_args", {})
    dataset, normalization = meta.get("dataset", "mnist"), meta.get("normalization", "standard")
    classes = meta.get("classes") or get_spec(dataset).classes
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise RunError(f"{source}: class names in its metadata are not a list of strings")
    shape = shape_from_meta(meta, tuple(classes), source)
    model = build_model_checked(name, args, weights, source, shape)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise RunError(f"{source}: weights do not fit model {name!r} with {args} ({detail})") from None
    model.eval()
    if normalization not in NORMALIZATIONS:
        raise RunError(f"{source}: unknown normalization {normalization!r} in its metadata")
    calibration = Calibration.from_meta(meta, str(source))
    return LoadedModel(model, name, args, normalization, dataset, tuple(classes), source, meta, calibration, shape)


def resolve_checkpoint(path: str | Path, checkpoint: str = "best") -> Path:
    """A run folder + 'best'/'last', or a .safetensors file given directly. A run that selected nothing (a fixed
    schedule) has no best.safetensors: its model, and so its `best`, is last.safetensors."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RunError(f"{path} does not exist (expected a run folder or a .safetensors file)")
    if checkpoint not in ("best", "last"):
        raise RunError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if checkpoint == "best" and not (path / "best.safetensors").exists() and selects_nothing(path):
        checkpoint = "last"
    candidate = path / f"{checkpoint}.safetensors"
    if not candidate.is_file():
        raise RunError(f"{path} has no {checkpoint}.safetensors: is it a digitlab run folder, "
                       "and did its first epoch finish?")
    return candidate


def selects_nothing(run_dir: Path) -> bool:
    """Whether the run folder's config is a fixed schedule (False when it has no readable config)."""
    if not (run_dir / "config.json").is_file():
        return False
    try:
        return read_config(run_dir).fixed_schedule
    except DigitlabError:
        return False  # load_run reports a broken config itself
