"""Volume and traded value against their own recent averages, and on-balance volume flow."""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas_ta as ta

from engine.research.features.kernels import (
    as_array,
    last,
    ratio,
    rolling_mean,
    rolling_mean_std,
    rolling_sum,
    shift,
    slide,
    windows,
    zscore,
)
from engine.research.features.kind import Arrays, Candles, ColumnInfo, FeatureKind


def _volume_ratio_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"volume_ratio_{length}": (length - 1, length)}


def _volume_ratio(c: Candles, talib: bool, length: int) -> Arrays:
    return {f"volume_ratio_{length}": ratio(c.volume, rolling_mean(c.volume, length))}


def _volume_ratio_latest(c: Candles, m: int, length: int) -> Arrays:
    mean = windows(c.volume, length, m).sum(axis=1) / length
    return {f"volume_ratio_{length}": ratio(last(c.volume, m), mean)}


VOLUME_RATIO = FeatureKind(
    name="volume_ratio",
    group="volume",
    doc="volume / SMA(volume, length)",
    defaults={"length": 20},
    columns=_volume_ratio_cols,
    batch=_volume_ratio,
    latest=_volume_ratio_latest,
)


def _volume_zscore_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"volume_z_{length}": (length - 1, length)}


def _log_volume(volume: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(volume > 0.0, volume, np.nan))


def _volume_zscore(c: Candles, talib: bool, length: int) -> Arrays:
    lv = _log_volume(c.volume)
    mean, std = rolling_mean_std(lv, length)
    return {f"volume_z_{length}": zscore(lv, mean, std)}


def _volume_zscore_latest(c: Candles, m: int, length: int) -> Arrays:
    lv = _log_volume(last(c.volume, length + m - 1))
    mean, std = rolling_mean_std(lv, length)
    return {f"volume_z_{length}": zscore(lv, mean, std)[-m:]}


VOLUME_ZSCORE = FeatureKind(
    name="volume_zscore",
    group="volume",
    doc="z-score of log volume over length",
    defaults={"length": 60},
    columns=_volume_zscore_cols,
    batch=_volume_zscore,
    latest=_volume_zscore_latest,
)


def _volume_ma_ratio_cols(_: ColumnInfo, fast: int, slow: int) -> ColumnInfo:
    return {f"volume_ma_ratio_{fast}_{slow}": (slow - 1, slow)}


def _volume_ma_ratio(c: Candles, talib: bool, fast: int, slow: int) -> Arrays:
    f = rolling_mean(c.volume, fast)
    s = rolling_mean(c.volume, slow)
    return {f"volume_ma_ratio_{fast}_{slow}": ratio(f, s)}


def _volume_ma_ratio_latest(c: Candles, m: int, fast: int, slow: int) -> Arrays:
    f = windows(c.volume, fast, m).sum(axis=1) / fast
    s = windows(c.volume, slow, m).sum(axis=1) / slow
    return {f"volume_ma_ratio_{fast}_{slow}": ratio(f, s)}


VOLUME_MA_RATIO = FeatureKind(
    name="volume_ma_ratio",
    group="volume",
    doc="SMA(volume, fast) / SMA(volume, slow)",
    defaults={"fast": 5, "slow": 60},
    columns=_volume_ma_ratio_cols,
    batch=_volume_ma_ratio,
    latest=_volume_ma_ratio_latest,
)


def _value_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"value_ratio_{length}": (length - 1, length), "vwap_gap": (0, 1)}


def _check_value(value: np.ndarray) -> None:
    if not np.isfinite(value).any():
        raise ValueError(
            "the 'value' feature needs the KRW traded value of each candle, and these candles"
            " have none (files imported without a value column); it is never estimated from"
            " price x volume: drop the feature from the spec or fetch the candles from Upbit"
        )


def _value(c: Candles, talib: bool, length: int) -> Arrays:
    _check_value(c.value)
    mean = rolling_mean(c.value, length)
    return {
        f"value_ratio_{length}": ratio(c.value, mean),
        "vwap_gap": ratio(c.close * c.volume, c.value) - 1.0,
    }


def _value_latest(c: Candles, m: int, length: int) -> Arrays:
    _check_value(c.value)
    mean = windows(c.value, length, m).sum(axis=1) / length
    value, close, volume = (last(x, m) for x in (c.value, c.close, c.volume))
    return {
        f"value_ratio_{length}": ratio(value, mean),
        "vwap_gap": ratio(close * volume, value) - 1.0,
    }


VALUE = FeatureKind(
    name="value",
    group="volume",
    doc=(
        "KRW value / SMA(value, length) and close / candle VWAP - 1; needs the"
        " `value` column (never estimated)"
    ),
    defaults={"length": 20},
    columns=_value_cols,
    batch=_value,
    latest=_value_latest,
)


def _obv_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    # pandas-ta's OBV starts with NaN, so the first difference over `length` is at length + 1
    return {f"obv_flow_{length}": (length + 1, length + 2)}


def _obv(c: Candles, talib: bool, length: int) -> Arrays:
    if talib:
        obv = as_array(ta.obv(c.series("close"), c.series("volume"), talib=talib), len(c))
    else:
        obv = _obv_native(c.close, c.volume)
    total = rolling_sum(c.volume, length)
    return {f"obv_flow_{length}": ratio(obv - shift(obv, length), total)}


@numba.njit(cache=True)
def _obv_native(close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """pandas-ta's native OBV: the running sum (pandas' cumsum order) of sign(close change) x
    volume, NaN on the first candle, which has no change."""
    out = np.full(len(close), np.nan)
    total = 0.0
    for t in range(1, len(close)):
        move = close[t] - close[t - 1]
        sign = 1.0 if move > 0 else -1.0 if move < 0 else move  # NaN stays NaN, 0 stays 0
        flow = sign * volume[t]
        if not math.isnan(flow):  # cumsum skips NaN and carries on
            total += flow
            out[t] = total
    return out


def _obv_latest(c: Candles, m: int, length: int) -> Arrays:
    close = last(c.close, length + m)
    sign = np.sign(close[1:] - close[:-1])
    volume = last(c.volume, length + m - 1)
    flow = slide(sign * volume, length).sum(axis=1)
    total = slide(volume, length).sum(axis=1)
    return {f"obv_flow_{length}": ratio(flow, total)}


OBV = FeatureKind(
    name="obv",
    group="volume",
    doc="OBV change over length / volume traded in it (in [-1, 1])",
    defaults={"length": 20},
    columns=_obv_cols,
    batch=_obv,
    latest=_obv_latest,
)
