"""LSTM over windows of feature rows: the last step's output feeds a linear head."""

from __future__ import annotations

import torch
from torch import nn

from models.torch_base import SequenceModel


class _LSTMNet(nn.Module):
    def __init__(self, n_features: int, hidden: int, layers: int, dropout: float, n_out: int):
        super().__init__()
        self.lstm = nn.LSTM(
            n_features,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class LSTMModel(SequenceModel):
    kind = "lstm"

    def build(self, n_features: int, n_out: int) -> nn.Module:
        p = self.params
        return _LSTMNet(n_features, int(p["hidden"]), int(p["layers"]), float(p["dropout"]), n_out)
