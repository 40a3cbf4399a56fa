"""Trend: price against its simple and exponential averages, MACD and ADX."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas_ta as ta
from pandas_ta.overlap.sma import nb_sma

from engine.research.features.kernels import (
    as_array,
    ewm,
    last,
    presma_ewm,
    rma,
    shift,
    ta_ema,
    windows,
)
from engine.research.features.kind import Arrays, Candles, ColumnInfo, FeatureKind, ema_memory
from engine.research.features.volatility import atr_series, true_range


def _sma_ratio_cols(_: ColumnInfo, lengths: list[int]) -> ColumnInfo:
    return {f"sma_ratio_{n}": (n - 1, n) for n in lengths}


def _sma_ratio(c: Candles, talib: bool, lengths: list[int]) -> Arrays:
    if not talib:  # pandas-ta's own numba SMA, without the Series around it
        return {f"sma_ratio_{n}": c.close / _sma(c.close, n) - 1.0 for n in lengths}
    return {
        f"sma_ratio_{n}": c.close
        / as_array(ta.sma(c.series("close"), length=n, talib=talib), len(c))
        - 1.0
        for n in lengths
    }


def _sma(close: np.ndarray, n: int) -> np.ndarray:
    """pandas-ta's native `ta.sma`, bit for bit (all NaN for fewer than n values). Its kernel
    is numba's `np.convolve`, whose dot products sum in BLAS order: a window sum in another
    order moves `close / sma - 1` by ~1e-12 relative, so it stays (~0.1 s per length / 1M)."""
    return nb_sma(close, n) if len(close) >= n else np.full(len(close), np.nan)


def _sma_ratio_latest(c: Candles, m: int, lengths: list[int]) -> Arrays:
    close = last(c.close, m)
    return {
        f"sma_ratio_{n}": close / (windows(c.close, n, m).sum(axis=1) / n) - 1.0 for n in lengths
    }


SMA_RATIO = FeatureKind(
    name="sma_ratio",
    group="indicator",
    doc="close / SMA(close, n) - 1",
    defaults={"lengths": [10, 30]},
    columns=_sma_ratio_cols,
    batch=_sma_ratio,
    latest=_sma_ratio_latest,
)


def _ema_ratio_cols(_: ColumnInfo, lengths: list[int]) -> ColumnInfo:
    return {f"ema_ratio_{n}": (n - 1, ema_memory(2.0 / (n + 1), n)) for n in lengths}


def _ema_ratio(c: Candles, talib: bool, lengths: list[int]) -> Arrays:
    if not talib:
        return {f"ema_ratio_{n}": c.close / ta_ema(c.close, n) - 1.0 for n in lengths}
    return {
        f"ema_ratio_{n}": c.close
        / as_array(ta.ema(c.series("close"), length=n, talib=talib), len(c))
        - 1.0
        for n in lengths
    }


def _ema_ratio_latest(c: Candles, m: int, lengths: list[int]) -> Arrays:
    return {
        f"ema_ratio_{n}": last(c.close / presma_ewm(c.close, n, 2.0 / (n + 1)), m) - 1.0
        for n in lengths
    }


EMA_RATIO = FeatureKind(
    name="ema_ratio",
    group="indicator",
    doc="close / EMA(close, n) - 1",
    defaults={"lengths": [20]},
    columns=_ema_ratio_cols,
    batch=_ema_ratio,
    latest=_ema_ratio_latest,
)


def _macd_cols(_: ColumnInfo, fast: int, slow: int, signal: int) -> ColumnInfo:
    if fast >= slow:
        raise ValueError(f"macd: fast ({fast}) must be shorter than slow ({slow})")
    tag = f"{fast}_{slow}_{signal}"
    line = ema_memory(2.0 / (slow + 1), slow)
    # pandas-ta returns nothing for fewer than slow + signal - 1 candles, the line included
    return {
        f"macd_{tag}": (slow + signal - 2, line),
        # the signal EMA forgets its own seed faster than the line does: the line's pace rules
        f"macd_hist_{tag}": (slow + signal - 2, line + signal),
    }


def _macd(c: Candles, talib: bool, fast: int, slow: int, signal: int) -> Arrays:
    tag = f"{fast}_{slow}_{signal}"
    if not talib:
        line, hist = _macd_native(c.close, fast, slow, signal)
        return {f"macd_{tag}": line / c.close, f"macd_hist_{tag}": hist / c.close}
    out = ta.macd(c.series("close"), fast=fast, slow=slow, signal=signal, talib=talib)
    if out is None:
        nan = np.full(len(c), np.nan)
        return {f"macd_{tag}": nan, f"macd_hist_{tag}": nan}
    return {
        f"macd_{tag}": out[f"MACD_{tag}"].to_numpy() / c.close,
        f"macd_hist_{tag}": out[f"MACDh_{tag}"].to_numpy() / c.close,
    }


def _macd_native(
    close: np.ndarray, fast: int, slow: int, signal: int
) -> tuple[np.ndarray, np.ndarray]:
    """pandas-ta's native MACD line and histogram: EMA(fast) - EMA(slow), and the line minus
    its own EMA(signal) started at the line's first value (all NaN for too short a series)."""
    nan = np.full(len(close), np.nan)
    if len(close) < max(fast, slow, signal):
        return nan, nan
    line = ta_ema(close, fast) - ta_ema(close, slow)
    valid = np.flatnonzero(~np.isnan(line))
    if len(valid) == 0:
        return line, nan
    sig = nan.copy()
    sig[valid[0] :] = ta_ema(line[valid[0] :], signal)
    return line, line - sig


def _macd_latest(c: Candles, m: int, fast: int, slow: int, signal: int) -> Arrays:
    tag = f"{fast}_{slow}_{signal}"
    fast_ma = presma_ewm(c.close, fast, 2.0 / (fast + 1))
    slow_ma = presma_ewm(c.close, slow, 2.0 / (slow + 1))
    line = fast_ma - slow_ma
    start = slow - 1  # pandas-ta seeds the signal EMA from the line's first valid value
    sig = np.full(len(line), np.nan)
    if len(line) > start:
        sig[start:] = presma_ewm(line[start:], signal, 2.0 / (signal + 1))
    return {
        f"macd_{tag}": last(line / c.close, m),
        f"macd_hist_{tag}": last((line - sig) / c.close, m),
    }


MACD = FeatureKind(
    name="macd",
    group="indicator",
    doc="MACD line and histogram over close",
    defaults={"fast": 12, "slow": 26, "signal": 9},
    columns=_macd_cols,
    batch=_macd,
    latest=_macd_latest,
)


def _adx_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    # TA-Lib's lookbacks: DI from `length`, ADX from 2 * length - 1
    memory = ema_memory(1.0 / length, length, depth=2)
    return {f"adx_{length}": (2 * length - 1, memory), f"di_diff_{length}": (length, memory)}


def _adx_from(atr: np.ndarray, c: Candles, length: int, rma: Callable[..., np.ndarray]) -> Arrays:
    """pandas-ta's ADX formula (checked equal to `ta.adx` in the tests) without its per-row
    `apply`: +DM/-DM, Wilder averages, DX, then ADX as the Wilder average of DX."""
    up = c.high - shift(c.high, 1)
    down = shift(c.low, 1) - c.low
    eps = np.finfo(float).eps
    pos = np.where((up > down) & (up > 0), up, np.where(np.isnan(up), np.nan, 0.0))
    neg = np.where((down > up) & (down > 0), down, np.where(np.isnan(down), np.nan, 0.0))
    pos = np.where(np.abs(pos) < eps, 0.0, pos)
    neg = np.where(np.abs(neg) < eps, 0.0, neg)
    scale = 100.0 / atr
    dmp = scale * rma(pos, length)
    dmn = scale * rma(neg, length)
    dx = 100.0 * np.abs(dmp - dmn) / (dmp + dmn)
    adx = rma(dx, length)
    return {f"adx_{length}": adx / 100.0, f"di_diff_{length}": (dmp - dmn) / 100.0}


def _adx(c: Candles, talib: bool, length: int) -> Arrays:
    atr = atr_series(c, talib, length, prenan=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _adx_from(atr, c, length, rma)


def _adx_latest(c: Candles, m: int, length: int) -> Arrays:
    tr = true_range(c)
    tr[0] = np.nan  # pandas-ta's ADX asks its ATR for `prenan`
    atr = presma_ewm(tr, length, 1.0 / length)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _adx_from(atr, c, length, lambda x, n: ewm(x, 1.0 / n))
    return {k: v[-m:] for k, v in out.items()}


ADX = FeatureKind(
    name="adx",
    group="indicator",
    doc="ADX / 100 and (+DI - -DI) / 100",
    defaults={"length": 14},
    columns=_adx_cols,
    batch=_adx,
    latest=_adx_latest,
)
