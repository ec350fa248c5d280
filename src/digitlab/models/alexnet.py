"""AlexNet (Krizhevsky et al. 2012) with its first layers adapted to small images."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import conv_out, flat_features, probability, register_model


def alexnet_side(side: int) -> int:
    """One side of AlexNet's last feature map: 3x3 pool stride 1, a padding-2 3x3 conv (+2), two 3x3 pools
    stride 2; the other convs keep the size. 6 for 28."""
    side = conv_out(side, 3) + 2
    return conv_out(conv_out(side, 3, 2), 3, 2)


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) with its first layers adapted to 28x28 inputs (a 256 x 6 x 6 = 9216
    feature map there; other sizes give other widths)."""

    def __init__(self, dropout: float = 0.5, num_classes: int = 10, in_chans: int = 1,
                 image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=1),  # (B, 64, 26, 26)
            nn.Conv2d(64, 192, 3, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # (B, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(flat_features("alexnet", 256, *map(alexnet_side, image_size)), 4096),
            nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def alexnet(dropout: float = 0.5, num_classes: int = 10, in_chans: int = 1,
            image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """AlexNet (Krizhevsky et al. 2012) adapted to 28x28: 5 conv layers, 9216-4096-4096-10 head."""
    return AlexNet(probability("alexnet", "dropout", dropout), num_classes, in_chans, image_size)
