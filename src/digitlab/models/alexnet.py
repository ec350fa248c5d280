"""AlexNet (Krizhevsky et al. 2012) with its first layers adapted to small images."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import probability, register_model


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) with its first layers adapted to 28x28 inputs."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=1),  # (B, 64, 26, 26)
            nn.Conv2d(64, 192, 3, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # (B, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(9216, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def alexnet(dropout: float = 0.5) -> nn.Module:
    """AlexNet (Krizhevsky et al. 2012) adapted to 28x28: 5 conv layers, 9216-4096-4096-10 head."""
    return AlexNet(probability("alexnet", "dropout", dropout))
