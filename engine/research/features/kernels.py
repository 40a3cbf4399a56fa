"""The shared array kernels every feature kind is built from: exact per-window moments
(numba), pandas-compatible EWMs, shifts, trailing windows and safe ratios.

Window kernels compute each value from its own window alone, so a value never depends on
history before the window (pandas' online rolling variance does, by ~6e-6 relative over 1M
candles). `last`, `slide` and `windows` serve the live path, which needs only the newest rows.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd


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
def rolling_moments(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
def rolling_mean_mad(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
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


@numba.njit(cache=True)
def _pandas_rolling(x: np.ndarray, n: int, mean: bool) -> np.ndarray:
    """pandas' fixed-window `rolling(n).sum()` / `.mean()` step for step: one running sum with
    Kahan compensation (separate for adds and removes), its guards for all-equal and one-signed
    windows; NaN until n values, or while a NaN is inside the window."""
    size = len(x)
    out = np.full(size, np.nan)
    nobs = 0
    neg_ct = 0
    total = 0.0
    comp_add = 0.0
    comp_remove = 0.0
    same = 0
    prev = x[0] if size else np.nan
    for i in range(size):
        if i >= n:  # remove the value leaving the window
            val = x[i - n]
            if not math.isnan(val):
                nobs -= 1
                y = -val - comp_remove
                t = total + y
                comp_remove = t - total - y
                total = t
                if np.signbit(val):
                    neg_ct -= 1
        val = x[i]
        if not math.isnan(val):
            nobs += 1
            y = val - comp_add
            t = total + y
            comp_add = t - total - y
            total = t
            if np.signbit(val):
                neg_ct += 1
            if val == prev:
                same += 1
            else:
                same = 1
            prev = val
        if nobs >= n and nobs > 0:
            if mean:
                result = total / nobs
                if same >= nobs:
                    result = prev
                elif neg_ct == 0 and result < 0 or neg_ct == nobs and result > 0:
                    result = 0.0
            else:
                result = prev * nobs if same >= nobs else total
            out[i] = result
    return out


def rolling_sum(x: np.ndarray, n: int) -> np.ndarray:
    """pandas' `rolling(n).sum()`, bit for bit, without building a Series."""
    return _pandas_rolling(np.ascontiguousarray(x, dtype=np.float64), n, False)


def rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    """pandas' `rolling(n).mean()`, bit for bit (compensated running sum: drifts < 1e-15
    relative with history)."""
    return _pandas_rolling(np.ascontiguousarray(x, dtype=np.float64), n, True)


@numba.njit(cache=True)
def rolling_min_max(low: np.ndarray, high: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """pandas' `rolling(n).min()` of `low` and `.max()` of `high` (a NaN in a window: NaN)."""
    size = len(low)
    lo = np.full(size, np.nan)
    hi = np.full(size, np.nan)
    for t in range(n - 1, size):
        a = low[t]
        b = high[t]
        for j in range(t - n + 1, t):
            if low[j] < a or math.isnan(low[j]):  # once NaN, no comparison replaces it
                a = low[j]
            if high[j] > b or math.isnan(high[j]):
                b = high[j]
        lo[t] = a
        hi[t] = b
    return lo, hi


def pandas_alpha(*, span: float | None = None, alpha: float | None = None) -> float:
    """The smoothing factor pandas' `ewm(span=...)` / `ewm(alpha=...)` really uses: it goes
    through the centre of mass, so the last bit is pandas', not 2 / (span + 1)'s."""
    com = (span - 1.0) / 2.0 if span is not None else (1.0 - alpha) / alpha  # type: ignore[operator]
    return 1.0 / (1.0 + com)


def rma(x: np.ndarray, length: int) -> np.ndarray:
    """pandas-ta's `ta.rma` (Wilder's average: `ewm(alpha=1/length, adjust=False)`), all NaN
    for fewer than `length` values as pandas-ta returns nothing then."""
    if len(x) < length:
        return np.full(len(x), np.nan)
    return ewm(np.ascontiguousarray(x, dtype=np.float64), pandas_alpha(alpha=1.0 / length))


def ta_ema(x: np.ndarray, length: int) -> np.ndarray:
    """pandas-ta's native `ta.ema` (SMA-seeded, `ewm(span=length, adjust=False)`), all NaN
    for fewer than `length` values."""
    if len(x) < length:
        return np.full(len(x), np.nan)
    return presma_ewm(np.ascontiguousarray(x, dtype=np.float64), length, pandas_alpha(span=length))


@numba.njit(cache=True)
def ewm(x: np.ndarray, alpha: float) -> np.ndarray:
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
def presma_ewm(x: np.ndarray, length: int, alpha: float) -> np.ndarray:
    """pandas-ta's SMA-seeded EMA: NaN before `length - 1`, seeded there with the mean of the
    first `length` values (NaN ignored, as pandas' mean does), then `ewm`."""
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
    return ewm(seeded, alpha)


def shift(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if lag < len(x):
        out[lag:] = x[: len(x) - lag]
    return out


def last(x: np.ndarray, k: int) -> np.ndarray:
    """The last k values of x, NaN-padded in front when x is shorter."""
    if len(x) >= k:
        return x[len(x) - k :]
    return np.concatenate([np.full(k - len(x), np.nan), x])


def slide(x: np.ndarray, n: int) -> np.ndarray:
    """(len(x) - n + 1, n) read-only view of every window of n (numpy's sliding_window_view
    without its ~30 us of argument checking, which matters on the live path)."""
    x = np.ascontiguousarray(x)
    step = x.strides[0]
    view: np.ndarray = np.ndarray(
        (len(x) - n + 1, n), dtype=x.dtype, buffer=x, strides=(step, step)
    )
    view.flags.writeable = False
    return view


def windows(x: np.ndarray, n: int, m: int) -> np.ndarray:
    """(m, n) array: the trailing window of n ending at each of the last m positions."""
    return slide(last(x, n + m - 1), n)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def diff(x: np.ndarray, lag: int) -> np.ndarray:
    """x[t] - x[t - lag], NaN for the first `lag` rows."""
    out = np.empty(len(x))
    out[:lag] = np.nan
    np.subtract(x[lag:], x[: max(len(x) - lag, 0)], out=out[lag:])
    return out


def zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.where(std == 0.0, 0.0, ratio(x - mean, std))


def as_array(series: pd.Series | None, size: int) -> np.ndarray:
    """pandas-ta returns None when a series is shorter than its length: all NaN then."""
    if series is None:
        return np.full(size, np.nan)
    return series.to_numpy(np.float64)
