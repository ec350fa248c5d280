"""Run the digitlab CLI with its file writes instrumented, for the crash-resume and distributed tests.

    python tests/digitlab_wrapped.py train --model mlp ...                    # same as `digitlab train ...`
    python -m torch.distributed.run --nproc_per_node=2 tests/digitlab_wrapped.py train ...

Two environment variables, read by this script only (digitlab itself has no test hooks):

    DIGITLAB_TEST_WRITE_LOG=DIR     every file a process writes in a run folder (through atomic.write_tmp,
                                    and curves.png) is appended to DIR/writes-rank<RANK>.log
    DIGITLAB_TEST_KILL=WHEN:NAME:K  SIGKILL this process at the K-th write of the file called NAME:
                                    WHEN=write: while NAME's .tmp file is half written;
                                    WHEN=rename: right after NAME is renamed into place, before the rest of
                                    its commit (rename:last.safetensors lands between a checkpoint's two renames);
                                    WHEN=step, NAME=rank<R>: SIGKILL rank R at its K-th optimiser step
    DIGITLAB_TEST_TRAIN_SUBSET=N    train on the first N training images only (the test set stays whole),
                                    to keep multi-process tests short
"""
from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import digitlab.atomic as atomic
import digitlab.plots as plots
import digitlab.training as train
from digitlab.cli import main


RANK = os.environ.get("RANK", "0")
WRITE_LOG = os.environ.get("DIGITLAB_TEST_WRITE_LOG")
KILL = os.environ.get("DIGITLAB_TEST_KILL")
TRAIN_SUBSET = int(os.environ.get("DIGITLAB_TEST_TRAIN_SUBSET", "0"))
_seen: Counter = Counter()


def should_kill(when: str, name: str) -> bool:
    """Count this (when, name) event; True when it is the one DIGITLAB_TEST_KILL names."""
    if not KILL:
        return False
    kill_when, kill_name, kill_count = KILL.split(":")
    if (when, name) != (kill_when, kill_name):
        return False
    _seen[when, name] += 1
    return _seen[when, name] == int(kill_count)


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def log_write(path: Path) -> None:
    if WRITE_LOG:
        with open(Path(WRITE_LOG) / f"writes-rank{RANK}.log", "a") as f:
            f.write(f"{path}\n")


def wrap_write_tmp(original):
    def write_tmp(path: Path, write) -> Path:
        log_write(path)
        if should_kill("write", path.name):
            tmp = path.with_name(path.name + ".tmp")
            write(tmp)
            with open(tmp, "r+b") as f:  # leave a torn file, as a kill in the middle of write() does
                f.truncate(tmp.stat().st_size // 2)
                f.flush()
                os.fsync(f.fileno())
            die()
        return original(path, write)
    return write_tmp


def wrap_commit(original):
    def commit(*pairs) -> None:
        for i, (_tmp, final) in enumerate(pairs):
            if should_kill("rename", Path(final).name):
                original(*pairs[:i + 1])  # the renames up to this one, made durable, then the kill
                die()
        original(*pairs)
    return commit


def wrap_plot(original):
    def plot_curves(history, path, *args, **kwargs):
        log_write(Path(path))
        return original(history, path, *args, **kwargs)
    return plot_curves


def wrap_train_step(original):
    def train_step(*args, **kwargs):
        if should_kill("step", f"rank{RANK}"):
            die()
        return original(*args, **kwargs)
    return train_step


def wrap_load_dataset(original):
    def load_dataset(*args, **kwargs):
        ds = original(*args, **kwargs)
        return replace(ds, train_images=ds.train_images[:TRAIN_SUBSET], train_labels=ds.train_labels[:TRAIN_SUBSET])
    return load_dataset


if TRAIN_SUBSET:
    train.load_dataset = wrap_load_dataset(train.load_dataset)
# checkpoint.py and runs.py call these through the module, so replacing them here reaches every run write
atomic.write_tmp = wrap_write_tmp(atomic.write_tmp)
atomic.commit = wrap_commit(atomic.commit)
plots.plot_curves = wrap_plot(plots.plot_curves)
train.train_step = wrap_train_step(train.train_step)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
