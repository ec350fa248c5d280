"""The small BatchNorm-and-dropout CNN of the common MNIST tutorials."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import probability, register_model


class CNN(nn.Module):
    """Two conv blocks (conv, maxpool, ReLU, BatchNorm) and a dropout MLP head 500-60-20-10."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, 5, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(10),  # (B,10,13,13)
            nn.Conv2d(10, 20, 5, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(20),  # (B,20,5,5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(500, 60), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(60, 20), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(20, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def cnn(dropout: float = 0.5) -> nn.Module:
    """Small CNN with BatchNorm and dropout, the common 'MNIST CNN with BN' tutorial network."""
    return CNN(probability("cnn", "dropout", dropout))
