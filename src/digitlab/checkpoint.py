"""Checkpoints that survive a kill and never run code when loaded.

A checkpoint is two files in a run folder:
- ``<name>.safetensors``: the model weights, with plain-string metadata (model, step, metrics);
- ``<name>.state.pt``: optimiser, RNG and history, plain tensors and numbers only, loaded with
  ``torch.load(weights_only=True)`` so a crafted pickle is refused instead of executed.

Both files are first written to ``<file>.tmp`` and fsynced, then renamed over the old ones, the
state file last: it is the commit point. If a kill lands between the two renames, the state on disk is
the old one (or, on the first commit, absent) and its ``step`` does not match the weights;
load_training_checkpoint then finishes the interrupted commit from the complete ``.tmp`` file.
Both files are serialised in memory and written with plain Python file I/O, so a full disk is always an
OSError (torch.save and safetensors' save_file, writing on their own, report it as a RuntimeError or not at
all). A write that fails removes its ``.tmp`` file and raises a RunError; the files it was to replace are
untouched.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from digitlab.errors import RunError

FORMAT = "digitlab-checkpoint-1"


def write_tmp(path: Path, write) -> Path:
    """Call write(tmp_path) and fsync the result; the caller renames it into place.

    A failed write (no space left, no permission) removes the partial .tmp file and raises a RunError.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {e.strerror or e}; the previous file, if any, is kept") from None
    return tmp


def commit(*pairs: tuple[Path, Path]) -> None:
    """Rename each (tmp, final) pair in order, then fsync the folder so the renames are durable."""
    for tmp, final in pairs:
        os.replace(tmp, final)
    dir_fd = os.open(pairs[0][1].parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_weights_tmp(path: Path, model: torch.nn.Module, meta: dict) -> Path:
    """Safetensors of the model's weights, `meta` (JSON-encoded values) as metadata, into path.tmp."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    data = safetensors_bytes(tensors, metadata=metadata)
    return write_tmp(path, lambda tmp: tmp.write_bytes(data))


def save_weights(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """Write weights-only checkpoint (e.g. `best`) atomically."""
    commit((write_weights_tmp(path, model, meta), path))


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and decoded metadata of a safetensors checkpoint; a clear RunError if unusable."""
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    if raw_meta.get("format") != FORMAT:
        raise RunError(f"{path} was not written by digitlab (no {FORMAT!r} marker)")
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise RunError(f"{path} has corrupted metadata ({e})") from None
    return tensors, meta


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
    return state


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
        state_tmp = write_tmp(state_path, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    except RunError:
        weights_tmp.unlink(missing_ok=True)
        raise
    commit((weights_tmp, weights_path), (state_tmp, state_path))


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
