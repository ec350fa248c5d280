"""One device helper and one seed helper, shared by training, evaluation and serving."""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from digitlab.errors import ConfigError


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
