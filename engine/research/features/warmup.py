"""Measuring warm-up (`recursive_warmup`, with `agree` and `column_floors`) and warming the
numba kernels up before the first live candle (`warm_up`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.research.features.batch import compute_features
from engine.research.features.live import compute_latest
from engine.research.features.spec import DEFAULT_SPEC, FEATURE_KINDS, TOLERANCE, FeatureSpec


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
