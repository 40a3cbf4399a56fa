"""LabelSpec and labels from future candles: fixed-horizon 3-class, triple-barrier, regression.

The label at t is measured from close[t] (the price a decision at t's close would get) and
depends only on candles t..t + horizon, plus, for volatility-scaled thresholds and
barriers, the `vol_window` candles before t (trailing volatility, known at t). Changing
candles after t + horizon changes nothing; the last `horizon` rows have no label. Each
label's `end` is the last candle it may look at (t + horizon, whatever the scheme), so purge
can use it without knowing how the future turned out.

Triple barrier: upper barrier close[t] x exp(take_profit x w_t), lower close[t] x
exp(-stop_loss x w_t), time barrier t + horizon; the label is the first barrier touched
by candles t+1..t+horizon (high for the upper, low for the lower): buy, sell, or hold at
the time barrier. A candle touching both cannot tell which came first; it counts as the
stop-loss (sell), the conservative reading backtesters use too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from engine.research.features import rolling_mean_std
from engine.upbit.markets import check_unit, unit_minutes
from models import CLASSES

SELL, HOLD, BUY = (CLASSES.index(name) for name in ("sell", "hold", "buy"))  # class labels
SCHEMES = ("fixed_horizon", "triple_barrier", "regression")


@dataclass(frozen=True)
class LabelSpec:
    """How labels are made from the candles after t.

    - fixed_horizon: forward log return r = log(close[t+h] / close[t]); buy when r > thr_t,
      sell when r < -thr_t, hold otherwise.
    - triple_barrier: see the module docstring; barrier widths are multiples of w_t.
    - regression: the forward log return itself.

    Thresholds: thr_t = w_t = `threshold` (log return) when `vol_window` is None. With a
    `vol_window`, sigma_t is the std of 1-candle log returns over the `vol_window` candles up
    to t (the past only) and thr_t = max(threshold, vol_multiple x sigma_t x sqrt(h)), w_t =
    max(threshold, sigma_t x sqrt(h)): `threshold` stays the floor (the round-trip fee).
    `max_gap`: labels whose window spans a step longer than this many candles are dropped.
    """

    horizon: int = 10
    threshold: float = 0.001  # round-trip fee (2 x 0.05%): a buy must beat it
    scheme: str = "fixed_horizon"
    vol_window: int | None = None
    vol_multiple: float = 1.0
    take_profit: float = 1.0
    stop_loss: float = 1.0
    max_gap: int | None = 5

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"label horizon must be >= 1 candle, got {self.horizon}")
        if self.threshold < 0:
            raise ValueError(f"label threshold must be >= 0, got {self.threshold}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown label scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")
        if self.vol_window is not None and self.vol_window < 2:
            raise ValueError(f"vol_window must be >= 2 candles or None, got {self.vol_window}")
        for name in ("vol_multiple", "take_profit", "stop_loss"):
            if getattr(self, name) <= 0:
                raise ValueError(f"label {name} must be > 0, got {getattr(self, name)}")
        if self.max_gap is not None and self.max_gap < 1:
            raise ValueError(f"label max_gap must be >= 1 candle or None, got {self.max_gap}")
        if self.scheme == "triple_barrier" and self.threshold == 0 and self.vol_window is None:
            raise ValueError(
                "triple_barrier needs a threshold > 0 or a vol_window for its barriers"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"label spec has unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @property
    def is_classification(self) -> bool:
        return self.scheme != "regression"

    def lookback(self) -> int:
        """Candles before t that the label at t uses (trailing volatility), 0 if none."""
        return self.vol_window if self.vol_window is not None and self.is_classification else 0


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """log(close[t+h] / close[t]); NaN for the last `horizon` rows, which have no future yet."""
    log_close = np.log(close)
    return log_close.shift(-horizon) - log_close


def _shift(x: np.ndarray, lag: int) -> np.ndarray:
    """x[t - lag] at t (lag < 0 looks ahead); NaN where out of range."""
    out = np.full(len(x), np.nan)
    if lag >= 0:
        out[lag:] = x[: len(x) - lag]
    else:
        out[:lag] = x[-lag:]
    return out


def _breaks(candles: pd.DataFrame, max_gap: int | None, unit: str | None) -> np.ndarray:
    """Cumulative count of steps longer than max_gap candles, per row."""
    if max_gap is None or len(candles) < 2:
        return np.zeros(len(candles), dtype=np.int64)
    if unit is None:
        if "unit" not in candles:
            raise ValueError("candles carry no `unit` column: pass unit= so gaps can be found")
        unit = str(candles["unit"].iloc[0])
    step = unit_minutes(check_unit(unit)) * 60_000_000_000
    ns = pd.DatetimeIndex(candles["ts"]).as_unit("ns").asi8
    gap = np.concatenate([[0], (np.diff(ns) > max_gap * step).astype(np.int64)])
    return np.cumsum(gap)


def trailing_volatility(
    candles: pd.DataFrame, window: int, max_gap: int | None = 5, unit: str | None = None
) -> np.ndarray:
    """Std (ddof=1) of 1-candle log returns over the `window` returns up to each row; NaN when
    that window spans a gap longer than max_gap candles. Uses only the past."""
    close = candles["close"].to_numpy(np.float64)
    log_close = np.log(close)
    r = log_close - _shift(log_close, 1)
    _, std = rolling_mean_std(r, window)
    breaks = _breaks(candles, max_gap, unit)
    crossed = breaks - _shift(breaks.astype(np.float64), window) != 0  # a break in (t-w, t]
    return np.where(crossed, np.nan, std)


def make_label_frame(
    candles: pd.DataFrame, spec: LabelSpec, *, unit: str | None = None
) -> pd.DataFrame:
    """Per candle, indexed by ts: `label` (class index, or forward log return for regression;
    NaN where unknown), `end` (ts of the last candle the label may look at, NaT if none), and
    for triple_barrier `touch` (ts of the candle that decided it) and `barrier`
    (upper, lower, time)."""
    ts = pd.DatetimeIndex(candles["ts"])
    close = candles["close"].to_numpy(np.float64)
    n, h = len(close), spec.horizon
    log_close = np.log(close)
    breaks = _breaks(candles, spec.max_gap, unit)
    valid = np.zeros(n, dtype=bool)
    if n > h:  # the window t..t+h exists and crosses no break
        valid[: n - h] = breaks[h:] == breaks[: n - h]
    threshold: np.ndarray = np.full(n, spec.threshold)  # fixed_horizon: thr_t
    width: np.ndarray = np.full(n, spec.threshold)  # triple_barrier: w_t
    if spec.vol_window is not None and spec.is_classification:
        sigma_h = trailing_volatility(candles, spec.vol_window, spec.max_gap, unit) * np.sqrt(h)
        threshold = np.where(
            np.isnan(sigma_h), np.nan, np.fmax(spec.threshold, spec.vol_multiple * sigma_h)
        )
        width = np.where(np.isnan(sigma_h), np.nan, np.fmax(spec.threshold, sigma_h))
        valid &= ~np.isnan(sigma_h)
    fwd = _shift(log_close, -h) - log_close

    end = pd.Series(pd.NaT, index=ts, dtype=ts.dtype)
    end.iloc[np.flatnonzero(valid)] = ts[np.flatnonzero(valid) + h]
    frame = pd.DataFrame({"label": np.nan, "end": end}, index=ts)

    if spec.scheme == "regression":
        frame["label"] = np.where(valid, fwd, np.nan)
    elif spec.scheme == "fixed_horizon":
        with np.errstate(invalid="ignore"):
            label = np.where(fwd > threshold, BUY, np.where(fwd < -threshold, SELL, HOLD))
        frame["label"] = np.where(valid, label, np.nan)
    else:
        label, touch, barrier = _triple_barrier(candles, log_close, width, spec)
        frame["label"] = np.where(valid, label, np.nan)
        touch_ts = pd.Series(pd.NaT, index=ts, dtype=ts.dtype)
        rows = np.flatnonzero(valid)
        touch_ts.iloc[rows] = ts[rows + touch[rows]]
        frame["touch"] = touch_ts
        barriers = np.where(valid, barrier, None)  # type: ignore[call-overload]
        frame["barrier"] = pd.Series(barriers, index=ts, dtype="object")
    return frame


def _triple_barrier(
    candles: pd.DataFrame, log_close: np.ndarray, width: np.ndarray, spec: LabelSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First barrier touched per row: label, offset of the deciding candle, which barrier."""
    n, h = len(log_close), spec.horizon
    log_high = np.log(candles["high"].to_numpy(np.float64))
    log_low = np.log(candles["low"].to_numpy(np.float64))
    upper = log_close + spec.take_profit * width
    lower = log_close - spec.stop_loss * width
    label = np.full(n, HOLD, dtype=np.int64)
    touch = np.full(n, h, dtype=np.int64)
    barrier = np.full(n, "time", dtype=object)
    open_rows = np.ones(n, dtype=bool)
    for j in range(1, h + 1):
        high_j, low_j = _shift(log_high, -j), _shift(log_low, -j)
        with np.errstate(invalid="ignore"):
            hit_low = open_rows & (low_j <= lower)
            hit_high = open_rows & (high_j >= upper) & ~hit_low  # both in one candle: stop first
        label[hit_low], touch[hit_low], barrier[hit_low] = SELL, j, "lower"
        label[hit_high], touch[hit_high], barrier[hit_high] = BUY, j, "upper"
        open_rows &= ~(hit_low | hit_high)
    return label, touch, barrier


def make_labels(candles: pd.DataFrame, spec: LabelSpec, *, unit: str | None = None) -> pd.Series:
    """Label per candle indexed by ts: class index (SELL, HOLD, BUY) or, for regression, the
    forward log return; NaN where the future is unknown."""
    return make_label_frame(candles, spec, unit=unit)["label"].rename("label")


def label_balance(labels: pd.Series | np.ndarray) -> dict[str, float]:
    """Share of each class among labelled rows, plus `rows` (labelled) and `unlabelled`."""
    values = np.asarray(labels, dtype=np.float64)
    known = values[~np.isnan(values)].astype(np.int64)
    counts = np.bincount(known, minlength=len(CLASSES))
    out = {name: float(c / max(len(known), 1)) for name, c in zip(CLASSES, counts, strict=True)}
    return {**out, "rows": float(len(known)), "unlabelled": float(len(values) - len(known))}
