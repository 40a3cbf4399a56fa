"""Volatility: Bollinger %B and width, and the average true range (also ADX's ATR)."""

from __future__ import annotations

import numpy as np
import pandas_ta as ta

from engine.research.features.kernels import (
    as_array,
    last,
    presma_ewm,
    ratio,
    rma,
    rolling_mean_std,
    shift,
)
from engine.research.features.kind import Arrays, Candles, ColumnInfo, FeatureKind, ema_memory


def _bbands_cols(_: ColumnInfo, length: int, std: float) -> ColumnInfo:
    return {f"bb_pct_{length}": (length - 1, length), f"bb_width_{length}": (length - 1, length)}


def _bands(close: np.ndarray, mid: np.ndarray, sd: np.ndarray, std: float, n: int) -> Arrays:
    lower, upper = mid - std * sd, mid + std * sd
    width = upper - lower
    return {
        f"bb_pct_{n}": np.where(width == 0.0, 0.5, ratio(close - lower, width)),
        f"bb_width_{n}": width / mid,
    }


def _bbands(c: Candles, talib: bool, length: int, std: float) -> Arrays:
    mid, sd = rolling_mean_std(c.close, length)
    return _bands(c.close, mid, sd, std, length)


def _bbands_latest(c: Candles, m: int, length: int, std: float) -> Arrays:
    tail = last(c.close, length + m - 1)
    mid, sd = rolling_mean_std(tail, length)
    return _bands(tail[-m:], mid[-m:], sd[-m:], std, length)


BBANDS = FeatureKind(
    name="bbands",
    group="indicator",
    doc="Bollinger %B and width / middle band",
    defaults={"length": 20, "std": 2.0},
    columns=_bbands_cols,
    batch=_bbands,
    latest=_bbands_latest,
)


def _atr_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    # pandas-ta needs length + 1 candles before it returns anything
    return {f"atr_{length}": (length, ema_memory(1.0 / length, length))}


def true_range(c: Candles) -> np.ndarray:
    prev = shift(c.close, 1)
    return np.fmax(c.high - c.low, np.fmax(np.abs(c.high - prev), np.abs(prev - c.low)))


def atr_series(c: Candles, talib: bool, length: int, prenan: bool = False) -> np.ndarray:
    """pandas-ta's ATR (its true range, SMA seed and `ta.rma`; TA-Lib's ATR when pinned)
    without `non_zero_range`'s epsilon, which a flat candle anywhere, later ones included,
    adds to every true range."""
    if talib:
        atr = ta.atr(
            c.series("high"),
            c.series("low"),
            c.series("close"),
            length=length,
            talib=True,
            prenan=prenan,
        )
        return as_array(atr, len(c))
    tr = true_range(c)
    if prenan:
        tr[0] = np.nan
    seeded = np.full(len(c), np.nan)
    if len(c) > length:
        seeded[length - 1] = np.nanmean(tr[:length]) if np.isfinite(tr[:length]).any() else np.nan
        seeded[length:] = tr[length:]
    return rma(seeded, length)


def _atr(c: Candles, talib: bool, length: int) -> Arrays:
    return {f"atr_{length}": atr_series(c, talib, length) / c.close}


def _atr_latest(c: Candles, m: int, length: int) -> Arrays:
    atr = presma_ewm(true_range(c), length, 1.0 / length)
    return {f"atr_{length}": last(atr / c.close, m)}


ATR = FeatureKind(
    name="atr",
    group="indicator",
    doc="ATR / close",
    defaults={"length": 14},
    columns=_atr_cols,
    batch=_atr,
    latest=_atr_latest,
)
