"""The small BatchNorm-and-dropout CNN of the common MNIST tutorials."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import conv_out, flat_features, probability, register_model


def cnn_side(side: int) -> int:
    """One side of the CNN's last feature map: two rounds of 5x5 conv (padding 1) and 2x2 max pool."""
    for _ in range(2):
        side = conv_out(conv_out(side, 5, padding=1), 2, 2)
    return side


class CNN(nn.Module):
    """Two conv blocks (conv, maxpool, ReLU, BatchNorm) and a dropout MLP head 500-60-20-10 (500 = 20 x 5 x 5
    for 28x28 images)."""

    def __init__(self, dropout: float = 0.5, num_classes: int = 10, in_chans: int = 1,
                 image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 10, 5, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(10),  # (B,10,13,13)
            nn.Conv2d(10, 20, 5, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(20),  # (B,20,5,5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat_features("cnn", 20, *map(cnn_side, image_size)), 60), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(60, 20), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(20, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def cnn(dropout: float = 0.5, num_classes: int = 10, in_chans: int = 1,
        image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Small CNN with BatchNorm and dropout, the common 'MNIST CNN with BN' tutorial network."""
    return CNN(probability("cnn", "dropout", dropout), num_classes, in_chans, image_size)
