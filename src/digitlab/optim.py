"""Optimisers by name and learning-rate schedules as pure functions of the step (nanoGPT's get_lr)."""
from __future__ import annotations

import math

import torch

from digitlab.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser the config names, with its lr, momentum and weight decay."""
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # validate() makes this unreachable


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step `step` (0-based) of the whole run."""
    total = max(1, round((cfg.schedule_epochs or cfg.epochs) * steps_per_epoch))  # steps after it keep its end lr
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    progress = min(step / total, 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle: linear warm-up from lr/25 to lr, then linear decay to ~0 (airbench-style triangle)
    if progress < cfg.warmup:
        return cfg.lr * (0.04 + 0.96 * progress / cfg.warmup)
    return cfg.lr * max(0.0, (1 - progress) / (1 - cfg.warmup))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
