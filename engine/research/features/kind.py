"""What a feature kind is: its defaults, its columns with (warm-up, memory), its batch
computation over a whole series and its live computation of the newest rows; plus the
candle arrays both read and the memory of a recursive (EWM) indicator."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from engine.research.features.kernels import diff

Arrays = dict[str, np.ndarray]
ColumnInfo = dict[str, tuple[int, int]]  # column -> (warm-up, memory)
NS_MINUTE = 60_000_000_000


class Candles:
    """One candle series as float64 arrays; RangeIndex Series made on demand for pandas-ta
    (a RangeIndex keeps pandas-ta's internal reindexing cheap)."""

    def __init__(self, frame: pd.DataFrame, ts: np.ndarray) -> None:
        self.open = frame["open"].to_numpy(np.float64)
        self.high = frame["high"].to_numpy(np.float64)
        self.low = frame["low"].to_numpy(np.float64)
        self.close = frame["close"].to_numpy(np.float64)
        self.volume = frame["volume"].to_numpy(np.float64)
        self.value = (
            frame["value"].to_numpy(np.float64) if "value" in frame else np.full(len(frame), np.nan)
        )
        self.ts = ts  # int64 ns since the epoch, UTC

    @classmethod
    def of_arrays(cls, arrays: dict[str, np.ndarray], ts: np.ndarray) -> Candles:
        """The same from float64 arrays `open`, `high`, `low`, `close`, `volume`, `value`
        (e.g. slices of one query over many series: no DataFrame per series)."""
        data = cls.__new__(cls)
        for name in ("open", "high", "low", "close", "volume", "value"):
            setattr(data, name, arrays[name])
        data.ts = ts
        return data

    def __len__(self) -> int:
        return len(self.close)

    def series(self, name: str) -> pd.Series:
        return self._series[name]

    @cached_property
    def _series(self) -> dict[str, pd.Series]:
        return {
            name: pd.Series(getattr(self, name), copy=False)
            for name in ("open", "high", "low", "close", "volume")
        }

    @cached_property
    def log_close(self) -> np.ndarray:
        return np.log(self.close)

    @cached_property
    def log_return(self) -> np.ndarray:
        return diff(self.log_close, 1)


@dataclass(frozen=True)
class FeatureKind:
    """One kind of feature: its defaults, columns, batch (pandas-ta) and latest (fast) code."""

    name: str
    group: str  # price, volume, indicator, time series, calendar
    doc: str
    defaults: dict[str, Any]
    columns: Callable[..., ColumnInfo]  # (columns so far, **params) -> this kind's columns
    batch: Callable[..., Arrays]  # (candles, talib, **params) -> full columns
    latest: Callable[..., Arrays]  # (window candles, m, **params) -> last m values per column


def ema_memory(alpha: float, start: int, depth: int = 1) -> int:
    """Candles until a recursion with decay (1 - alpha) forgets its start to ~1e-11.

    `depth` > 1 for an average of an average (ADX, MACD signal): the start's trace decays as
    k^(depth-1) (1-alpha)^k, so it takes a few more rounds.
    """
    steps = math.log(1e-11) / math.log(1.0 - alpha)
    steps += (depth - 1) * math.log(steps) / alpha
    return start + math.ceil(steps)


def fixed(columns: dict[str, tuple[int, int]]) -> Callable[..., ColumnInfo]:
    return lambda _info, **_p: dict(columns)
