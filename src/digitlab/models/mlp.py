"""Fully connected: the multilayer perceptron."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.errors import ConfigError
from digitlab.models.registry import positive_int, register_model


class MLP(nn.Module):
    """784-300-100-10 with BatchNorm after each hidden Linear (Ioffe & Szegedy 2015)."""

    def __init__(self, hidden: tuple[int, ...] = (300, 100)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 10))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model
def mlp(hidden: tuple[int, ...] = (300, 100)) -> nn.Module:
    """Multilayer perceptron 784-300-100-10 with BatchNorm1d and ReLU (LeCun et al. 1998's sizes)."""
    if not isinstance(hidden, (list, tuple)):
        raise ConfigError(f"mlp: hidden must be a list of layer widths, e.g. [300, 100], got {hidden!r}")
    return MLP(tuple(positive_int("mlp", "each hidden width", h) for h in hidden))
