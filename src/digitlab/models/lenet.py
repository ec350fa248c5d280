"""LeNet-5 (LeCun et al. 1998) as d2l.ai builds it."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import choice, conv_out, flat_features, register_model


class LeNet5(nn.Module):
    """LeNet-5 as in LeCun et al. 1998 / d2l.ai: sigmoid units and average pooling. The first Linear's width
    follows the image: 16 x 5 x 5 = 400 for 28x28."""

    def __init__(self, activation: str = "sigmoid", pool: str = "avg", num_classes: int = 10, in_chans: int = 1,
                 image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        acts = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
        pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
        act = acts[choice("lenet5", "activation", activation, acts)]
        pool_cls = pools[choice("lenet5", "pool", pool, pools)]
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2), act(), pool_cls(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5), act(), pool_cls(2),  # (B, 16, 5, 5)
        )
        flat = flat_features("lenet5", 16, *(conv_out(conv_out(side // 2, 5), 2, 2) for side in image_size))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes),
        )
        for m in self.modules():  # Xavier-uniform init, as the recipe prescribes
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def lenet5(activation: str = "sigmoid", pool: str = "avg", num_classes: int = 10, in_chans: int = 1,
           image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998), sigmoid + average pooling, Xavier init; relu/max as options."""
    return LeNet5(activation, pool, num_classes, in_chans, image_size)
