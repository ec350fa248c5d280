"""One device helper and one seed helper, shared by training, evaluation and serving; the CPU thread count a
training run picks when its config leaves `threads` at 0."""
from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from digitlab.errors import ConfigError

# torch's own thread count (OMP_NUM_THREADS, MKL_NUM_THREADS, else its count of cores), read once before digitlab
# sets any: what `threads` 0 meant before training_threads(), and the most that it picks.
TORCH_THREADS = torch.get_num_threads()
FREE_WINDOW_S = 0.05  # how long free_cpus() watches /proc/stat: 5 ticks of 10 ms per CPU, under 1% of a `fast` run


def pick_device(name: str = "auto") -> torch.device:
    """'auto' gives cuda, then mps, then cpu; an explicit name must be available here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name (try auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but this machine has no usable CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but this machine has no usable Apple GPU")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions and matmuls in hardware (AMX or AVX512-BF16) on this CPU.
    Elsewhere bf16 is emulated and slower than fp32, so CPU autocast is only worth it here."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_autocast(device: torch.device, cuda_amp: bool, cpu_amp: bool) -> torch.autocast:
    """bf16 autocast for the forward pass where it pays: CUDA when `cuda_amp`, a CPU with native bf16
    when `cpu_amp`. Weights, optimizer state and the loss stay fp32; the run's evaluation uses it only with
    TrainConfig.eval_amp (`fast`), and `digitlab evaluate` never does."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda_amp)
    return torch.autocast("cpu", dtype=torch.bfloat16,
                          enabled=cpu_amp and device.type == "cpu" and cpu_has_native_bf16())


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state training uses, as plain data loadable with torch.load(weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved, so a resumed run draws the same dropout and augmentation."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def use_channels_last(model: torch.nn.Module, device: torch.device | str,
                      enabled: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """The one place digitlab decides on the channels_last memory format: for a model with 2-D convolutions,
    on CUDA (what its tensor cores want), and on other devices for models that say oneDNN runs them faster so
    (a `channels_last_on_cpu = True` attribute: DigitNet, about 1.5x). Converts the model's weights in place
    and returns the same conversion for input batches; otherwise, or with enabled=False, the identity."""
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    wanted = enabled and has_conv and (torch.device(device).type == "cuda"
                                       or getattr(model, "channels_last_on_cpu", False))
    if not wanted:
        return lambda x: x
    model.to(memory_format=torch.channels_last)
    return lambda x: x.contiguous(memory_format=torch.channels_last)


def free_cpus(window_s: float = FREE_WINDOW_S) -> float | None:
    """How many of the CPUs this process may run on (its affinity) the rest of the machine left idle over the
    next `window_s`, from the per-CPU counters in /proc/stat: 2.0 on an idle 2-core machine, about 1.0 while
    another job keeps one core busy. It is what runs now that counts: the load average is a minute behind,
    and still high for a minute after the previous training (or a test run) ended. None where /proc/stat
    cannot be read (not Linux)."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = _cpu_ticks(cpus)
        time.sleep(window_s)
        after = _cpu_ticks(cpus)
    except (OSError, AttributeError, ValueError):
        return None
    free = 0.0
    for cpu, (idle, total) in after.items():
        idle0, total0 = before.get(cpu, (idle, total))
        if total > total0:
            free += (idle - idle0) / (total - total0)
    return free if after else None


def _cpu_ticks(cpus: set[str]) -> dict[str, tuple[int, int]]:
    """(idle + iowait, all but guest time) ticks of each CPU named in `cpus`, from /proc/stat."""
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name in cpus:
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                ticks[name] = (values[3] + values[4], sum(values))
    return ticks


def pick_threads(free: float | None, most: int | None = None) -> int:
    """The thread count for a run that finds `free` idle CPUs (free_cpus()): a CPU busy more than half the
    time counts as taken; at least 1, at most `most` (default TORCH_THREADS); None (nothing known) gives `most`.

    Why not torch's default, one OpenMP thread per core: each op splits its work evenly between the threads,
    so when another job holds a core (a second training, a test run), the thread sharing it runs at half speed,
    the others wait for it at the end of every op, and libgomp's waiting threads spin on the CPU the other job
    needs. On a 2-core machine with one core kept busy, `fast` took 2.3 to 2.5 times as long on 2 threads as
    on 1; idle, 2 threads are the faster (docs/benchmarks.md, "Training beside another job").
    OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning) helped less beside the busy core and cost
    14-32% more time on the idle machine, so digitlab leaves libgomp's waiting as it is."""
    most = TORCH_THREADS if most is None else most
    usable = most if free is None else min(most, math.floor(free + 0.5))
    return max(1, usable)


def training_threads(threads: int, device: torch.device, ranks: int = 1) -> int:
    """The CPU threads a training run uses: `threads` when its config gives them (the user's --threads, a
    sweep's share of the cores); for one process training on the CPU with 0, pick_threads() of the CPUs free
    at its start. Otherwise what 0 always meant: torch's current count, split between `ranks` local DDP ranks
    on the CPU (they start together, so each would see the others' start-up as load). The count changes the
    last digits of a run's figures (sums in another order), so a run that must repeat bit for bit gives `threads`.
    Called by the training set-up, training.set_threads: torch.set_num_threads(training_threads(cfg.threads, device,
    ctx.local_world_size if ctx.enabled else 1))."""
    if threads:
        return threads
    if device.type == "cpu" and ranks == 1:
        return pick_threads(free_cpus())
    return max(1, torch.get_num_threads() // ranks) if device.type == "cpu" else torch.get_num_threads()
