"""Data-parallel training with PyTorch's own engine: torchrun sets the environment, we read it.

    torchrun --nproc_per_node=2 -m digitlab train --preset cnn-bn

Each of the N processes (ranks) trains on a disjoint shard of every epoch's permutation with
batch_size / N images per step; DistributedDataParallel averages gradients, so one step sees the
whole global batch and the learning rate means what it means on one device. gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from digitlab.errors import ConfigError


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
