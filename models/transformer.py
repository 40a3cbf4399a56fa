"""Transformer encoder over windows of feature rows: learned positions, pre-norm layers, the
last position's state feeds a linear head."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from models.torch_base import SequenceModel


class _EncoderNet(nn.Module):
    def __init__(
        self,
        n_features: int,
        window: int,
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
        n_out: int,
    ):
        super().__init__()
        self.embed = nn.Linear(n_features, hidden)
        self.position = nn.Parameter(torch.zeros(1, window, hidden))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            dim_feedforward=2 * hidden,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[:, -x.shape[1] :]
        *inner, last = self.encoder.layers
        for layer in inner:
            h = layer(h)
        return self.head(self.norm(_last_position(last, h)))


def _last_position(layer: nn.TransformerEncoderLayer, h: torch.Tensor) -> torch.Tensor:
    """The pre-norm layer's output at the last position only: it attends over every position
    but only that query is computed, since the head reads nothing else. Equal to
    `layer(h)[:, -1]`, at a fraction of the last layer's cost (training and serving)."""
    normed = layer.norm1(h)
    query = normed[:, -1:]
    attended = layer.self_attn(query, normed, normed, need_weights=False)[0]
    out = h[:, -1:] + layer.dropout1(attended)
    feed = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(out)))))
    return (out + layer.dropout2(feed))[:, 0]


class TransformerModel(SequenceModel):
    kind = "transformer"
    extra_defaults: ClassVar[dict[str, Any]] = {"heads": 4}

    def build(self, n_features: int, n_out: int) -> nn.Module:
        p = self.params
        if int(p["hidden"]) % int(p["heads"]):
            raise ValueError(f"hidden {p['hidden']} must be a multiple of heads {p['heads']}")
        return _EncoderNet(
            n_features,
            int(p["window"]),
            int(p["hidden"]),
            int(p["layers"]),
            int(p["heads"]),
            float(p["dropout"]),
            n_out,
        )
