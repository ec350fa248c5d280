"""Fully connected: the multilayer perceptron."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.errors import ConfigError
from digitlab.models.registry import positive_int, register_model


class MLP(nn.Module):
    """784-300-100-10 with BatchNorm after each hidden Linear (Ioffe & Szegedy 2015); the input width is the
    image's channels x height x width, the output width its classes."""

    def __init__(self, hidden: tuple[int, ...] = (300, 100), num_classes: int = 10, in_chans: int = 1,
                 image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_chans * image_size[0] * image_size[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model
def mlp(hidden: tuple[int, ...] = (300, 100), num_classes: int = 10, in_chans: int = 1,
        image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Multilayer perceptron 784-300-100-10 with BatchNorm1d and ReLU (LeCun et al. 1998's sizes)."""
    if not isinstance(hidden, (list, tuple)):
        raise ConfigError(f"mlp: hidden must be a list of layer widths, e.g. [300, 100], got {hidden!r}")
    return MLP(tuple(positive_int("mlp", "each hidden width", h) for h in hidden), num_classes, in_chans, image_size)
