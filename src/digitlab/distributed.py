"""Data-parallel training with PyTorch's own engine: torchrun sets the environment, we read it.

    torchrun --nproc_per_node=2 -m digitlab train --preset cnn-bn

Each of the N processes (ranks) trains on a disjoint shard of every epoch's permutation with
batch_size / N images per step; DistributedDataParallel averages gradients, so one step sees the
whole global batch and the learning rate means what it means on one device. gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from digitlab.errors import ConfigError, DigitlabError

# What gloo and NCCL say when the other end of a collective is gone (its process died, or was killed).
LOST_WORDS = re.compile(r"connection (?:reset|closed|refused)[a-z ]*|broken pipe|socket timeout|timed out|"
                        r"remote process exited|nccl communicator was aborted", re.IGNORECASE)


class PeerLost(DigitlabError):
    """Another training process (rank) stopped answering: it died, was killed, or its machine went away."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; one process without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistContext(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def setup(ctx: DistContext, device: torch.device) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA) when running under torchrun."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)


def rank_device(ctx: DistContext, device: torch.device) -> torch.device:
    """On CUDA each local rank gets its own GPU."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def check_batch_size(ctx: DistContext, batch_size: int) -> int:
    """The per-rank batch size; the global batch must split evenly across ranks."""
    if batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {ctx.world_size} processes")
    return batch_size // ctx.world_size


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor of statistics over all ranks (no-op on one process)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(value, src: int = 0):
    """Send a picklable value (e.g. the run folder path) from rank 0 to every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_peer_lost(error: BaseException) -> bool:
    """Whether an error raised by a collective (DDP's gradient all-reduce, a barrier, a broadcast) means another
    rank is gone, rather than a bug in this one."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and (
        bool(LOST_WORDS.search(str(error))) and ("gloo" in str(error).lower() or "nccl" in str(error).lower())))


def peer_lost(ctx: DistContext, error: BaseException) -> PeerLost:
    """One line for a rank that lost the others: which rank is gone where that can be told (of two, the other),
    and why in the backend's own words, without its C++ source path and advice; SIGTERM is held from here on
    (torchrun sends it to the ranks left once one has died), so the line is printed before the process ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    gone = f"rank {1 - ctx.rank}" if ctx.world_size == 2 else "another rank"
    found = LOST_WORDS.search(str(error))
    reason = found.group(0).strip() if found else type(error).__name__
    return PeerLost(f"rank {ctx.rank} of {ctx.world_size}: lost its connection to the other ranks ({reason}): "
                    f"{gone} has died or was killed (see its output); the run stops here, its checkpoints on disk "
                    "are kept")
