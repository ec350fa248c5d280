"""Loading never runs code: every entry point that reads a run folder refuses crafted files with one line.

The crafted files hold a pickle whose unpickling would create a marker file (os.system / Path.touch, the
classic __reduce__ payload). They are planted where digitlab reads: the optimiser state (last.state.pt and
its pending .tmp), and the weights (best/last.safetensors, or a .pt given directly). Weights are safetensors
and the state is read with torch.load(weights_only=True), so every attempt must end in a RunError, a one-line
error from the CLI, and no marker. Broken but harmless runs (an unknown model, weights that do not fit,
metadata asking for a huge model) must give the same kind of error, never a traceback.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from digitlab import load_run, make_config, train
from digitlab.checkpoint import load_training_checkpoint, read_state, read_weights, save_weights
from digitlab.cli import main
from digitlab.errors import RunError
from digitlab.predict import Predictor
from helpers import free_port, mnist_slice

REPO = Path(__file__).resolve().parents[1]


class RunsShell:
    """Unpickling this runs `touch MARKER` in a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class TouchesFile:
    """Unpickling this calls pathlib.Path.touch(MARKER)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def torch_zip_pickle(path: Path, marker: Path) -> None:
    """torch.save's zip format, as a real state file, with the payload where the optimiser state goes."""
    torch.save({"step": 10, "epoch": 1, "optimizer": RunsShell(marker), "history": []}, path)


def plain_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"step": 10, "weights": TouchesFile(marker)}, f)


PAYLOADS = {"torch_zip": torch_zip_pickle, "plain_pickle": plain_pickle}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, mnist) -> Path:
    """A real 1-epoch MLP run (10 steps on 1,000 images): every test damages its own copy."""
    small = mnist_slice(mnist, 1000, 500)
    out = tmp_path_factory.mktemp("good") / "run"
    threads = torch.get_num_threads()
    try:
        train(make_config(model="mlp", batch_size=100, epochs=1, threads=1, out=str(out)), dataset=small,
              progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    shutil.copytree(good_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a crafted checkpoint ran code while being loaded"


def cli(capsys, *args: str) -> str:
    """Run `digitlab ARGS` in this process; it must fail with exit status 1 and exactly one stderr line."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 1, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("digitlab: error: "), err
    return lines[0]


@pytest.mark.quick
def test_the_payloads_do_run_code_when_unpickled_unsafely(tmp_path):
    """The control: what the other tests plant really is live, so its absence of effect means something."""
    for name, write in PAYLOADS.items():
        marker, path = tmp_path / f"control-{name}", tmp_path / f"{name}.pt"
        write(path, marker)
        if name == "torch_zip":
            torch.load(path, weights_only=False)  # the unsafe load digitlab never does
        else:
            with open(path, "rb") as f:
                pickle.load(f)
        assert marker.exists(), name


# ---------------------------------------------------------------------------------------------
# The optimiser state: `digitlab train --resume`


@pytest.mark.slow
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_resume_refuses_a_pickled_state_file(run, marker, payload, capsys):
    PAYLOADS[payload](run / "last.state.pt", marker)
    with pytest.raises(RunError, match="refused to load .*could run code"):
        read_state(run / "last.state.pt")
    with pytest.raises(RunError, match="refused to load"):
        load_training_checkpoint(run, "last")
    line = cli(capsys, "train", "--resume", str(run), "--no-progress")
    assert "last.state.pt" in line and "refused to load" in line and "Weights only" not in line
    assert "GLOBAL" in line or "Unsupported" in line  # names what was refused


@pytest.mark.slow
def test_repair_refuses_a_pickled_pending_state(run, marker, capsys):
    """An interrupted commit is finished from last.state.pt.tmp: that file is read just as safely."""
    loaded = load_run(run, "last")
    save_weights(run / "last.safetensors", loaded.model, {**loaded.meta, "step": 20})  # weights a commit ahead
    torch_zip_pickle(run / "last.state.pt.tmp", marker)
    with pytest.raises(RunError, match="do not match and cannot be repaired"):
        load_training_checkpoint(run, "last")
    assert (run / "last.state.pt.tmp").exists()  # not promoted
    line = cli(capsys, "train", "--resume", str(run), "--no-progress")
    assert "cannot be repaired" in line


# ---------------------------------------------------------------------------------------------
# The weights: eval, predict, serve, export


def plant_pickled_weights(run: Path, marker: Path) -> None:
    """Pickles under the names where weights live: best.safetensors, last.safetensors."""
    torch_zip_pickle(run / "best.safetensors", marker)
    plain_pickle(run / "last.safetensors", marker)


@pytest.mark.parametrize("command", [
    ["eval", "{run}"],
    ["eval", "{run}", "--checkpoint", "last"],
    ["predict", "{run}", "--test-index", "0"],
    ["predict", "{run}", "--checkpoint", "last", "--test-index", "0"],
    ["export", "{run}"],
    ["export", "{run}", "--format", "torchscript", "--checkpoint", "last"],
])
@pytest.mark.slow
def test_weight_readers_refuse_a_pickle_named_safetensors(run, marker, command, capsys):
    plant_pickled_weights(run, marker)
    line = cli(capsys, *[arg.format(run=run) for arg in command])
    assert "is not a readable safetensors checkpoint" in line
    for name in ("best", "last"):
        with pytest.raises(RunError, match="not a readable safetensors"):
            load_run(run, name)
        with pytest.raises(RunError, match="not a readable safetensors"):
            Predictor.from_run(run, name)
    assert not list(run.glob("model.*")), "export wrote a file for a run it could not load"


@pytest.mark.quick
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_pickle_given_directly_is_refused(tmp_path, marker, suffix, capsys):
    path = tmp_path / f"weights{suffix}"
    torch_zip_pickle(path, marker)
    assert "not a readable safetensors checkpoint" in cli(capsys, "eval", str(path))
    with pytest.raises(RunError, match="not a readable safetensors"):
        read_weights(path)


@pytest.mark.slow
def test_serve_refuses_a_pickle_before_listening(run, marker):
    plant_pickled_weights(run, marker)
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "digitlab", "serve", str(run), "--host", "127.0.0.1",
                           "--port", str(port)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a readable safetensors checkpoint" in lines[0], proc.stderr
    assert "serving" not in proc.stdout and "Uvicorn running" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Broken but harmless runs: one clear line each


def rewrite_weights(run: Path, name: str, tensors: dict | None = None, **meta_changes) -> None:
    """Write `name`.safetensors again with changed metadata (and optionally other tensors), digitlab's format."""
    loaded = load_run(run, name)
    tensors = tensors if tensors is not None else loaded.model.state_dict()
    metadata = {"format": "digitlab-checkpoint-1", **{k: json.dumps(v) for k, v in loaded.meta.items()}}
    metadata.update({k: json.dumps(v) for k, v in meta_changes.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(run / f"{name}.safetensors"), metadata=metadata)


@pytest.mark.slow
def test_config_naming_an_unknown_model(run, capsys):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": "no_such_net"}))
    for command in (["eval", str(run)], ["predict", str(run), "--test-index", "0"], ["export", str(run)],
                    ["train", "--resume", str(run), "--no-progress"]):
        line = cli(capsys, *command)
        assert "config.json" in line and "'no_such_net'" in line and "mlp" in line, line  # lists the choices


@pytest.mark.slow
def test_metadata_naming_an_unknown_model(run, capsys):
    rewrite_weights(run, "best", model="no_such_net")
    line = cli(capsys, "eval", str(run))
    assert "cannot rebuild model 'no_such_net'" in line and "choose one of" in line


@pytest.mark.slow
@pytest.mark.parametrize("change", ["other_model", "other_options", "missing_tensor", "wrong_shape"])
def test_weights_that_do_not_fit_the_model(run, change, capsys):
    weights = dict(load_run(run, "best").model.state_dict())
    meta = {}
    if change == "other_model":
        meta = {"model": "cnn", "model_args": {}}
    elif change == "other_options":
        meta = {"model_args": {"hidden": [64]}}
    elif change == "missing_tensor":
        weights.pop(sorted(weights)[0])
    else:
        key = next(k for k, v in weights.items() if v.dim() == 2)
        weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
    rewrite_weights(run, "best", weights, **meta)
    line = cli(capsys, "predict", str(run), "--test-index", "0")
    assert "weights do not fit model" in line
    with pytest.raises(RunError, match="weights do not fit"):
        load_run(run, "best")


@pytest.mark.slow
def test_metadata_asking_for_a_huge_model_fails_without_building_it(run, capsys):
    """hidden=[10**9]: 784e9 weights (3 TB). The shapes are checked on the meta device, so nothing is allocated."""
    rewrite_weights(run, "best", model_args={"hidden": [10**9, 10**9]})
    assert "parameters, more than digitlab's limit of 1,000,000,000" in cli(capsys, "eval", str(run))


@pytest.mark.slow
@pytest.mark.parametrize("change", ["bad_options", "bad_normalization", "bad_classes", "no_marker", "torn"])
def test_other_broken_weights_files(run, change, capsys):
    path = run / "best.safetensors"
    if change == "bad_options":
        rewrite_weights(run, "best", model_args={"hidden": "many"})
    elif change == "bad_normalization":
        rewrite_weights(run, "best", normalization="evil")
    elif change == "bad_classes":
        rewrite_weights(run, "best", classes=7)
    elif change == "no_marker":
        save_file(dict(load_run(run, "best").model.state_dict()), str(path))
    else:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    line = cli(capsys, "eval", str(run))
    expected = {"bad_options": "cannot rebuild model 'mlp'", "bad_normalization": "unknown normalization 'evil'",
                "bad_classes": "class names", "no_marker": "was not written by digitlab",
                "torn": "not a readable safetensors checkpoint"}[change]
    assert expected in line
