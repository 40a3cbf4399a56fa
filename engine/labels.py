"""LabelSpec and labels from future candles: fixed-horizon 3-class sell/hold/buy."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

SELL, HOLD, BUY = 0, 1, 2


@dataclass(frozen=True)
class LabelSpec:
    """Label at t from the forward log return close[t+horizon] / close[t].

    buy when it exceeds `threshold`, sell when below `-threshold`, hold otherwise.
    """

    horizon: int = 10
    threshold: float = 0.001  # round-trip fee (2 x 0.05%): a buy must beat it
    scheme: str = "fixed_horizon"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpec:
        return cls(**data)

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"label horizon must be >= 1 candle, got {self.horizon}")
        if self.threshold < 0:
            raise ValueError(f"label threshold must be >= 0, got {self.threshold}")
        if self.scheme != "fixed_horizon":
            raise ValueError(f"unknown label scheme {self.scheme!r}; known: fixed_horizon")


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """log(close[t+h] / close[t]); NaN for the last `horizon` rows, which have no future yet."""
    log_close = np.log(close)
    return log_close.shift(-horizon) - log_close


def make_labels(candles: pd.DataFrame, spec: LabelSpec) -> pd.Series:
    """Class index per candle (SELL, HOLD, BUY) indexed by ts; NaN where the future is unknown."""
    fwd = forward_return(candles.set_index("ts")["close"], spec.horizon)
    labels = pd.Series(HOLD, index=fwd.index, dtype="float64")
    labels[fwd > spec.threshold] = BUY
    labels[fwd < -spec.threshold] = SELL
    labels[fwd.isna()] = np.nan
    return labels.rename("label")
