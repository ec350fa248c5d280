"""Recurrent models: the image rows are time steps (pytorch/examples mnist_rnn)."""
from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import positive_int, register_model


class RowRNN(nn.Module):
    """Reads the image row by row with an RNN, LSTM or GRU; the last step's output feeds a Linear."""

    def __init__(self, cell: str, hidden_size: int, num_layers: int):
        super().__init__()
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_cls(input_size=28, hidden_size=hidden_size, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 28, 28)  # (B, T=28 rows, 28 features)
        out, _ = self.rnn(x)  # (B, T, H)
        return self.fc(out[:, -1])


@register_model
def rnn(hidden_size: int = 128, num_layers: int = 1) -> nn.Module:
    """Elman RNN (tanh) over image rows."""
    return RowRNN("rnn", positive_int("rnn", "hidden_size", hidden_size),
                  positive_int("rnn", "num_layers", num_layers))


@register_model
def lstm(hidden_size: int = 128, num_layers: int = 1) -> nn.Module:
    """LSTM (Hochreiter & Schmidhuber 1997) over image rows, as in pytorch/examples mnist_rnn."""
    return RowRNN("lstm", positive_int("lstm", "hidden_size", hidden_size),
                  positive_int("lstm", "num_layers", num_layers))


@register_model
def gru(hidden_size: int = 128, num_layers: int = 1) -> nn.Module:
    """GRU (Cho et al. 2014) over image rows."""
    return RowRNN("gru", positive_int("gru", "hidden_size", hidden_size),
                  positive_int("gru", "num_layers", num_layers))
