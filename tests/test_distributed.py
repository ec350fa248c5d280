"""Data-parallel training under torchrun (gloo on CPU): same results semantics as one process.

`--batch-size` is the global batch: each of N ranks takes batch/N images of a disjoint shard, and DDP averages
the gradients, so one step sees the same images and the same mean gradient as one process with that batch.
These tests check the shard arithmetic exactly, then run real torchrun jobs on MNIST: the accuracy matches
the one-process run, only rank 0 writes, the run folder is complete, and --resume continues exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from digitlab import load_dataset, load_run, make_config, train
from digitlab.checkpoint import load_training_checkpoint
from digitlab.config import config_from_json
from digitlab.distributed import DistContext, check_batch_size
from digitlab.errors import ConfigError
from digitlab.runs import read_metrics
from digitlab.training import epoch_permutation, rank_shard

REPO = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).with_name("digitlab_wrapped.py")
TIMING = ("elapsed_s", "images_per_s", "data_fraction")
CNN_ARGS = ["--model", "cnn", "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "128", "--max-steps", "200",
            "--epochs", "1", "--no-progress"]


def torchrun(*args: str, cwd: Path, write_log: Path | None = None, train_subset: int = 0, timeout: float = 240,
             kill: str | None = None):
    """`torchrun --standalone --nproc_per_node=2 tests/digitlab_wrapped.py ARGS`, found via this Python; with
    `kill` (DIGITLAB_TEST_KILL) it is expected to fail, and its result is returned as it is."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if kill:
        env["DIGITLAB_TEST_KILL"] = kill
    if write_log:
        env["DIGITLAB_TEST_WRITE_LOG"] = str(write_log)
    if train_subset:
        env["DIGITLAB_TEST_TRAIN_SUBSET"] = str(train_subset)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WRAPPER), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert kill or proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_complete_run(run: Path, steps: int) -> list[dict]:
    """config.json, metrics.csv rows and loadable last/best checkpoints; returns the metrics rows."""
    cfg = config_from_json((run / "config.json").read_text())
    assert cfg.batch_size in (128, 256)
    rows = read_metrics(run)
    assert rows and rows[-1]["step"] == steps
    assert load_run(run, "last").meta["step"] == steps
    assert load_run(run, "best").model_name == cfg.model
    _weights, meta, state = load_training_checkpoint(run, "last")
    assert meta["step"] == state["step"] == steps
    assert not list(run.glob("*.tmp")), "a temporary file was left in the run folder"
    return rows


# ---------------------------------------------------------------------------------------------
# The shard arithmetic, exactly


@pytest.mark.quick
@pytest.mark.parametrize("num_examples", [60_000, 1_003])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shards_are_disjoint_and_add_up_to_one_process_batches(num_examples, world):
    batch = 12 * world  # the global batch; each rank takes batch / world per step
    local = check_batch_size(DistContext(0, world), batch)
    perm = epoch_permutation(num_examples, seed=3, epoch=5)
    shards = [rank_shard(num_examples, 3, 5, rank, world) for rank in range(world)]
    n = num_examples - num_examples % world
    assert all(len(s) == n // world for s in shards)  # same length: ranks stay in step
    together = torch.cat(shards)
    assert len(set(together.tolist())) == n  # disjoint, and nothing but the dropped tail is missing
    assert set(together.tolist()) == set(perm[:n].tolist())
    for i in range(0, n // world, local):  # step i of all ranks == step i of one process with the global batch
        step_images = torch.cat([s[i:i + local] for s in shards])
        start = i * world
        assert sorted(step_images.tolist()) == sorted(perm[start:min(start + batch, n)].tolist())


@pytest.mark.quick
def test_one_process_shard_is_the_epoch_permutation():
    assert torch.equal(rank_shard(1000, 0, 2), epoch_permutation(1000, 0, 2))
    assert not torch.equal(epoch_permutation(1000, 0, 2), epoch_permutation(1000, 0, 3))  # a new order each epoch


@pytest.mark.quick
def test_global_batch_must_split_evenly():
    assert check_batch_size(DistContext(0, 2), 128) == 64
    with pytest.raises(ConfigError, match="does not split evenly over 3"):
        check_batch_size(DistContext(0, 3), 128)


# ---------------------------------------------------------------------------------------------
# Real torchrun jobs on MNIST (slow: about 15 s each on 2 cores)


@pytest.mark.slow
def test_two_processes_match_one_process_and_only_rank0_writes(tmp_path):
    mnist = load_dataset("mnist", progress=False)
    threads = torch.get_num_threads()
    try:
        cfg = make_config(model="cnn", optimizer="adam", lr=3e-3, batch_size=128, max_steps=200, epochs=1,
                          threads=1, out=str(tmp_path / "one"))
        one = train(cfg, dataset=mnist, progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = torchrun("train", *CNN_ARGS, "--out", str(tmp_path / "two"), cwd=tmp_path, write_log=logs)

    two = assert_complete_run(tmp_path / "two", 200)
    assert_complete_run(tmp_path / "one", 200)
    acc1, acc2 = one.final["test_accuracy"], two[-1]["test_accuracy"]
    assert acc1 >= 0.96 and acc2 >= 0.96, (acc1, acc2)
    assert abs(acc1 - acc2) <= 0.015, (acc1, acc2)
    assert two[-1]["epoch"] == one.final["epoch"]  # 200 steps of the same global batch: the same share of an epoch
    assert proc.stdout.count("run: ") == 1 and proc.stdout.count("epoch 1/1:") == 1  # rank 0 reports
    assert "best -" not in proc.stdout
    assert not (logs / "writes-rank1.log").exists(), (logs / "writes-rank1.log").read_text()
    written = {Path(line).name for line in (logs / "writes-rank0.log").read_text().split()}
    assert written == {"config.json", "metrics.csv", "best.safetensors", "last.safetensors", "last.state.pt",
                       "curves.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "one", "two"]


@pytest.mark.slow
def test_resume_under_torchrun_equals_uninterrupted(tmp_path):
    """2 epochs in one go == epoch 1 (a 2-epoch plan stopped by --max-steps) + `--resume --max-steps 0`."""
    args = ["--model", "mlp", "--optimizer", "adam", "--batch-size", "256", "--schedule", "cosine",
            "--epochs", "2", "--no-progress"]
    steps = 24  # per epoch: 6000 images in 2 shards of 3000, 128 per rank and step
    torchrun("train", *args, cwd=tmp_path, train_subset=6000)  # no --out: rank 0 names the folder, broadcasts it
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # exactly one run folder, not one per rank
    straight = assert_complete_run(runs[0], 2 * steps)

    split = tmp_path / "split"
    torchrun("train", *args, "--max-steps", str(steps), "--out", str(split), cwd=tmp_path, train_subset=6000)
    assert [r["step"] for r in read_metrics(split)] == [steps]
    proc = torchrun("train", "--resume", str(split), "--max-steps", "0", "--no-progress", cwd=tmp_path,
                    train_subset=6000)
    assert f"at epoch 1, step {steps}" in proc.stdout
    resumed = assert_complete_run(split, 2 * steps)
    assert without_timing(resumed) == without_timing(straight)
    a, b = load_run(runs[0], "last").model.state_dict(), load_run(split, "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed[-1]["test_accuracy"] > 0.85


@pytest.mark.slow
def test_a_killed_rank_is_one_line_on_rank_0_not_a_backend_traceback(tmp_path):
    """Rank 1 SIGKILLed at its 5th step: rank 0's next collective finds the connection gone. It says so in one
    line naming rank 1, exits non-zero and releases the run folder's lock; no gloo traceback is printed."""
    from digitlab.runs import LOCK_NAME

    proc = torchrun("train", "--model", "mlp", "--batch-size", "64", "--epochs", "1", "--threads", "1",
                    "--no-progress", "--out", "run", cwd=tmp_path, train_subset=4000, kill="step:rank1:5")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("digitlab: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("digitlab: error: rank 0 of 2: lost its connection to the other ranks (")
    assert "rank 1 has died or was killed" in errors[0]
    assert "[rank0]" not in proc.stderr and "pair.cc" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / LOCK_NAME).exists()
