"""Time-series features: rolling statistics of returns, and lags of earlier columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.research.features.kernels import last, rolling_moments, zscore
from engine.research.features.kind import Arrays, Candles, ColumnInfo, FeatureKind

_STATS = ("mean", "std", "skew", "z")


def _return_stats_cols(_: ColumnInfo, length: int, stats: list[str]) -> ColumnInfo:
    bad = sorted(set(stats) - set(_STATS))
    if bad or not stats:
        raise ValueError(f"return_stats: unknown stats {bad}; choose from {list(_STATS)}")
    return {f"ret_{s}_{length}": (length, length + 1) for s in stats}


def _stats_of(r: np.ndarray, length: int, stats: list[str]) -> Arrays:
    mean, std, skew = rolling_moments(r, length)
    values = {"mean": mean, "std": std, "skew": skew, "z": zscore(r, mean, std)}
    return {f"ret_{s}_{length}": values[s] for s in stats}


def _return_stats(c: Candles, talib: bool, length: int, stats: list[str]) -> Arrays:
    return _stats_of(c.log_return, length, stats)


def _return_stats_latest(c: Candles, m: int, length: int, stats: list[str]) -> Arrays:
    lc = np.log(last(c.close, length + m))
    out = _stats_of(lc[1:] - lc[:-1], length, stats)
    return {k: v[-m:] for k, v in out.items()}


RETURN_STATS = FeatureKind(
    name="return_stats",
    group="time series",
    doc="rolling mean, std, skew and z-score of 1-candle log returns",
    defaults={"length": 30, "stats": ["std", "skew", "z"]},
    columns=_return_stats_cols,
    batch=_return_stats,
    latest=_return_stats_latest,
)


def _lag_cols(info: ColumnInfo, of: list[str], lags: list[int]) -> ColumnInfo:
    missing = [col for col in of if col not in info]
    if missing:
        raise ValueError(
            f"lag refers to {missing}, which no earlier feature in the spec produces;"
            f" earlier columns: {list(info)}"
        )
    return {
        f"{col}_lag{lag}": (info[col][0] + lag, info[col][1] + lag) for col in of for lag in lags
    }


def _lag_placeholder(*_: Any, **__: Any) -> Arrays:
    raise AssertionError("lag columns are computed by compute_features from earlier columns")


LAG = FeatureKind(
    name="lag",
    group="time series",
    doc="earlier columns shifted by each lag",
    defaults={"of": None, "lags": [1]},
    columns=_lag_cols,
    batch=_lag_placeholder,
    latest=_lag_placeholder,
)
