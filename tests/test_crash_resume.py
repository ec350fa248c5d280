"""Crash-safe runs: kill training with SIGKILL at random moments and inside checkpoint writes, resume each time.

After every kill every checkpoint on disk must load, and the run resumed to the end must write exactly the
metrics (all but the timing columns) and the weights of an uninterrupted run with the same seed. The kills
inside a write are made deterministic by tests/digitlab_wrapped.py (a torn .tmp file; a kill between the
weights' and the state's renames); the others land at random times, with the seed in any failure message.
The killed runs train on the first 12,000 MNIST images (DIGITLAB_TEST_TRAIN_SUBSET) to keep the test short.
"""
from __future__ import annotations

import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from digitlab import load_run, make_config, train
from digitlab.checkpoint import load_training_checkpoint, read_state
from digitlab.runs import read_metrics
from digitlab.resume import resume_config
from helpers import mnist_slice

REPO = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).with_name("digitlab_wrapped.py")
TIMING = ("elapsed_s", "images_per_s", "data_fraction")
EPOCHS = 6
SUBSET = 12_000  # training images; the test set stays whole
STEPS = 47  # per epoch: ceil(12000 / 256)
RECIPE = dict(model="mlp", epochs=EPOCHS, batch_size=256, max_steps=0, schedule="onecycle", threads=1)
TRAIN_ARGS = ["--model", "mlp", "--epochs", str(EPOCHS), "--batch-size", "256", "--max-steps", "0",
              "--schedule", "onecycle", "--threads", "1", "--no-progress"]
LINE_TIMEOUT_S = 120


def quiet(*_args) -> None:
    pass


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture
def one_thread():
    """Train in this process on one thread, as the subprocesses do (same arithmetic), then restore."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class Training:
    """`python tests/digitlab_wrapped.py train ...` in a subprocess, its output read line by line."""

    def __init__(self, args: list[str], kill_hook: str | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DIGITLAB_TEST_TRAIN_SUBSET": str(SUBSET)}
        env.pop("DIGITLAB_TEST_KILL", None)
        if kill_hook:
            env["DIGITLAB_TEST_KILL"] = kill_hook
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(WRAPPER), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float | None = None) -> str | None:
        """Block until an output line matches `pattern`; fail if the process ends or stalls first.
        With a timeout, return None when it passes first (no failure)."""
        deadline = time.monotonic() + (LINE_TIMEOUT_S if timeout is None else timeout)
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"training ended before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        if timeout is not None:
            return None
        self.kill()
        raise AssertionError(f"no line matching {pattern!r} within {LINE_TIMEOUT_S} s:\n" + "\n".join(self.lines))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL, f"training ended before the kill:\n{self.output}"

    def finish(self) -> int:
        self.proc.wait(timeout=LINE_TIMEOUT_S * EPOCHS)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def resumed_at(self) -> int:
        """The step this `train --resume` says it goes on from; 0 when it found no checkpoint and started over."""
        line = self.wait_for(r"^resuming .* at epoch \d+, step \d+$|has no checkpoint yet")
        found = re.search(r"step (\d+)$", line)
        return int(found.group(1)) if found else 0


def assert_everything_loads(run: Path, scratch: Path) -> int:
    """Every checkpoint in `run` loads (repairs on a copy, so the resume does its own); returns the last step."""
    assert (run / "config.json").is_file()
    rows = read_metrics(run) if (run / "metrics.csv").exists() else []  # metrics.csv always parses
    if not (run / "last.safetensors").exists():
        assert not rows or rows[-1]["step"] <= STEPS, "an epoch finished but left no checkpoint"
        return 0
    last = load_run(run, "last")
    best = load_run(run, "best")
    assert best.meta["metrics"]["test_accuracy"] >= last.meta["metrics"]["test_accuracy"]
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(run, scratch)
    weights, meta, state = load_training_checkpoint(scratch, "last")
    assert meta["step"] == state["step"] == last.meta["step"] == STEPS * state["epoch"]
    assert [r["step"] for r in state["history"]] == [STEPS * (e + 1) for e in range(state["epoch"])]
    assert all(torch.equal(weights[k], v) for k, v in last.model.state_dict().items())
    assert not (scratch / "last.state.pt.tmp").exists() or meta["step"] != read_state_step(scratch)
    return meta["step"]


def read_state_step(run: Path) -> int | None:
    try:
        return read_state(run / "last.state.pt.tmp")["step"]
    except Exception:  # noqa: BLE001 - a torn file is expected here
        return None


@pytest.mark.slow
def test_kills_at_random_moments_and_inside_commits_then_resume_equals_uninterrupted(tmp_path, mnist, one_thread):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    why = f"(random seed {seed})"
    subset = mnist_slice(mnist, SUBSET)
    reference = train(make_config(RECIPE, out=str(tmp_path / "reference")), dataset=subset, progress=False,
                      log=quiet)
    run = tmp_path / "run"
    first = ["train", *TRAIN_ARGS, "--out", str(run)]
    resume = ["train", "--resume", str(run), "--no-progress"]
    kills = []  # (where, the step of the checkpoint the kill left), one per kill
    starts = []  # the step each resume went on from, one per resume

    # 1. Killed between the two renames of the very first commit: weights in place, state only in its .tmp.
    t = Training(first, kill_hook="rename:last.safetensors:1")
    assert t.finish() == -signal.SIGKILL, t.output
    assert not (run / "last.state.pt").exists() and (run / "last.state.pt.tmp").exists()
    kills.append(("between renames, first commit", assert_everything_loads(run, tmp_path / "check")))

    # 2. A random moment in a tight window after an epoch line: around the checkpoint write and the plot.
    t = Training(resume)
    starts.append(t.resumed_at())
    t.wait_for(r"^epoch \d/6:")
    time.sleep(rng.uniform(0, 0.2))
    t.kill()
    kills.append(("random, after an epoch line", assert_everything_loads(run, tmp_path / "check")))

    # 3. In the middle of writing the state file: a torn last.state.pt.tmp, the previous pair intact.
    t = Training(resume, kill_hook="write:last.state.pt:1")
    starts.append(t.resumed_at())
    assert t.finish() == -signal.SIGKILL, t.output
    assert (run / "last.state.pt.tmp").exists() and read_state_step(run) is None
    kills.append(("state file half written", assert_everything_loads(run, tmp_path / "check")))

    # 4. Between the renames of a later commit: the weights one epoch ahead of the state file.
    t = Training(resume, kill_hook="rename:last.safetensors:1")
    starts.append(t.resumed_at())
    assert t.finish() == -signal.SIGKILL, t.output
    assert load_run(run, "last").meta["step"] == read_state_step(run) != read_state(run / "last.state.pt")["step"]
    kills.append(("between renames", assert_everything_loads(run, tmp_path / "check")))

    # 5. Any moment of the next epoch: the middle of it, or its checkpoint (at most one epoch of progress).
    t = Training(resume)
    starts.append(t.resumed_at())
    t.wait_for(r"^epoch \d/6:", timeout=rng.uniform(0, 1.5))
    t.kill()
    kills.append(("random, any time", assert_everything_loads(run, tmp_path / "check")))

    # 6. Right on an epoch line, with no delay: most likely inside best/metrics/last writes.
    t = Training(resume)
    starts.append(t.resumed_at())
    t.wait_for(r"^epoch \d/6:")
    time.sleep(rng.uniform(0, 0.02))
    t.kill()
    kills.append(("random, on an epoch line", assert_everything_loads(run, tmp_path / "check")))

    t = Training(resume)
    starts.append(t.resumed_at())
    assert t.finish() == 0, f"{why}\n{t.output}"
    assert f"after {EPOCHS} epochs" in t.output, t.output

    # No kill cost more than the epoch it landed in: every resume went on from the checkpoint the kill before
    # it left (a run that silently starts over would still end equal to the reference, below).
    steps = [step for _, step in kills]
    assert starts == steps, (f"resumes started at {starts}, the kills left checkpoints at {steps}", kills, why)
    assert steps[0] == STEPS, (kills, why)  # the first commit, interrupted between its renames, is completed
    assert steps[2] == steps[1], (kills, why)  # a torn state file leaves the previous checkpoint in force
    assert steps[3] == steps[2] + STEPS, (kills, why)  # a later commit interrupted between renames: completed
    assert steps == sorted(steps) and steps[-1] < STEPS * EPOCHS, (kills, why)  # all mid-training, no step back

    resumed, straight = read_metrics(run), read_metrics(tmp_path / "reference")
    assert without_timing(resumed) == without_timing(straight), (kills, why)
    assert len(straight) == EPOCHS and straight[-1]["test_accuracy"] > 0.95
    for name in ("last", "best"):
        a = load_run(run, name).model.state_dict()
        b = load_run(tmp_path / "reference", name).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), (name, kills, why)
    assert reference.final["step"] == STEPS * EPOCHS
    assert not list(run.glob("*.tmp")), "temporary files left after the run finished"


# ---------------------------------------------------------------------------------------------
# Plain resume equivalence, in this process, on a slice of MNIST


@pytest.fixture(scope="module")
def small(mnist):
    """3,000 training and 2,000 test images: 30 steps an epoch at batch 100."""
    return mnist_slice(mnist, 3000, 2000)


# a CNN with dropout: resuming must also restore the random state its dropout draws from
BASE = dict(model="cnn", optimizer="sgd", lr=0.05, momentum=0.9, batch_size=100, epochs=2, seed=7,
            normalization="unit", threads=1)


def assert_same_run(a: Path, b: Path) -> None:
    assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
    wa, wb = load_run(a, "last").model.state_dict(), load_run(b, "last").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_epochs_equal_one_plus_resumed_one(small, tmp_path, one_thread):
    """Constant lr: `--epochs 1`, then `--resume RUN --epochs 2`, is the 2-epoch run. The first part is itself a
    resume of a run killed before its first checkpoint (config.json only), which starts from scratch."""
    straight = train(make_config(BASE, out=str(tmp_path / "straight")), dataset=small, progress=False, log=quiet)
    split = tmp_path / "split"
    split.mkdir()
    (split / "config.json").write_text(make_config(BASE, epochs=1, out=str(split)).to_json())
    logged = []
    first = train(resume_config(split), dataset=small, resume=True, progress=False, log=logged.append)
    assert "has no checkpoint yet" in logged[0] and first.final["step"] == 30
    said_before = len(logged)
    resumed = train(resume_config(split, epochs=2), dataset=small, resume=True, progress=False, log=logged.append)
    assert "at epoch 1, step 30" in logged[said_before]  # the resumed run's first line says where it goes on
    assert [r["step"] for r in resumed.history] == [30, 60] and straight.final["test_accuracy"] > 0.8
    assert_same_run(tmp_path / "straight", split)


@pytest.mark.slow
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_with_a_schedule_continues_the_planned_run(small, tmp_path, one_thread, ema):
    """A schedule spans the planned epochs: stop a 2-epoch cosine run after epoch 1, resume with --max-steps 0.
    With weight averaging the checkpoint must carry both the raw and the averaged weights."""
    cfg = dict(BASE, schedule="cosine", ema=ema)
    train(make_config(cfg, out=str(tmp_path / "straight")), dataset=small, progress=False, log=quiet)
    train(make_config(cfg, max_steps=30, out=str(tmp_path / "split")), dataset=small, progress=False, log=quiet)
    train(resume_config(tmp_path / "split", max_steps=0), dataset=small, resume=True, progress=False, log=quiet)
    assert_same_run(tmp_path / "straight", tmp_path / "split")


@pytest.mark.slow
def test_a_run_cut_by_max_steps_goes_on_mid_epoch_as_the_uninterrupted_run(small, tmp_path, one_thread):
    """--max-steps 15 (half of epoch 1), then --resume --max-steps 45, then --resume --max-steps 0: each resume
    goes on from the step it stopped at, in the same epoch and data order, and the epochs in metrics.csv say
    where each evaluation stood. The weights at the end, and the test figures at each epoch's end, are the
    uninterrupted run's (cosine schedule: the learning rate follows the global step)."""
    cfg = dict(BASE, schedule="cosine")
    straight = train(make_config(cfg, out=str(tmp_path / "straight")), dataset=small, progress=False, log=quiet)
    split = tmp_path / "split"
    train(make_config(cfg, max_steps=15, out=str(split)), dataset=small, progress=False, log=quiet)
    assert read_state(split / "last.state.pt")["epoch"] == 0 and read_state(split / "last.state.pt")["epoch_step"] == 15
    logged: list[str] = []
    train(resume_config(split, max_steps=45), dataset=small, resume=True, progress=False, log=logged.append)
    assert logged[0].endswith("at epoch 0, step 15 (its step 15 of epoch 1)"), logged
    train(resume_config(split, max_steps=0), dataset=small, resume=True, progress=False, log=quiet)
    rows = read_metrics(split)
    assert [(r["step"], r["epoch"]) for r in rows] == [(15, 0.5), (30, 1.0), (45, 1.5), (60, 2.0)]
    epoch_ends = [{k: r[k] for k in ("step", "epoch", "test_loss", "test_accuracy", "lr")} for r in rows[1::2]]
    assert epoch_ends == [{k: r[k] for k in epoch_ends[0]} for r in without_timing(read_metrics(straight.run_dir))]
    wa, wb = load_run(straight.run_dir, "last").model.state_dict(), load_run(split, "last").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_one_epoch_run_cut_by_max_steps_takes_more_steps_on_resume(small, tmp_path, one_thread):
    """`--max-steps 10` then `--resume --max-steps 20` of a 1-epoch run: the epoch was not finished, so there is
    work left (not "already trained 1 epoch of 1"), and step 20 is two thirds of the way through it."""
    train(make_config(BASE, epochs=1, max_steps=10, out=str(tmp_path / "run")), dataset=small, progress=False,
          log=quiet)
    resumed = train(resume_config(tmp_path / "run", max_steps=20), dataset=small, resume=True, progress=False,
                    log=quiet)
    assert [(r["step"], r["epoch"]) for r in resumed.history] == [(10, 0.3333), (20, 0.6667)]
