"""Price returns over lags: log returns and simple returns."""

from __future__ import annotations

import numpy as np

from engine.research.features.kernels import diff, last, shift
from engine.research.features.kind import Arrays, Candles, ColumnInfo, FeatureKind


def _log_return_cols(_: ColumnInfo, lags: list[int]) -> ColumnInfo:
    return {f"logret_{lag}": (lag, lag + 1) for lag in lags}


def _log_return(c: Candles, talib: bool, lags: list[int]) -> Arrays:
    return {f"logret_{lag}": diff(c.log_close, lag) for lag in lags}


def _log_return_latest(c: Candles, m: int, lags: list[int]) -> Arrays:
    out = {}
    for lag in lags:
        tail = np.log(last(c.close, m + lag))
        out[f"logret_{lag}"] = tail[lag:] - tail[:-lag]
    return out


LOG_RETURN = FeatureKind(
    name="log_return",
    group="price",
    doc="log(close / close[lag]) per lag",
    defaults={"lags": [1]},
    columns=_log_return_cols,
    batch=_log_return,
    latest=_log_return_latest,
)


def _return_cols(_: ColumnInfo, lags: list[int]) -> ColumnInfo:
    return {f"ret_{lag}": (lag, lag + 1) for lag in lags}


def _return(c: Candles, talib: bool, lags: list[int]) -> Arrays:
    return {f"ret_{lag}": c.close / shift(c.close, lag) - 1.0 for lag in lags}


def _return_latest(c: Candles, m: int, lags: list[int]) -> Arrays:
    out = {}
    for lag in lags:
        tail = last(c.close, m + lag)
        out[f"ret_{lag}"] = tail[lag:] / tail[:-lag] - 1.0
    return out


RETURN = FeatureKind(
    name="return",
    group="price",
    doc="close / close[lag] - 1 per lag",
    defaults={"lags": [1]},
    columns=_return_cols,
    batch=_return,
    latest=_return_latest,
)
