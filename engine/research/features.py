"""FeatureSpec and the one function that turns candles into features, in training and live.

Every feature is scale-free (returns, ratios to close, bounded oscillators, z-scores) so a
model trained on one market or period transfers. Rows a feature cannot honestly fill are NaN
and the caller drops them; nothing is ever back-filled from later candles.

Two numbers describe each column (`FeatureSpec.column_info`):
- **warm-up**: rows from the start of a series before the column is defined (NaN before).
- **memory**: trailing candles its value depends on, to 1e-9 relative. Finite windows need
  warm-up + 1; recursive indicators (EMA, Wilder's RMA, MACD, RSI, ATR, ADX) have infinite
  memory in theory, so theirs is the length after which the start of history no longer moves
  the value (`recursive_warmup` measures it on real data; tests hold it under `memory`).
  compute_features leaves a column NaN for its first max(warm-up, memory - 1) rows, at the
  start of a series as after a break: every kept value equals what any longer history
  gives, so training rows are the rows the live engine can reproduce.
  The live engine keeps `FeatureSpec.window()` >= every memory, so its trailing-window
  features equal the full-history (training) features.

Gaps: Upbit has candles only for minutes with trades, so a short hole is not missing data
and windows bridge it. A step longer than `FeatureSpec.max_gap` candles (e.g. a 6 h exchange
outage in 60m data) breaks the series: a row is NaN in every column whose memory reaches back
across the break, so no kept value depends on candles before a break (to 1e-9). We mask
rather than compute per segment: same values, one vectorised pass, no per-segment calls.

Indicators come from pandas-ta with `talib=spec.talib` passed explicitly, except where
pandas-ta 0.4.71b0 is wrong or leaks: its `non_zero_range` adds epsilon to *every* row when
*any* row (future ones included) has a zero range (Stochastic, Bollinger %B, and the true
range under ATR and ADX; visible on coins priced near 1 KRW), its rolling variance drifts
with history length (Bollinger width off by ~6e-6 relative after 1M candles), its CCI has an
operator-precedence bug, and its ADX spends 95 % of its time in a per-element `apply`. Those are computed here from pandas-ta's building
blocks or exact window kernels; tests compare each with pandas-ta.

`outlier_mask` flags candles whose return is extreme for their recent past (a mask the
dataset can drop, not a feature).

`compute_latest` is the fast path for one new candle (live): numpy/numba kernels over the
trailing window that equal `compute_features(window).iloc[-1]` (tests hold them to 1e-9).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pandas_ta as ta

from engine.upbit.markets import check_unit, unit_timedelta_minutes

Arrays = dict[str, np.ndarray]
ColumnInfo = dict[str, tuple[int, int]]  # column -> (warm-up, memory)
TOLERANCE = 1e-9  # relative agreement that "no longer depends on the start of history" means


# --- the spec ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """Declarative, JSON-serialisable list of features; `talib` pins pandas-ta's backend.

    `max_gap`: the longest step between consecutive candles, in candles of the unit, that
    windows bridge (None: never break). Feature dicts are normalised with their kind's
    defaults, so equal specs hash equally however they were written.
    """

    features: tuple[dict[str, Any], ...]
    talib: bool = False
    version: int = 2
    max_gap: int | None = 5

    def __post_init__(self) -> None:
        normalised = tuple(_normalise(i, f) for i, f in enumerate(self.features))
        object.__setattr__(self, "features", normalised)
        if self.max_gap is not None and self.max_gap < 1:
            raise ValueError(f"max_gap must be >= 1 candle or None, got {self.max_gap}")
        _ = self._plan  # validates lag references and column name clashes

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "talib": self.talib,
            "max_gap": self.max_gap,
            "features": [dict(f) for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Rebuild a spec. Missing fields take today's defaults, except that a version-1 spec
        (stored with a model before `max_gap` existed) keeps bridging every gap, as it did
        when its model was trained."""
        if "features" not in data:
            raise ValueError("feature spec has no 'features' list")
        version = int(data.get("version", cls.version))
        return cls(
            features=tuple(dict(f) for f in data["features"]),
            talib=bool(data.get("talib", False)),
            version=version,
            max_gap=data.get("max_gap", cls.max_gap if version > 1 else None),
        )

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @cached_property
    def _plan(self) -> _Plan:
        """What computing needs, worked out once per spec (the live path runs it per candle)."""
        info: ColumnInfo = {}
        steps = []
        depth = 1  # trailing values each column must supply so lags of it can be read
        for feature in self.features:
            kind, params = FEATURE_KINDS[feature["kind"]], _params(feature)
            cols = kind.columns(info, **params)
            clash = sorted(set(cols) & set(info))
            if clash:
                raise ValueError(f"feature {feature} repeats columns {clash}")
            info.update(cols)
            steps.append((kind, params))
            if kind.name == "lag":
                depth = max(depth, max(params["lags"]) + 1)
        return _Plan(info, steps, depth, pd.Index(list(info), dtype=object))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_plan"}  # rebuilt on demand

    def column_info(self) -> ColumnInfo:
        """Every output column in order, with its (warm-up, memory) in candles."""
        return dict(self._plan.info)

    def columns(self) -> list[str]:
        return list(self._plan.info)

    def warmup(self) -> int:
        """Candles before the first row that compute_features keeps: every feature defined
        and no longer moved by where the history starts (to 1e-9 relative)."""
        return max(max(w, m - 1) for w, m in self.column_info().values())

    def memory(self) -> int:
        """Trailing candles the newest row depends on (to 1e-9 relative)."""
        return max(m for _, m in self.column_info().values())

    def window(self) -> int:
        """Trailing candles the live engine keeps to compute the newest row: the memory
        plus a 10 % margin, so live features equal full-history features."""
        return max(math.ceil(self.memory() * 1.1), 60)


@dataclass(frozen=True)
class _Plan:
    info: ColumnInfo
    steps: list[tuple[FeatureKind, dict[str, Any]]]
    depth: int
    index: pd.Index


def load_feature_spec(path: Path) -> FeatureSpec:
    """A spec from a JSON file (the `to_dict` form); errors name the file and the problem."""
    if not path.is_file():
        raise ValueError(f"feature spec file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"feature spec file {path} is not valid JSON: {exc.msg} (line {exc.lineno},"
            f" column {exc.colno})"
        ) from None
    if (data.get("features") if isinstance(data, dict) else None) is None:
        raise ValueError(f"feature spec file {path} must hold a JSON object with 'features'")
    try:
        return FeatureSpec.from_dict(data)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"feature spec file {path}: {exc}") from None


def _params(feature: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in feature.items() if k != "kind"}


def _normalise(i: int, feature: Mapping[str, Any]) -> dict[str, Any]:
    name = feature.get("kind")
    if name not in FEATURE_KINDS:
        raise ValueError(
            f"feature #{i} has unknown kind {name!r}; known kinds: {sorted(FEATURE_KINDS)}"
        )
    kind = FEATURE_KINDS[name]
    params = _params(feature)
    unknown = sorted(set(params) - set(kind.defaults))
    if unknown:
        raise ValueError(
            f"feature #{i} ({name}) has unknown parameters {unknown};"
            f" {name} takes {sorted(kind.defaults) or 'none'}"
        )
    merged = {**kind.defaults, **params}
    missing = sorted(k for k, v in merged.items() if v is None)
    if missing:
        raise ValueError(f"feature #{i} ({name}) needs parameters {missing}")
    for key, value in merged.items():
        numbers = value if isinstance(value, list) else [value]
        if key in _POSITIVE_INT and any(not isinstance(v, int) or v < 1 for v in numbers):
            raise ValueError(f"feature #{i} ({name}): {key} must be positive integers, got {value}")
    return {"kind": name, **merged}


_POSITIVE_INT = {"length", "lengths", "lags", "fast", "slow", "signal", "k", "d", "smooth_k"}


# --- window kernels (exact per window, so a value never depends on history before it) ----
@numba.njit(cache=True)
def rolling_mean_std(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1) of each trailing window of n, from that window alone
    (so a value never depends on history before its window; labels use it too).

    One pass over values shifted by the window's newest value, so prices near 1e8 with a
    spread near 1e4 lose no precision to cancellation (pandas' online rolling variance
    drifts by ~6e-6 relative over 1M such candles).
    """
    size = len(x)
    mean = np.full(size, np.nan)
    std = np.full(size, np.nan)
    for t in range(n - 1, size):
        ref = x[t]
        s1 = 0.0
        s2 = 0.0
        for j in range(t - n + 1, t + 1):
            d = x[j] - ref
            s1 += d
            s2 += d * d
        mu = s1 / n
        mean[t] = ref + mu
        if n > 1:
            var = (s2 - s1 * mu) / (n - 1)
            std[t] = var if math.isnan(var) else math.sqrt(max(var, 0.0))
    return mean, std


@numba.njit(cache=True)
def _rolling_moments(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std (ddof=1) and adjusted skew (pandas' G1) of each trailing window of n,
    from that window alone: one pass of shifted power sums, as in `rolling_mean_std`."""
    size = len(x)
    mean = np.full(size, np.nan)
    std = np.full(size, np.nan)
    skew = np.full(size, np.nan)
    for t in range(n - 1, size):
        ref = x[t]
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for j in range(t - n + 1, t + 1):
            d = x[j] - ref
            s1 += d
            s2 += d * d
            s3 += d * d * d
        mu = s1 / n
        m2 = max(s2 - s1 * mu, 0.0)  # sum of squared deviations
        m3 = s3 - 3.0 * mu * s2 + 2.0 * n * mu**3  # sum of cubed deviations
        mean[t] = ref + mu
        if n > 1:
            std[t] = math.sqrt(m2 / (n - 1))
        if n > 2:
            b2 = m2 / n
            if b2 > 0.0 or math.isnan(b2):
                skew[t] = math.sqrt(n * (n - 1.0)) / (n - 2.0) * (m3 / n) / b2**1.5
            else:
                skew[t] = 0.0
    return mean, std, skew


@numba.njit(cache=True)
def _rolling_mean_mad(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and mean absolute deviation from it, per trailing window of n."""
    size = len(x)
    mean = np.full(size, np.nan)
    mad = np.full(size, np.nan)
    for t in range(n - 1, size):
        s = 0.0
        for j in range(t - n + 1, t + 1):
            s += x[j]
        m = s / n
        a = 0.0
        for j in range(t - n + 1, t + 1):
            a += abs(x[j] - m)
        mean[t] = m
        mad[t] = a / n
    return mean, mad


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    """pandas' rolling mean (compensated summation: drifts < 1e-15 relative with history)."""
    return pd.Series(x).rolling(n).mean().to_numpy()


@numba.njit(cache=True)
def _ewm(x: np.ndarray, alpha: float) -> np.ndarray:
    """pandas' `ewm(alpha=alpha, adjust=False).mean()` (ignore_na=False), NaN before data."""
    out = np.full(len(x), np.nan)
    weighted = np.nan
    old_wt = 1.0
    for i in range(len(x)):
        cur = x[i]
        if math.isnan(weighted):
            weighted = cur
            old_wt = 1.0
        else:
            old_wt *= 1.0 - alpha
            if not math.isnan(cur):
                if weighted != cur:
                    weighted = (old_wt * weighted + alpha * cur) / (old_wt + alpha)
                old_wt = 1.0
        out[i] = weighted
    return out


@numba.njit(cache=True)
def _presma_ewm(x: np.ndarray, length: int, alpha: float) -> np.ndarray:
    """pandas-ta's SMA-seeded EMA: NaN before `length - 1`, seeded there with the mean of the
    first `length` values (NaN ignored, as pandas' mean does), then `_ewm`."""
    seeded = np.full(len(x), np.nan)
    if len(x) >= length:
        total = 0.0
        count = 0
        for i in range(length):
            if not math.isnan(x[i]):
                total += x[i]
                count += 1
        seeded[length - 1] = total / count if count else np.nan
        seeded[length:] = x[length:]
    return _ewm(seeded, alpha)


def _shift(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if lag < len(x):
        out[lag:] = x[: len(x) - lag]
    return out


def _last(x: np.ndarray, k: int) -> np.ndarray:
    """The last k values of x, NaN-padded in front when x is shorter."""
    if len(x) >= k:
        return x[len(x) - k :]
    return np.concatenate([np.full(k - len(x), np.nan), x])


def _slide(x: np.ndarray, n: int) -> np.ndarray:
    """(len(x) - n + 1, n) read-only view of every window of n (numpy's sliding_window_view
    without its ~30 us of argument checking, which matters on the live path)."""
    x = np.ascontiguousarray(x)
    step = x.strides[0]
    view: np.ndarray = np.ndarray(
        (len(x) - n + 1, n), dtype=x.dtype, buffer=x, strides=(step, step)
    )
    view.flags.writeable = False
    return view


def _windows(x: np.ndarray, n: int, m: int) -> np.ndarray:
    """(m, n) array: the trailing window of n ending at each of the last m positions."""
    return _slide(_last(x, n + m - 1), n)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


class _Candles:
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
        return _diff(self.log_close, 1)


def _np(series: pd.Series | None, size: int) -> np.ndarray:
    """pandas-ta returns None when a series is shorter than its length: all NaN then."""
    if series is None:
        return np.full(size, np.nan)
    return series.to_numpy(np.float64)


# --- feature kinds ---------------------------------------------------------------------------
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


def _ema_memory(alpha: float, start: int, depth: int = 1) -> int:
    """Candles until a recursion with decay (1 - alpha) forgets its start to ~1e-11.

    `depth` > 1 for an average of an average (ADX, MACD signal): the start's trace decays as
    k^(depth-1) (1-alpha)^k, so it takes a few more rounds.
    """
    steps = math.log(1e-11) / math.log(1.0 - alpha)
    steps += (depth - 1) * math.log(steps) / alpha
    return start + math.ceil(steps)


# price -------------------------------------------------------------------------------------
def _log_return_cols(_: ColumnInfo, lags: list[int]) -> ColumnInfo:
    return {f"logret_{lag}": (lag, lag + 1) for lag in lags}


def _diff(x: np.ndarray, lag: int) -> np.ndarray:
    """x[t] - x[t - lag], NaN for the first `lag` rows."""
    out = np.empty(len(x))
    out[:lag] = np.nan
    np.subtract(x[lag:], x[: max(len(x) - lag, 0)], out=out[lag:])
    return out


def _log_return(c: _Candles, talib: bool, lags: list[int]) -> Arrays:
    return {f"logret_{lag}": _diff(c.log_close, lag) for lag in lags}


def _log_return_latest(c: _Candles, m: int, lags: list[int]) -> Arrays:
    out = {}
    for lag in lags:
        tail = np.log(_last(c.close, m + lag))
        out[f"logret_{lag}"] = tail[lag:] - tail[:-lag]
    return out


def _return_cols(_: ColumnInfo, lags: list[int]) -> ColumnInfo:
    return {f"ret_{lag}": (lag, lag + 1) for lag in lags}


def _return(c: _Candles, talib: bool, lags: list[int]) -> Arrays:
    return {f"ret_{lag}": c.close / _shift(c.close, lag) - 1.0 for lag in lags}


def _return_latest(c: _Candles, m: int, lags: list[int]) -> Arrays:
    out = {}
    for lag in lags:
        tail = _last(c.close, m + lag)
        out[f"ret_{lag}"] = tail[lag:] / tail[:-lag] - 1.0
    return out


_SHAPE = {"range": (0, 1), "body": (0, 1), "upper_wick": (0, 1), "lower_wick": (0, 1)}


def _shape(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> Arrays:
    span = h - lo
    flat = span == 0.0  # no range, no wick (a definition, not a fill)
    safe = np.where(flat, 1.0, span)
    return {
        "range": span / c,
        "body": (c - o) / c,
        "upper_wick": np.where(flat, 0.0, (h - np.maximum(o, c)) / safe),
        "lower_wick": np.where(flat, 0.0, (np.minimum(o, c) - lo) / safe),
    }


def _candle_shape(c: _Candles, talib: bool) -> Arrays:
    return _shape(c.open, c.high, c.low, c.close)


def _candle_shape_latest(c: _Candles, m: int) -> Arrays:
    return _shape(*(_last(x, m) for x in (c.open, c.high, c.low, c.close)))


def _open_gap(c: _Candles, talib: bool) -> Arrays:
    return {"open_gap": c.open / _shift(c.close, 1) - 1.0}


def _open_gap_latest(c: _Candles, m: int) -> Arrays:
    return {"open_gap": _last(c.open, m) / _last(c.close, m + 1)[:-1] - 1.0}


# volume ------------------------------------------------------------------------------------
def _volume_ratio(c: _Candles, talib: bool, length: int) -> Arrays:
    return {f"volume_ratio_{length}": _ratio(c.volume, _rolling_mean(c.volume, length))}


def _volume_ratio_latest(c: _Candles, m: int, length: int) -> Arrays:
    mean = _windows(c.volume, length, m).sum(axis=1) / length
    return {f"volume_ratio_{length}": _ratio(_last(c.volume, m), mean)}


def _log_volume(volume: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.where(volume > 0.0, volume, np.nan))


def _zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.where(std == 0.0, 0.0, _ratio(x - mean, std))


def _volume_zscore(c: _Candles, talib: bool, length: int) -> Arrays:
    lv = _log_volume(c.volume)
    mean, std = rolling_mean_std(lv, length)
    return {f"volume_z_{length}": _zscore(lv, mean, std)}


def _volume_zscore_latest(c: _Candles, m: int, length: int) -> Arrays:
    lv = _log_volume(_last(c.volume, length + m - 1))
    mean, std = rolling_mean_std(lv, length)
    return {f"volume_z_{length}": _zscore(lv, mean, std)[-m:]}


def _volume_ma_ratio(c: _Candles, talib: bool, fast: int, slow: int) -> Arrays:
    f = _rolling_mean(c.volume, fast)
    s = _rolling_mean(c.volume, slow)
    return {f"volume_ma_ratio_{fast}_{slow}": _ratio(f, s)}


def _volume_ma_ratio_latest(c: _Candles, m: int, fast: int, slow: int) -> Arrays:
    f = _windows(c.volume, fast, m).sum(axis=1) / fast
    s = _windows(c.volume, slow, m).sum(axis=1) / slow
    return {f"volume_ma_ratio_{fast}_{slow}": _ratio(f, s)}


def _value_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"value_ratio_{length}": (length - 1, length), "vwap_gap": (0, 1)}


def _check_value(value: np.ndarray) -> None:
    if not np.isfinite(value).any():
        raise ValueError(
            "the 'value' feature needs the KRW traded value of each candle, and these candles"
            " have none (files imported without a value column); it is never estimated from"
            " price x volume: drop the feature from the spec or fetch the candles from Upbit"
        )


def _value(c: _Candles, talib: bool, length: int) -> Arrays:
    _check_value(c.value)
    mean = _rolling_mean(c.value, length)
    return {
        f"value_ratio_{length}": _ratio(c.value, mean),
        "vwap_gap": _ratio(c.close * c.volume, c.value) - 1.0,
    }


def _value_latest(c: _Candles, m: int, length: int) -> Arrays:
    _check_value(c.value)
    mean = _windows(c.value, length, m).sum(axis=1) / length
    value, close, volume = (_last(x, m) for x in (c.value, c.close, c.volume))
    return {
        f"value_ratio_{length}": _ratio(value, mean),
        "vwap_gap": _ratio(close * volume, value) - 1.0,
    }


def _obv_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    # pandas-ta's OBV starts with NaN, so the first difference over `length` is at length + 1
    return {f"obv_flow_{length}": (length + 1, length + 2)}


def _obv(c: _Candles, talib: bool, length: int) -> Arrays:
    obv = _np(ta.obv(c.series("close"), c.series("volume"), talib=talib), len(c))
    total = pd.Series(c.volume).rolling(length).sum().to_numpy()
    return {f"obv_flow_{length}": _ratio(obv - _shift(obv, length), total)}


def _obv_latest(c: _Candles, m: int, length: int) -> Arrays:
    close = _last(c.close, length + m)
    sign = np.sign(close[1:] - close[:-1])
    volume = _last(c.volume, length + m - 1)
    flow = _slide(sign * volume, length).sum(axis=1)
    total = _slide(volume, length).sum(axis=1)
    return {f"obv_flow_{length}": _ratio(flow, total)}


# indicators --------------------------------------------------------------------------------
def _sma_ratio_cols(_: ColumnInfo, lengths: list[int]) -> ColumnInfo:
    return {f"sma_ratio_{n}": (n - 1, n) for n in lengths}


def _sma_ratio(c: _Candles, talib: bool, lengths: list[int]) -> Arrays:
    return {
        f"sma_ratio_{n}": c.close / _np(ta.sma(c.series("close"), length=n, talib=talib), len(c))
        - 1.0
        for n in lengths
    }


def _sma_ratio_latest(c: _Candles, m: int, lengths: list[int]) -> Arrays:
    close = _last(c.close, m)
    return {
        f"sma_ratio_{n}": close / (_windows(c.close, n, m).sum(axis=1) / n) - 1.0 for n in lengths
    }


def _ema_ratio_cols(_: ColumnInfo, lengths: list[int]) -> ColumnInfo:
    return {f"ema_ratio_{n}": (n - 1, _ema_memory(2.0 / (n + 1), n)) for n in lengths}


def _ema_ratio(c: _Candles, talib: bool, lengths: list[int]) -> Arrays:
    return {
        f"ema_ratio_{n}": c.close / _np(ta.ema(c.series("close"), length=n, talib=talib), len(c))
        - 1.0
        for n in lengths
    }


def _ema_ratio_latest(c: _Candles, m: int, lengths: list[int]) -> Arrays:
    return {
        f"ema_ratio_{n}": _last(c.close / _presma_ewm(c.close, n, 2.0 / (n + 1)), m) - 1.0
        for n in lengths
    }


def _macd_cols(_: ColumnInfo, fast: int, slow: int, signal: int) -> ColumnInfo:
    if fast >= slow:
        raise ValueError(f"macd: fast ({fast}) must be shorter than slow ({slow})")
    tag = f"{fast}_{slow}_{signal}"
    line = _ema_memory(2.0 / (slow + 1), slow)
    # pandas-ta returns nothing for fewer than slow + signal - 1 candles, the line included
    return {
        f"macd_{tag}": (slow + signal - 2, line),
        # the signal EMA forgets its own seed faster than the line does: the line's pace rules
        f"macd_hist_{tag}": (slow + signal - 2, line + signal),
    }


def _macd(c: _Candles, talib: bool, fast: int, slow: int, signal: int) -> Arrays:
    tag = f"{fast}_{slow}_{signal}"
    out = ta.macd(c.series("close"), fast=fast, slow=slow, signal=signal, talib=talib)
    if out is None:
        nan = np.full(len(c), np.nan)
        return {f"macd_{tag}": nan, f"macd_hist_{tag}": nan}
    return {
        f"macd_{tag}": out[f"MACD_{tag}"].to_numpy() / c.close,
        f"macd_hist_{tag}": out[f"MACDh_{tag}"].to_numpy() / c.close,
    }


def _macd_latest(c: _Candles, m: int, fast: int, slow: int, signal: int) -> Arrays:
    tag = f"{fast}_{slow}_{signal}"
    fast_ma = _presma_ewm(c.close, fast, 2.0 / (fast + 1))
    slow_ma = _presma_ewm(c.close, slow, 2.0 / (slow + 1))
    line = fast_ma - slow_ma
    start = slow - 1  # pandas-ta seeds the signal EMA from the line's first valid value
    sig = np.full(len(line), np.nan)
    if len(line) > start:
        sig[start:] = _presma_ewm(line[start:], signal, 2.0 / (signal + 1))
    return {
        f"macd_{tag}": _last(line / c.close, m),
        f"macd_hist_{tag}": _last((line - sig) / c.close, m),
    }


def _rsi_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"rsi_{length}": (length, _ema_memory(1.0 / length, length))}


def _rsi(c: _Candles, talib: bool, length: int) -> Arrays:
    rsi = _np(ta.rsi(c.series("close"), length=length, talib=talib), len(c))
    return {f"rsi_{length}": rsi / 100.0}


def _rsi_latest(c: _Candles, m: int, length: int) -> Arrays:
    diff = c.close - _shift(c.close, 1)
    up = _ewm(np.where(diff > 0, diff, np.where(np.isnan(diff), np.nan, 0.0)), 1.0 / length)
    down = _ewm(np.where(diff < 0, -diff, np.where(np.isnan(diff), np.nan, 0.0)), 1.0 / length)
    return {f"rsi_{length}": _last(_ratio(up, up + down), m)}


def _bbands_cols(_: ColumnInfo, length: int, std: float) -> ColumnInfo:
    return {f"bb_pct_{length}": (length - 1, length), f"bb_width_{length}": (length - 1, length)}


def _bands(close: np.ndarray, mid: np.ndarray, sd: np.ndarray, std: float, n: int) -> Arrays:
    lower, upper = mid - std * sd, mid + std * sd
    width = upper - lower
    return {
        f"bb_pct_{n}": np.where(width == 0.0, 0.5, _ratio(close - lower, width)),
        f"bb_width_{n}": width / mid,
    }


def _bbands(c: _Candles, talib: bool, length: int, std: float) -> Arrays:
    mid, sd = rolling_mean_std(c.close, length)
    return _bands(c.close, mid, sd, std, length)


def _bbands_latest(c: _Candles, m: int, length: int, std: float) -> Arrays:
    tail = _last(c.close, length + m - 1)
    mid, sd = rolling_mean_std(tail, length)
    return _bands(tail[-m:], mid[-m:], sd[-m:], std, length)


def _atr_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    # pandas-ta needs length + 1 candles before it returns anything
    return {f"atr_{length}": (length, _ema_memory(1.0 / length, length))}


def _true_range(c: _Candles) -> np.ndarray:
    prev = _shift(c.close, 1)
    return np.fmax(c.high - c.low, np.fmax(np.abs(c.high - prev), np.abs(prev - c.low)))


def _atr_series(c: _Candles, talib: bool, length: int, prenan: bool = False) -> np.ndarray:
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
        return _np(atr, len(c))
    tr = _true_range(c)
    if prenan:
        tr[0] = np.nan
    seeded = np.full(len(c), np.nan)
    if len(c) > length:
        seeded[length - 1] = np.nanmean(tr[:length]) if np.isfinite(tr[:length]).any() else np.nan
        seeded[length:] = tr[length:]
    return _np(ta.rma(pd.Series(seeded), length=length), len(c))


def _atr(c: _Candles, talib: bool, length: int) -> Arrays:
    return {f"atr_{length}": _atr_series(c, talib, length) / c.close}


def _atr_latest(c: _Candles, m: int, length: int) -> Arrays:
    atr = _presma_ewm(_true_range(c), length, 1.0 / length)
    return {f"atr_{length}": _last(atr / c.close, m)}


def _stoch_cols(_: ColumnInfo, k: int, d: int, smooth_k: int) -> ColumnInfo:
    warm_k = k + smooth_k - 2
    return {f"stoch_k_{k}": (warm_k, warm_k + 1), f"stoch_d_{k}": (warm_k + d - 1, warm_k + d)}


def _stoch_raw(close: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    span = high - low  # a flat window puts close mid-range: 0.5, not pandas-ta's epsilon
    return np.where(span == 0.0, 0.5, _ratio(close - low, span))


def _stoch(c: _Candles, talib: bool, k: int, d: int, smooth_k: int) -> Arrays:
    low = c.series("low").rolling(k).min().to_numpy()
    high = c.series("high").rolling(k).max().to_numpy()
    raw = pd.Series(_stoch_raw(c.close, low, high))
    pct_k = raw.rolling(smooth_k).mean()
    return {
        f"stoch_k_{k}": pct_k.to_numpy(),
        f"stoch_d_{k}": pct_k.rolling(d).mean().to_numpy(),
    }


def _stoch_latest(c: _Candles, m: int, k: int, d: int, smooth_k: int) -> Arrays:
    rows = m + d - 1 + smooth_k - 1  # raw values needed for m smoothed %D values
    low = _windows(c.low, k, rows).min(axis=1)
    high = _windows(c.high, k, rows).max(axis=1)
    raw = _stoch_raw(_last(c.close, rows), low, high)
    pct_k = _slide(raw, smooth_k).sum(axis=1) / smooth_k
    return {
        f"stoch_k_{k}": pct_k[-m:],
        f"stoch_d_{k}": _slide(pct_k, d).sum(axis=1) / d,
    }


def _adx_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    # TA-Lib's lookbacks: DI from `length`, ADX from 2 * length - 1
    memory = _ema_memory(1.0 / length, length, depth=2)
    return {f"adx_{length}": (2 * length - 1, memory), f"di_diff_{length}": (length, memory)}


def _adx_from(atr: np.ndarray, c: _Candles, length: int, rma: Callable[..., np.ndarray]) -> Arrays:
    """pandas-ta's ADX formula (checked equal to `ta.adx` in the tests) without its per-row
    `apply`: +DM/-DM, Wilder averages, DX, then ADX as the Wilder average of DX."""
    up = c.high - _shift(c.high, 1)
    down = _shift(c.low, 1) - c.low
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


def _adx(c: _Candles, talib: bool, length: int) -> Arrays:
    atr = _atr_series(c, talib, length, prenan=True)

    def rma(x: np.ndarray, n: int) -> np.ndarray:
        return _np(ta.rma(pd.Series(x), length=n), len(x))

    with np.errstate(divide="ignore", invalid="ignore"):
        return _adx_from(atr, c, length, rma)


def _adx_latest(c: _Candles, m: int, length: int) -> Arrays:
    tr = _true_range(c)
    tr[0] = np.nan  # pandas-ta's ADX asks its ATR for `prenan`
    atr = _presma_ewm(tr, length, 1.0 / length)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _adx_from(atr, c, length, lambda x, n: _ewm(x, 1.0 / n))
    return {k: v[-m:] for k, v in out.items()}


def _mfi_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"mfi_{length}": (length, length + 1)}


def _mfi(c: _Candles, talib: bool, length: int) -> Arrays:
    mfi = ta.mfi(
        c.series("high"),
        c.series("low"),
        c.series("close"),
        c.series("volume"),
        length=length,
        talib=talib,
    )
    return {f"mfi_{length}": _np(mfi, len(c)) / 100.0}


def _mfi_latest(c: _Candles, m: int, length: int) -> Arrays:
    k = length + m  # m windows of `length` flows, each flow compares with the candle before
    tp = (_last(c.high, k) + _last(c.low, k) + _last(c.close, k)) / 3.0
    flow = tp[1:] * _last(c.volume, k)[1:] * np.where(tp[1:] > tp[:-1], 1.0, -1.0)
    gain = _slide(np.maximum(flow, 0.0), length).sum(axis=1)
    loss = _slide(np.maximum(-flow, 0.0), length).sum(axis=1)
    return {f"mfi_{length}": gain / (gain + loss + np.finfo(float).eps)}


def _cci_cols(_: ColumnInfo, length: int, c: float) -> ColumnInfo:
    return {f"cci_{length}": (length - 1, length)}


def _cci_from(tp: np.ndarray, mean: np.ndarray, mad: np.ndarray, c: float) -> np.ndarray:
    # (tp - mean) / (c * mad), scaled by 1/100 so typical values sit in [-3, 3]
    return np.where(mad == 0.0, 0.0, _ratio(tp - mean, c * mad)) / 100.0


def _cci(candles: _Candles, talib: bool, length: int, c: float) -> Arrays:
    h, lo, cl = (candles.series(n) for n in ("high", "low", "close"))
    tp = _np(ta.hlc3(h, lo, cl, talib=talib), len(candles))
    mean, mad = _rolling_mean_mad(tp, length)
    return {f"cci_{length}": _cci_from(tp, mean, mad, c)}


def _cci_latest(candles: _Candles, m: int, length: int, c: float) -> Arrays:
    k = length + m - 1
    tp = (_last(candles.high, k) + _last(candles.low, k) + _last(candles.close, k)) / 3.0
    mean, mad = _rolling_mean_mad(tp, length)
    return {f"cci_{length}": _cci_from(tp[-m:], mean[-m:], mad[-m:], c)}


def _roc_cols(_: ColumnInfo, length: int) -> ColumnInfo:
    return {f"roc_{length}": (length, length + 1)}


def _roc(c: _Candles, talib: bool, length: int) -> Arrays:
    roc = ta.roc(c.series("close"), length=length, talib=talib)
    return {f"roc_{length}": _np(roc, len(c)) / 100.0}


def _roc_latest(c: _Candles, m: int, length: int) -> Arrays:
    tail = _last(c.close, m + length)
    return {f"roc_{length}": (tail[length:] - tail[:-length]) / tail[:-length]}


# time series -------------------------------------------------------------------------------
_STATS = ("mean", "std", "skew", "z")


def _return_stats_cols(_: ColumnInfo, length: int, stats: list[str]) -> ColumnInfo:
    bad = sorted(set(stats) - set(_STATS))
    if bad or not stats:
        raise ValueError(f"return_stats: unknown stats {bad}; choose from {list(_STATS)}")
    return {f"ret_{s}_{length}": (length, length + 1) for s in stats}


def _stats_of(r: np.ndarray, length: int, stats: list[str]) -> Arrays:
    mean, std, skew = _rolling_moments(r, length)
    values = {"mean": mean, "std": std, "skew": skew, "z": _zscore(r, mean, std)}
    return {f"ret_{s}_{length}": values[s] for s in stats}


def _return_stats(c: _Candles, talib: bool, length: int, stats: list[str]) -> Arrays:
    return _stats_of(c.log_return, length, stats)


def _return_stats_latest(c: _Candles, m: int, length: int, stats: list[str]) -> Arrays:
    lc = np.log(_last(c.close, length + m))
    out = _stats_of(lc[1:] - lc[:-1], length, stats)
    return {k: v[-m:] for k, v in out.items()}


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


# calendar ----------------------------------------------------------------------------------
_NS_MINUTE = 60_000_000_000
_DAY_MINUTES = 1440


def _calendar_cols(_: ColumnInfo, cyclic: bool, raw: bool) -> ColumnInfo:
    names = (["day_sin", "day_cos", "week_sin", "week_cos"] if cyclic else []) + (
        ["hour", "weekday"] if raw else []
    )
    if not names:
        raise ValueError("calendar: set cyclic and/or raw")
    return {name: (0, 1) for name in names}


_DAY_ANGLE = 2.0 * np.pi * np.arange(_DAY_MINUTES) / _DAY_MINUTES
_WEEK_ANGLE = 2.0 * np.pi * np.arange(7 * _DAY_MINUTES) / (7 * _DAY_MINUTES)
_TABLES = {
    "day_sin": np.sin(_DAY_ANGLE),
    "day_cos": np.cos(_DAY_ANGLE),
    "week_sin": np.sin(_WEEK_ANGLE),
    "week_cos": np.cos(_WEEK_ANGLE),
}


def _calendar_of(ts: np.ndarray, cyclic: bool, raw: bool) -> Arrays:
    """Minute of the day and of the week (Monday 00:00 UTC = 0), looked up in sin/cos tables."""
    minutes = ts // _NS_MINUTE
    of_day = minutes % _DAY_MINUTES
    weekday = (minutes // _DAY_MINUTES + 3) % 7  # 1970-01-01 was a Thursday
    out: Arrays = {}
    if cyclic:
        of_week = weekday * _DAY_MINUTES + of_day
        out |= {
            name: table[of_week if name.startswith("week") else of_day]
            for name, table in _TABLES.items()
        }
    if raw:
        out |= {"hour": (of_day // 60).astype(np.float64), "weekday": weekday.astype(np.float64)}
    return out


def _calendar(c: _Candles, talib: bool, cyclic: bool, raw: bool) -> Arrays:
    return _calendar_of(c.ts, cyclic, raw)


def _calendar_latest(c: _Candles, m: int, cyclic: bool, raw: bool) -> Arrays:
    ts = c.ts[-m:]
    out = _calendar_of(ts, cyclic, raw)
    return {k: _last(v, m) for k, v in out.items()}


def _fixed(columns: dict[str, tuple[int, int]]) -> Callable[..., ColumnInfo]:
    return lambda _info, **_p: dict(columns)


FEATURE_KINDS: dict[str, FeatureKind] = {
    kind.name: kind
    for kind in (
        FeatureKind(
            "log_return",
            "price",
            "log(close / close[lag]) per lag",
            {"lags": [1]},
            _log_return_cols,
            _log_return,
            _log_return_latest,
        ),
        FeatureKind(
            "return",
            "price",
            "close / close[lag] - 1 per lag",
            {"lags": [1]},
            _return_cols,
            _return,
            _return_latest,
        ),
        FeatureKind(
            "candle_shape",
            "price",
            "range and body over close; upper/lower wick over the range (0 if flat)",
            {},
            _fixed(_SHAPE),
            _candle_shape,
            _candle_shape_latest,
        ),
        FeatureKind(
            "open_gap",
            "price",
            "open / previous close - 1",
            {},
            _fixed({"open_gap": (1, 2)}),
            _open_gap,
            _open_gap_latest,
        ),
        FeatureKind(
            "volume_ratio",
            "volume",
            "volume / SMA(volume, length)",
            {"length": 20},
            lambda _i, length: {f"volume_ratio_{length}": (length - 1, length)},
            _volume_ratio,
            _volume_ratio_latest,
        ),
        FeatureKind(
            "volume_zscore",
            "volume",
            "z-score of log volume over length",
            {"length": 60},
            lambda _i, length: {f"volume_z_{length}": (length - 1, length)},
            _volume_zscore,
            _volume_zscore_latest,
        ),
        FeatureKind(
            "volume_ma_ratio",
            "volume",
            "SMA(volume, fast) / SMA(volume, slow)",
            {"fast": 5, "slow": 60},
            lambda _i, fast, slow: {f"volume_ma_ratio_{fast}_{slow}": (slow - 1, slow)},
            _volume_ma_ratio,
            _volume_ma_ratio_latest,
        ),
        FeatureKind(
            "value",
            "volume",
            "KRW value / SMA(value, length) and close / candle VWAP - 1; needs the"
            " `value` column (never estimated)",
            {"length": 20},
            _value_cols,
            _value,
            _value_latest,
        ),
        FeatureKind(
            "obv",
            "volume",
            "OBV change over length / volume traded in it (in [-1, 1])",
            {"length": 20},
            _obv_cols,
            _obv,
            _obv_latest,
        ),
        FeatureKind(
            "sma_ratio",
            "indicator",
            "close / SMA(close, n) - 1",
            {"lengths": [10, 30]},
            _sma_ratio_cols,
            _sma_ratio,
            _sma_ratio_latest,
        ),
        FeatureKind(
            "ema_ratio",
            "indicator",
            "close / EMA(close, n) - 1",
            {"lengths": [20]},
            _ema_ratio_cols,
            _ema_ratio,
            _ema_ratio_latest,
        ),
        FeatureKind(
            "macd",
            "indicator",
            "MACD line and histogram over close",
            {"fast": 12, "slow": 26, "signal": 9},
            _macd_cols,
            _macd,
            _macd_latest,
        ),
        FeatureKind("rsi", "indicator", "RSI / 100", {"length": 14}, _rsi_cols, _rsi, _rsi_latest),
        FeatureKind(
            "bbands",
            "indicator",
            "Bollinger %B and width / middle band",
            {"length": 20, "std": 2.0},
            _bbands_cols,
            _bbands,
            _bbands_latest,
        ),
        FeatureKind(
            "atr", "indicator", "ATR / close", {"length": 14}, _atr_cols, _atr, _atr_latest
        ),
        FeatureKind(
            "stoch",
            "indicator",
            "Stochastic %K and %D in [0, 1]",
            {"k": 14, "d": 3, "smooth_k": 3},
            _stoch_cols,
            _stoch,
            _stoch_latest,
        ),
        FeatureKind(
            "adx",
            "indicator",
            "ADX / 100 and (+DI - -DI) / 100",
            {"length": 14},
            _adx_cols,
            _adx,
            _adx_latest,
        ),
        FeatureKind(
            "mfi",
            "indicator",
            "money flow index / 100",
            {"length": 14},
            _mfi_cols,
            _mfi,
            _mfi_latest,
        ),
        FeatureKind(
            "cci",
            "indicator",
            "commodity channel index / 100",
            {"length": 20, "c": 0.015},
            _cci_cols,
            _cci,
            _cci_latest,
        ),
        FeatureKind(
            "roc", "indicator", "rate of change / 100", {"length": 10}, _roc_cols, _roc, _roc_latest
        ),
        FeatureKind(
            "return_stats",
            "time series",
            "rolling mean, std, skew and z-score of 1-candle log returns",
            {"length": 30, "stats": ["std", "skew", "z"]},
            _return_stats_cols,
            _return_stats,
            _return_stats_latest,
        ),
        FeatureKind(
            "lag",
            "time series",
            "earlier columns shifted by each lag",
            {"of": None, "lags": [1]},
            _lag_cols,
            _lag_placeholder,
            _lag_placeholder,
        ),
        FeatureKind(
            "calendar",
            "calendar",
            "time of day and of week (UTC) as sin/cos; raw hour/weekday if asked",
            {"cyclic": True, "raw": False},
            _calendar_cols,
            _calendar,
            _calendar_latest,
        ),
    )
}

DEFAULT_SPEC = FeatureSpec(
    features=(
        {"kind": "log_return", "lags": [1, 2, 3, 5, 10, 30]},
        {"kind": "candle_shape"},
        {"kind": "open_gap"},
        {"kind": "volume_ratio", "length": 20},
        {"kind": "volume_zscore", "length": 60},
        {"kind": "volume_ma_ratio", "fast": 5, "slow": 60},
        {"kind": "obv", "length": 20},
        {"kind": "sma_ratio", "lengths": [10, 30]},
        {"kind": "ema_ratio", "lengths": [20]},
        {"kind": "macd", "fast": 12, "slow": 26, "signal": 9},
        {"kind": "rsi", "length": 14},
        {"kind": "bbands", "length": 20, "std": 2.0},
        {"kind": "atr", "length": 14},
        {"kind": "stoch", "k": 14, "d": 3, "smooth_k": 3},
        {"kind": "adx", "length": 14},
        {"kind": "mfi", "length": 14},
        {"kind": "cci", "length": 20, "c": 0.015},
        {"kind": "return_stats", "length": 30, "stats": ["std", "skew", "z"]},
        {"kind": "lag", "of": ["rsi_14"], "lags": [1, 5]},
        {"kind": "calendar", "cyclic": True, "raw": False},
    )
)


# --- computing -------------------------------------------------------------------------------
_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _timestamps(candles: pd.DataFrame) -> tuple[pd.arrays.DatetimeArray, np.ndarray]:
    """The `ts` column and the same as int64 ns since the epoch; checks order and zone."""
    values = candles["ts"].array
    if not isinstance(values, pd.arrays.DatetimeArray):
        values = pd.DatetimeIndex(candles["ts"]).array
    if values.tz is None:
        raise ValueError("candle `ts` must be timezone-aware (UTC)")
    if values.isna().any():
        raise ValueError("candle `ts` has missing timestamps")
    ns = values.asi8 * _NS_PER[values.unit]
    if len(ns) > 1 and not (ns[1:] > ns[:-1]).all():
        raise ValueError("candles must be in strictly ascending `ts` order, one per bucket")
    return values, ns


def _unit_ns(candles: pd.DataFrame, unit: str | None) -> int:
    if unit is None:
        units = candles["unit"].array if "unit" in candles else None
        if units is None or pd.isna(units[0]):
            raise ValueError(
                "candles carry no `unit` column: pass unit= so gaps longer than max_gap"
                " candles can be found"
            )
        unit = str(units[0])
        if str(units[-1]) != unit:
            raise ValueError("candles mix units; compute features one market/unit at a time")
    return unit_timedelta_minutes(check_unit(unit)) * _NS_MINUTE


def _since_break(ts: np.ndarray, step_ns: int, max_gap: int | None) -> np.ndarray | None:
    """Rows since the latest gap longer than max_gap candles (None when there is none)."""
    if max_gap is None or len(ts) < 2:
        return None
    breaks = np.flatnonzero(np.diff(ts) > max_gap * step_ns) + 1
    if len(breaks) == 0:
        return None
    rows = np.arange(len(ts))
    start: np.ndarray = np.zeros(len(ts), dtype=np.int64)
    start[breaks] = breaks
    start = np.maximum.accumulate(start)
    since = rows - start
    since[: breaks[0]] = np.iinfo(np.int64).max // 2  # before the first break: nothing crossed
    return since


def _raw(spec: FeatureSpec, data: _Candles, m: int | None) -> Arrays:
    """Every column before masking: full columns (m None, batch) or the last m values."""
    if spec.talib and not _talib_importable():
        # pandas-ta would quietly compute natively: other values than the spec was made with
        raise ValueError(
            "the feature spec pins talib=true but TA-Lib is not importable here; install"
            " TA-Lib (pip install TA-Lib) or use a spec with talib=false"
        )
    raw: Arrays = {}
    for kind, params in spec._plan.steps:
        if kind.name == "lag":
            for col in params["of"]:
                for lag in params["lags"]:
                    raw[f"{col}_lag{lag}"] = _shift(raw[col], lag)
        elif m is None:
            raw.update(kind.batch(data, spec.talib, **params))
        else:
            raw.update(kind.latest(data, m, **params))
    return raw


def compute_features(
    candles: pd.DataFrame,
    spec: FeatureSpec = DEFAULT_SPEC,
    *,
    unit: str | None = None,
    converged: bool = True,
) -> pd.DataFrame:
    """Features for every candle, indexed by `ts`; warm-up rows hold NaN (drop them, never fill).

    `candles` is one series (one market and unit) in the canonical candle format, ascending.
    `unit` defaults to the candles' `unit` column; it sizes the gaps that break windows.
    `converged=False` keeps the first rows after the warm-up whose recursive values still
    depend on where the history starts (only `recursive_warmup` wants them, to measure that).
    """
    if candles.empty:
        raise ValueError("no candles to compute features from")
    stamps, ts = _timestamps(candles)
    step = _unit_ns(candles, unit) if spec.max_gap is not None else 0
    data = _Candles(candles, ts)
    raw = _raw(spec, data, None)
    plan = spec._plan
    # one column-major block: each column contiguous, and the frame wraps it without a copy
    out = np.empty((len(data), len(plan.info)), order="F")
    since = _since_break(ts, step, spec.max_gap)
    for j, (col, (warmup, memory)) in enumerate(plan.info.items()):
        column = out[:, j]
        column[:] = raw[col]
        # warm-up rows, and rows whose value still depends on where the history starts
        column[: max(warmup, memory - 1) if converged else warmup] = np.nan
        infinite = np.isinf(column)  # a ratio over a zero: undefined, not huge
        if infinite.any():
            column[infinite] = np.nan
        if since is not None:
            column[since < memory - 1] = np.nan  # the column's memory reaches across a break
    return pd.DataFrame(
        out, index=pd.DatetimeIndex(stamps, name="ts"), columns=plan.index, copy=False
    )


def compute_latest(
    window: pd.DataFrame, spec: FeatureSpec = DEFAULT_SPEC, *, unit: str | None = None
) -> pd.Series:
    """The newest row of `compute_features(window, spec)`, fast (for one new live candle).

    Equal to the batch row to 1e-9 relative (tests check every kind). With `talib=True` and
    TA-Lib importable, pandas-ta's results follow TA-Lib, so this falls back to the batch path.
    """
    if window.empty:
        raise ValueError("no candles to compute features from")
    if spec.talib and _talib_importable():
        return compute_features(window, spec, unit=unit).iloc[-1]
    stamps, ts = _timestamps(window)
    step = _unit_ns(window, unit) if spec.max_gap is not None else 0
    data = _Candles(window, ts)
    plan = spec._plan
    raw = _raw(spec, data, plan.depth)
    newest = len(data) - 1
    since = _since_break(ts, step, spec.max_gap)
    since_break = np.iinfo(np.int64).max if since is None else since[-1]
    values = np.empty(len(plan.info))
    for i, (col, (warmup, memory)) in enumerate(plan.info.items()):
        value = raw[col][-1]
        if newest < max(warmup, memory - 1) or since_break < memory - 1 or math.isinf(value):
            value = np.nan
        values[i] = value
    return pd.Series(values, index=plan.index, name=stamps[-1], copy=False)


def _talib_importable() -> bool:
    from pandas_ta.maps import Imports

    return bool(Imports.get("talib"))


# --- outliers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutlierRule:
    """A candle is an outlier when |log return| > k x the mean |log return| of the previous
    `length` candles (the mean absolute deviation about zero). Uses only the past.

    Not the median: on 1-minute data the price grid makes half the returns a tick or less,
    so k x median flags 3 % of KRW-BTC candles; k = 20 x the mean flags ~1 in 4000 (the
    0.9999 quantile of the ratio is 19-23 on all four shared series).
    """

    k: float = 20.0
    length: int = 240

    def __post_init__(self) -> None:
        if self.k <= 0 or self.length < 2:
            raise ValueError(f"outlier rule needs k > 0 and length >= 2, got {self}")


def outlier_mask(candles: pd.DataFrame, rule: OutlierRule = OutlierRule()) -> pd.Series:
    """True for flagged candles, indexed by ts; never true inside the first `length` candles."""
    log_close = np.log(candles["close"].to_numpy(np.float64))
    r = pd.Series(np.abs(log_close - _shift(log_close, 1)))
    scale = r.shift(1).rolling(rule.length).mean()
    flagged = (r > rule.k * scale).to_numpy()
    return pd.Series(flagged, index=pd.DatetimeIndex(candles["ts"]), name="outlier")


# --- measuring warm-up -------------------------------------------------------------------------
def agree(a: np.ndarray, b: np.ndarray, floor: np.ndarray | float, tol: float) -> np.ndarray:
    """Equal to `tol` relative (both NaN counts as equal). Relative to max(|b|, floor), the
    floor being the column's median |value|, so a value crossing zero is not held to an
    absolute precision far below its own scale."""
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= tol * np.maximum(np.abs(b), floor)
    return both_nan | close


def column_floors(features: pd.DataFrame) -> np.ndarray:
    """Each column's median |value| over its defined rows (the scale `agree` uses near zero)."""
    floors = np.nanmedian(np.abs(features.to_numpy()), axis=0)
    return np.where(np.isfinite(floors) & (floors > 0), floors, 1e-12)


def recursive_warmup(
    candles: pd.DataFrame,
    spec: FeatureSpec = DEFAULT_SPEC,
    tol: float = TOLERANCE,
    *,
    starts: int = 6,
    unit: str | None = None,
) -> dict[str, int]:
    """Trailing candles each column needs so that a history cut there agrees with the full
    history to `tol` relative (like freqtrade's recursive analysis).

    The series is cut at `starts` evenly spaced points; from each cut on, the value at every
    later row computed from the cut history is compared with the full-history value. A
    column's need is 1 + the longest cut-history length that still disagreed.
    """
    # unmasked by memory, or the measurement would only find the mask it is meant to check
    full = compute_features(candles, spec, unit=unit, converged=False)
    floors = column_floors(full)
    values = full.to_numpy()
    n = len(candles)
    need = np.ones(len(full.columns), dtype=np.int64)
    for s in np.linspace(0, n, starts + 2, dtype=int)[1:-1]:
        cut = compute_features(candles.iloc[s:], spec, unit=unit, converged=False).to_numpy()
        ok = agree(cut, values[s:], floors, tol)
        for j in range(ok.shape[1]):
            bad = np.flatnonzero(~ok[:, j])
            if len(bad):
                need[j] = max(need[j], bad[-1] + 2)
    return dict(zip(full.columns, need.tolist(), strict=True))


def describe_spec(spec: FeatureSpec = DEFAULT_SPEC) -> list[dict[str, Any]]:
    """One row per column: its feature kind, group, parameters, warm-up and memory."""
    rows = []
    info = spec.column_info()
    for feature in spec.features:
        kind = FEATURE_KINDS[feature["kind"]]
        for col in kind.columns(info, **_params(feature)):
            warmup, memory = info[col]
            rows.append(
                {
                    "column": col,
                    "kind": kind.name,
                    "group": kind.group,
                    "params": _params(feature),
                    "warmup": warmup,
                    "memory": memory,
                }
            )
    return rows


def warm_up() -> None:
    """Run every feature kind once on a tiny series so numba compiles now, not on a live candle."""
    n = 400
    ts = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    close = 100.0 + np.cumsum(np.sin(np.arange(n)))
    candles = pd.DataFrame(
        {
            "ts": ts,
            "unit": "1",
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": 1.0 + np.cos(np.arange(n)) ** 2,
            "value": close,
        }
    )
    everything = FeatureSpec(
        features=tuple(
            {"kind": name} if name != "lag" else {"kind": "lag", "of": ["logret_1"]}
            for name in FEATURE_KINDS
        )
    )
    for spec in (DEFAULT_SPEC, everything):
        compute_features(candles, spec)
        compute_latest(candles, spec)
