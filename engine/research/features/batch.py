"""The one function that turns candles into features, for training, backtest and replay:
`compute_features(candles, spec)` runs each kind's batch computation over the whole series,
then masks what no longer-history could reproduce.

Every feature is scale-free (returns, ratios to close, bounded oscillators, z-scores) so a
model trained on one market or period transfers. Rows a feature cannot honestly fill are NaN
and the caller drops them; nothing is ever back-filled from later candles. A column is kept
only from row max(warm-up, memory - 1), at the start of a series as after a break: every kept
value equals what any longer history gives, so training rows are the rows the live engine can
reproduce.

Gaps: Upbit has candles only for minutes with trades, so a short hole is not missing data
and windows bridge it. A step longer than `FeatureSpec.max_gap` candles (e.g. a 6 h exchange
outage in 60m data) breaks the series: a row is NaN in every column whose memory reaches back
across the break, so no kept value depends on candles before a break (to 1e-9). We mask
rather than compute per segment: same values, one vectorised pass, no per-segment calls.

Indicators come from pandas-ta with `talib=spec.talib` passed explicitly (pandas-ta changes
its output when TA-Lib is importable), except where pandas-ta 0.4.71b0 is wrong or leaks:
its `non_zero_range` adds epsilon to *every* row when *any* row (future ones included) has a
zero range (Stochastic, Bollinger %B, and the true range under ATR and ADX; visible on coins
priced near 1 KRW), its rolling variance drifts with history length (Bollinger width off by
~6e-6 relative after 1M candles), its CCI has an operator-precedence bug, and its ADX spends
95 % of its time in a per-element `apply`. Those are computed in their kind's module from
pandas-ta's building blocks or exact window kernels; tests compare each with pandas-ta.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd

from engine.research.features.kernels import shift
from engine.research.features.kind import NS_MINUTE, Arrays, Candles
from engine.research.features.spec import DEFAULT_SPEC, FeatureSpec
from engine.upbit.markets import check_unit, unit_timedelta_minutes

_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def timestamps(candles: pd.DataFrame) -> tuple[pd.arrays.DatetimeArray, np.ndarray]:
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


def unit_ns(candles: pd.DataFrame, unit: str | None) -> int:
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
    return unit_timedelta_minutes(check_unit(unit)) * NS_MINUTE


def since_break(ts: np.ndarray, step_ns: int, max_gap: int | None) -> np.ndarray | None:
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


def raw_columns(spec: FeatureSpec, data: Candles, m: int | None) -> Arrays:
    """Every column before masking: full columns (m None, batch) or the last m values."""
    if spec.talib and not talib_importable():
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
                    raw[f"{col}_lag{lag}"] = shift(raw[col], lag)
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
    stamps, ts = timestamps(candles)
    step = unit_ns(candles, unit) if spec.max_gap is not None else 0
    data = Candles(candles, ts)
    raw = raw_columns(spec, data, None)
    plan = spec._plan
    # one column-major block: each column contiguous, and the frame wraps it without a copy
    out = np.empty((len(data), len(plan.info)), order="F")
    since = since_break(ts, step, spec.max_gap)
    since_rows = _NO_BREAK if since is None else since
    for j, (col, (warmup, memory)) in enumerate(plan.info.items()):
        # warm-up rows, and rows whose value still depends on where the history starts
        keep_from = max(warmup, memory - 1) if converged else warmup
        _settle(out[:, j], _float64(raw[col], len(data)), keep_from, since_rows, memory - 1)
    return pd.DataFrame(
        out, index=pd.DatetimeIndex(stamps, name="ts"), columns=plan.index, copy=False
    )


_NO_BREAK = np.zeros(0, dtype=np.int64)  # `since` of a series without a break


def _float64(values: np.ndarray, size: int) -> np.ndarray:
    """A kind's column as float64 of the series' length (a view when it already is one)."""
    values = np.asarray(values, dtype=np.float64)
    return values if values.shape == (size,) else np.broadcast_to(values, (size,))


@numba.njit(cache=True)
def _settle(
    dest: np.ndarray,
    src: np.ndarray,
    keep_from: int,
    since: np.ndarray,
    reach: int,
) -> None:
    """dest = src in one pass, NaN before `keep_from`, where src is infinite (a ratio over a
    zero: undefined, not huge) and where the column's memory (`reach` rows back) crosses a
    break (`since` < reach; `since` empty when the series has no break)."""
    breaks = len(since) > 0
    for i in range(len(dest)):
        v = src[i]
        if i < keep_from or math.isinf(v) or (breaks and since[i] < reach):
            v = np.nan
        dest[i] = v


def talib_importable() -> bool:
    from pandas_ta.maps import Imports

    return bool(Imports.get("talib"))
