"""Weight averaging: an exponential moving average (EMA) of a model's weights and BatchNorm statistics.

The `best` recipes evaluate and save the average, which is smoother than the last step's weights
(TrainConfig.ema is the decay per step; 0 turns it off).
"""
from __future__ import annotations

import copy

import torch


def make_ema(model: torch.nn.Module, averaged: dict | None = None) -> torch.nn.Module:
    """A frozen copy of the model to hold the average, optionally restored from weights saved earlier."""
    ema = copy.deepcopy(model).requires_grad_(False)
    if averaged is not None:
        ema.load_state_dict(averaged)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model over weights and BatchNorm statistics. d = min(decay, (1 + step) / (10 + step))
    warms up so the average never leans on the random initial weights: it spans about the last 10% of steps
    until `decay` caps it (timm's ModelEma warm-up)."""
    d = min(decay, (1 + step) / (10 + step))
    pairs = [(e, m) for e, m in zip(ema.state_dict().values(), model.state_dict().values()) if e.is_floating_point()]
    torch._foreach_lerp_([e for e, _ in pairs], [m for _, m in pairs], 1 - d)
