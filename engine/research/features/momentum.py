"""Momentum oscillators: RSI, Stochastic, money flow index, CCI and rate of change."""

from __future__ import annotations

import numpy as np
import pandas_ta as ta

from engine.research.features.kernels import (
    as_array,
    diff,
    ewm,
    last,
    ratio,
    rma,
    rolling_mean,
    rolling_mean_mad,
    rolling_min_max,
    shift,
    slide,
    windows,
)
from engine.research.features.kind import Arrays, Candles, ColumnInfo, FeatureKind, ema_memory


def _rsi_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"rsi_{length}": (length, ema_memory(1.0 / length, length))}


def _rsi(c: Candles, talib: bool, length: int) -> Arrays:
    if not talib:  # pandas-ta's native RSI: Wilder averages of the rises and of the falls
        move = diff(c.close, 1)
        up = rma(np.where(move < 0, 0.0, move), length)
        down = rma(np.where(move > 0, 0.0, move), length)
        return {f"rsi_{length}": 100.0 * up / (up + np.abs(down)) / 100.0}
    rsi = as_array(ta.rsi(c.series("close"), length=length, talib=talib), len(c))
    return {f"rsi_{length}": rsi / 100.0}


def _rsi_latest(c: Candles, m: int, length: int) -> Arrays:
    diff = c.close - shift(c.close, 1)
    up = ewm(np.where(diff > 0, diff, np.where(np.isnan(diff), np.nan, 0.0)), 1.0 / length)
    down = ewm(np.where(diff < 0, -diff, np.where(np.isnan(diff), np.nan, 0.0)), 1.0 / length)
    return {f"rsi_{length}": last(ratio(up, up + down), m)}


RSI = FeatureKind(
    name="rsi",
    group="indicator",
    doc="RSI / 100",
    defaults={"length": 14},
    columns=_rsi_cols,
    batch=_rsi,
    latest=_rsi_latest,
)


def _stoch_cols(_: ColumnInfo, k: int, d: int, smooth_k: int) -> ColumnInfo:
    warm_k = k + smooth_k - 2
    return {f"stoch_k_{k}": (warm_k, warm_k + 1), f"stoch_d_{k}": (warm_k + d - 1, warm_k + d)}


def _stoch_raw(close: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    span = high - low  # a flat window puts close mid-range: 0.5, not pandas-ta's epsilon
    return np.where(span == 0.0, 0.5, ratio(close - low, span))


def _stoch(c: Candles, talib: bool, k: int, d: int, smooth_k: int) -> Arrays:
    low, high = rolling_min_max(c.low, c.high, k)
    pct_k = rolling_mean(_stoch_raw(c.close, low, high), smooth_k)
    return {f"stoch_k_{k}": pct_k, f"stoch_d_{k}": rolling_mean(pct_k, d)}


def _stoch_latest(c: Candles, m: int, k: int, d: int, smooth_k: int) -> Arrays:
    rows = m + d - 1 + smooth_k - 1  # raw values needed for m smoothed %D values
    low = windows(c.low, k, rows).min(axis=1)
    high = windows(c.high, k, rows).max(axis=1)
    raw = _stoch_raw(last(c.close, rows), low, high)
    pct_k = slide(raw, smooth_k).sum(axis=1) / smooth_k
    return {
        f"stoch_k_{k}": pct_k[-m:],
        f"stoch_d_{k}": slide(pct_k, d).sum(axis=1) / d,
    }


STOCH = FeatureKind(
    name="stoch",
    group="indicator",
    doc="Stochastic %K and %D in [0, 1]",
    defaults={"k": 14, "d": 3, "smooth_k": 3},
    columns=_stoch_cols,
    batch=_stoch,
    latest=_stoch_latest,
)


def _mfi_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"mfi_{length}": (length, length + 1)}


def _money_flow(tp: np.ndarray, volume: np.ndarray, standard: bool) -> np.ndarray:
    """Signed money flow tp x volume of each candle after the first: positive when the typical
    price rose. A repeated typical price is neither (the standard definition, TA-Lib's) or,
    in pandas-ta's native MFI (specs before version 3), negative. Repeated means equal to
    1e-12 relative: prices on a 0.001 KRW tick sum to the same typical price in different
    orders (1.523 + 1.52 + 1.522 vs 1.524 + 1.52 + 1.521), which float rounds 1 ulp apart."""
    rise = tp[1:] - tp[:-1]
    if standard:
        sign = np.where(np.abs(rise) <= 1e-12 * np.abs(tp[1:]), 0.0, np.sign(rise))
    else:
        sign = np.where(rise > 0, 1.0, -1.0)
    return tp[1:] * volume[1:] * sign


def _mfi_of(flow: np.ndarray, length: int, standard: bool) -> np.ndarray:
    """MFI / 100 of each trailing window of `length` flows. pandas-ta adds float epsilon to the
    total (0 for a window without flow); the standard path leaves a window without flow
    either way at 0.5, neither buying nor selling pressure (a definition, not a fill)."""
    gain = slide(np.maximum(flow, 0.0), length).sum(axis=1)
    loss = slide(np.maximum(-flow, 0.0), length).sum(axis=1)
    if not standard:
        return gain / (gain + loss + np.finfo(float).eps)
    total = gain + loss
    return np.where(total == 0.0, 0.5, ratio(gain, total))


def _mfi(c: Candles, talib: bool, length: int) -> Arrays:
    if talib:  # TA-Lib's MFI (standard ties) through pandas-ta, as the spec pins
        mfi = ta.mfi(
            c.series("high"),
            c.series("low"),
            c.series("close"),
            c.series("volume"),
            length=length,
            talib=True,
        )
        return {f"mfi_{length}": as_array(mfi, len(c)) / 100.0}
    return _mfi_latest(c, len(c), length)  # every row is a newest row of its own window


def _mfi_latest(c: Candles, m: int, length: int) -> Arrays:
    k = length + m  # m windows of `length` flows, each flow compares with the candle before
    tp = (last(c.high, k) + last(c.low, k) + last(c.close, k)) / 3.0
    flow = _money_flow(tp, last(c.volume, k), standard=True)
    return {f"mfi_{length}": last(_mfi_of(flow, length, standard=True), m)}


MFI = FeatureKind(
    name="mfi",
    group="indicator",
    doc="money flow index / 100 (a repeated typical price is neither flow; spec version >= 3)",
    defaults={"length": 14},
    columns=_mfi_cols,
    batch=_mfi,
    latest=_mfi_latest,
)


def _mfi_before_v3(c: Candles, talib: bool, length: int) -> Arrays:
    mfi = ta.mfi(
        c.series("high"),
        c.series("low"),
        c.series("close"),
        c.series("volume"),
        length=length,
        talib=talib,
    )
    return {f"mfi_{length}": as_array(mfi, len(c)) / 100.0}


def _mfi_before_v3_latest(c: Candles, m: int, length: int) -> Arrays:
    k = length + m
    tp = (last(c.high, k) + last(c.low, k) + last(c.close, k)) / 3.0
    flow = _money_flow(tp, last(c.volume, k), standard=False)
    return {f"mfi_{length}": _mfi_of(flow, length, standard=False)}


# What specs before version 3 compute as "mfi" (pandas-ta's native MFI), kept so a stored
# model's features stay what it was trained on.
MFI_BEFORE_V3 = FeatureKind(
    name="mfi",
    group="indicator",
    doc="money flow index / 100, pandas-ta's native (a repeated typical price is negative)",
    defaults={"length": 14},
    columns=_mfi_cols,
    batch=_mfi_before_v3,
    latest=_mfi_before_v3_latest,
)


def _cci_cols(_: ColumnInfo, length: int, c: float) -> ColumnInfo:
    return {f"cci_{length}": (length - 1, length)}


def _cci_from(tp: np.ndarray, mean: np.ndarray, mad: np.ndarray, c: float) -> np.ndarray:
    # (tp - mean) / (c * mad), scaled by 1/100 so typical values sit in [-3, 3]
    return np.where(mad == 0.0, 0.0, ratio(tp - mean, c * mad)) / 100.0


def _cci(candles: Candles, talib: bool, length: int, c: float) -> Arrays:
    if talib:
        h, lo, cl = (candles.series(n) for n in ("high", "low", "close"))
        tp = as_array(ta.hlc3(h, lo, cl, talib=talib), len(candles))
    else:
        tp = (candles.high + candles.low + candles.close) / 3.0  # pandas-ta's native hlc3
    mean, mad = rolling_mean_mad(tp, length)
    return {f"cci_{length}": _cci_from(tp, mean, mad, c)}


def _cci_latest(candles: Candles, m: int, length: int, c: float) -> Arrays:
    k = length + m - 1
    tp = (last(candles.high, k) + last(candles.low, k) + last(candles.close, k)) / 3.0
    mean, mad = rolling_mean_mad(tp, length)
    return {f"cci_{length}": _cci_from(tp[-m:], mean[-m:], mad[-m:], c)}


CCI = FeatureKind(
    name="cci",
    group="indicator",
    doc="commodity channel index / 100",
    defaults={"length": 20, "c": 0.015},
    columns=_cci_cols,
    batch=_cci,
    latest=_cci_latest,
)


def _roc_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"roc_{length}": (length, length + 1)}


def _roc(c: Candles, talib: bool, length: int) -> Arrays:
    roc = ta.roc(c.series("close"), length=length, talib=talib)
    return {f"roc_{length}": as_array(roc, len(c)) / 100.0}


def _roc_latest(c: Candles, m: int, length: int) -> Arrays:
    tail = last(c.close, m + length)
    return {f"roc_{length}": (tail[length:] - tail[:-length]) / tail[:-length]}


ROC = FeatureKind(
    name="roc",
    group="indicator",
    doc="rate of change / 100",
    defaults={"length": 10},
    columns=_roc_cols,
    batch=_roc,
    latest=_roc_latest,
)
