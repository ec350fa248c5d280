"""Failures mid-run: an unwritable run folder, a full disk, a loss that turns NaN.

Each is a one-line error and a non-zero exit, and what is on disk stays loadable: an old checkpoint is never
replaced by a half-written one, and no .tmp file is ever promoted. Tests run as root in CI, where permission
bits stop nothing, so the unwritable folder is one below a regular file, and the full disk is real: a .tmp
path symlinked to /dev/full, which answers every write with ENOSPC.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from digitlab import load_dataset, load_run, make_config, train
from digitlab.checkpoint import load_training_checkpoint, save_checkpoint, save_weights
from digitlab.errors import RunError
from digitlab.runs import read_metrics, write_metrics
from digitlab.training import TrainingError, check_finite
from helpers import one_line_error

REPO = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).with_name("digitlab_wrapped.py")
SUBSET = 2000  # training images of the `small` slice: 20 steps an epoch at batch 100


def quiet(*_args) -> None:
    pass


def digitlab(*args: str, subset: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m digitlab ARGS`; with subset=True, tests/digitlab_wrapped.py training on the `small` slice."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "digitlab"]
    if subset:
        env["DIGITLAB_TEST_TRAIN_SUBSET"] = str(SUBSET)
        command = [sys.executable, str(WRAPPER)]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", progress=False)


@pytest.fixture(scope="module")
def small(mnist):
    """2,000 training and 1,000 test images: 20 steps an epoch at batch 100."""
    return replace(mnist, train_images=mnist.train_images[:SUBSET], train_labels=mnist.train_labels[:SUBSET],
                   test_images=mnist.test_images[:1000], test_labels=mnist.test_labels[:1000])


@pytest.fixture
def one_epoch_run(small, tmp_path) -> Path:
    """A finished 1-epoch MLP run (checkpoints at step 20), to be damaged by the tests."""
    threads = torch.get_num_threads()
    try:
        train(make_config(model="mlp", optimizer="sgd", lr=0.05, batch_size=100, epochs=1, threads=1,
                          out=str(tmp_path / "run")), dataset=small, progress=False, log=quiet)
    finally:
        torch.set_num_threads(threads)
    return tmp_path / "run"


def assert_intact(run: Path, step: int, hashes: dict[str, str]) -> None:
    """The previous checkpoint pair is there, unchanged, consistent and loadable; no .tmp is left."""
    assert {name: digest(run / name) for name in hashes} == hashes
    weights, meta, state = load_training_checkpoint(run, "last")
    assert meta["step"] == state["step"] == step
    assert load_run(run, "last").meta["step"] == step and load_run(run, "best").meta["step"] == step
    assert not list(run.glob("*.tmp")), sorted(p.name for p in run.iterdir())


def file_hashes(run: Path) -> dict[str, str]:
    names = ("last.safetensors", "last.state.pt", "best.safetensors", "metrics.csv")
    return {name: digest(run / name) for name in names}


# ---------------------------------------------------------------------------------------------
# An unwritable run folder: a clear error before training starts


def test_out_below_a_regular_file_fails_before_training(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    proc = digitlab("train", "--model", "mlp", "--epochs", "1", "--threads", "1", "--no-progress",
                    "--out", str(blocker / "run"))
    one_line_error(proc, "cannot write the run folder", str(blocker / "run"), "Not a directory")
    assert "epoch" not in proc.stdout and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("where", ["existing_file", "proc"])
def test_other_unwritable_run_folders_fail_before_training(where, small, tmp_path):
    out = {"existing_file": tmp_path / "taken", "proc": Path("/proc/digitlab-test-run")}[where]
    if where == "existing_file":
        out.write_text("a file where the run folder should go")
    logged = []
    with pytest.raises(RunError, match="cannot write the run folder"):
        train(make_config(model="mlp", epochs=1, out=str(out)), dataset=small, progress=False, log=logged.append)
    assert logged == []  # no epoch ran


# ---------------------------------------------------------------------------------------------
# A full disk while writing: the previous checkpoint stays


@pytest.mark.slow
@pytest.mark.parametrize("torn", ["last.safetensors.tmp", "last.state.pt.tmp"])
def test_full_disk_during_a_checkpoint_keeps_the_previous_pair(one_epoch_run, torn):
    run = one_epoch_run
    hashes = file_hashes(run)
    (run / torn).symlink_to("/dev/full")  # the kernel answers ENOSPC to every write through it
    weights, meta, state = load_training_checkpoint(run, "last")
    model = load_run(run, "last").model
    with pytest.raises(RunError, match=r"cannot write .*last\..*: No space left on device"):
        save_checkpoint(run, "last", model, {**meta, "step": 40}, {**state, "step": 40})
    assert_intact(run, 20, hashes)


@pytest.mark.slow
def test_full_disk_for_best_and_metrics_keeps_the_previous_files(one_epoch_run):
    run = one_epoch_run
    hashes = file_hashes(run)
    model = load_run(run, "best").model
    (run / "best.safetensors.tmp").symlink_to("/dev/full")
    with pytest.raises(RunError, match="No space left on device"):
        save_weights(run / "best.safetensors", model, {"model": "mlp", "step": 40})
    (run / "metrics.csv.tmp").symlink_to("/dev/full")
    with pytest.raises(RunError, match="No space left on device"):
        write_metrics(run, read_metrics(run) * 2)
    assert_intact(run, 20, hashes)


@pytest.mark.slow
def test_failing_fsync_removes_the_tmp_and_keeps_the_previous_pair(one_epoch_run, monkeypatch):
    """Delayed allocation: the write returns, fsync reports ENOSPC. Simulated in-process."""
    run = one_epoch_run
    hashes = file_hashes(run)
    weights, meta, state = load_training_checkpoint(run, "last")
    model = load_run(run, "last").model
    real_fsync = os.fsync
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the weights .tmp syncs fine, the state .tmp does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunError, match="last.state.pt: No space left on device"):
        save_checkpoint(run, "last", model, {**meta, "step": 40}, {**state, "step": 40})
    monkeypatch.undo()
    assert len(calls) == 2
    assert_intact(run, 20, hashes)


@pytest.mark.slow
def test_full_disk_mid_run_is_a_one_line_error_and_the_run_resumes(one_epoch_run):
    """`digitlab train --resume RUN --epochs 2` on a full disk stops with one line; freed, it resumes."""
    run = one_epoch_run
    hashes = {name: digest(run / name) for name in ("last.safetensors", "last.state.pt")}
    (run / "last.state.pt.tmp").symlink_to("/dev/full")
    proc = digitlab("train", "--resume", str(run), "--epochs", "2", "--no-progress", subset=True)
    one_line_error(proc, "last.state.pt: No space left on device", "previous file")
    assert "epoch 2/2:" in proc.stdout  # the epoch ran; only its checkpoint could not be written
    assert {name: digest(run / name) for name in hashes} == hashes
    assert load_training_checkpoint(run, "last")[2]["step"] == 20
    assert not list(run.glob("*.tmp"))
    proc = digitlab("train", "--resume", str(run), "--no-progress", subset=True)
    assert proc.returncode == 0, proc.stderr
    assert load_training_checkpoint(run, "last")[2]["step"] == 40 and len(read_metrics(run)) == 2


# ---------------------------------------------------------------------------------------------
# A loss that turns NaN: stop, name the step, keep the last good checkpoint


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(one_epoch_run):
    run = one_epoch_run
    hashes = file_hashes(run)
    config = json.loads((run / "config.json").read_text())  # --resume refuses --lr: a new lr is a hand edit
    (run / "config.json").write_text(json.dumps({**config, "lr": 1e10}))
    proc = digitlab("train", "--resume", str(run), "--epochs", "2", "--no-progress", subset=True)
    line = one_line_error(proc, f"last good checkpoint is kept in {run}")
    match = re.search(r"loss became (nan|inf) at step (\d+); stopped", line)
    assert match and 20 < int(match.group(2)) <= 40, line  # in the resumed epoch, after the checkpoint at step 20
    assert "epoch 2/2" not in proc.stdout
    assert_intact(run, 20, hashes)  # metrics.csv too: the epoch never reached its evaluation


@pytest.mark.slow
def test_nan_in_the_first_epoch_says_no_checkpoint_was_written(small, tmp_path):
    cfg = make_config(model="mlp", optimizer="sgd", lr=1e6, batch_size=100, epochs=1, threads=1,
                      out=str(tmp_path / "run"))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step \d+; stopped, no checkpoint"):
            train(cfg, dataset=small, progress=False, log=quiet)
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "run" / "last.safetensors").exists() and not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.quick
def test_nan_weights_are_never_checkpointed(tmp_path):
    model = torch.nn.Linear(2, 2)
    check_finite(torch.tensor(0.5), 7, tmp_path, model)  # finite: nothing happens
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="weights became inf/NaN at step 7"):
        check_finite(torch.tensor(0.5), 7, tmp_path, model)
    with pytest.raises(TrainingError, match="loss became inf at step 8"):
        check_finite(torch.tensor(float("inf")), 8, tmp_path)
