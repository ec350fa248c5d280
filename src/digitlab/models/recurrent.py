"""Recurrent models: the image rows are time steps (pytorch/examples mnist_rnn): 28 steps of 28 features for
MNIST; in general `height` steps of `channels x width` features."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import positive_int, register_model


class RowRNN(nn.Module):
    """Reads the image row by row with an RNN, LSTM or GRU; the last step's output feeds a Linear. Each step
    reads one row of every channel, side by side (channels x width features)."""

    def __init__(self, cell: str, hidden_size: int, num_layers: int, num_classes: int = 10, in_chans: int = 1,
                 image_size: tuple[int, int] = (28, 28)):
        super().__init__()
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.in_chans, self.steps, self.step_width = in_chans, image_size[0], in_chans * image_size[1]
        self.rnn = rnn_cls(input_size=self.step_width, hidden_size=hidden_size, num_layers=num_layers,
                           batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_chans > 1:  # (B, C, H, W) -> (B, H, C, W): a time step holds a row of each channel
            x = x.transpose(1, 2)
        x = x.reshape(x.shape[0], self.steps, self.step_width)  # (B, T=rows, features)
        out, _ = self.rnn(x)  # (B, T, H)
        return self.fc(out[:, -1])


def row_rnn(cell: str, hidden_size: int, num_layers: int, num_classes: int, in_chans: int,
            image_size: tuple[int, int]) -> RowRNN:
    """A RowRNN with its options checked, named by `cell` in the errors."""
    return RowRNN(cell, positive_int(cell, "hidden_size", hidden_size), positive_int(cell, "num_layers", num_layers),
                  num_classes, in_chans, image_size)


@register_model
def rnn(hidden_size: int = 128, num_layers: int = 1, num_classes: int = 10, in_chans: int = 1,
        image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Elman RNN (tanh) over image rows."""
    return row_rnn("rnn", hidden_size, num_layers, num_classes, in_chans, image_size)


@register_model
def lstm(hidden_size: int = 128, num_layers: int = 1, num_classes: int = 10, in_chans: int = 1,
         image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """LSTM (Hochreiter & Schmidhuber 1997) over image rows, as in pytorch/examples mnist_rnn."""
    return row_rnn("lstm", hidden_size, num_layers, num_classes, in_chans, image_size)


@register_model
def gru(hidden_size: int = 128, num_layers: int = 1, num_classes: int = 10, in_chans: int = 1,
        image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """GRU (Cho et al. 2014) over image rows."""
    return row_rnn("gru", hidden_size, num_layers, num_classes, in_chans, image_size)
