"""`compute_latest`: the newest row of `compute_features`, fast, for one new live candle.

A second implementation on purpose: the batch path runs pandas-ta over the whole window
(milliseconds per kind), while a live candle close must produce the row in well under a
millisecond per market. Each kind's `latest` function (next to its `batch` function in its
group module) computes only the last values with numpy/numba kernels over the trailing
window. `tests/test_research.py::test_compute_latest_equals_the_batch_row_for_every_kind`
holds every kind equal to `compute_features(window).iloc[-1]` to 1e-9 relative, and
`tests/test_lookahead.py::test_the_live_window_reproduces_full_history_features` holds the
live window's rows equal to full-history ones.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.research.features.batch import (
    compute_features,
    raw_columns,
    since_break,
    talib_importable,
    timestamps,
    unit_ns,
)
from engine.research.features.kind import Candles
from engine.research.features.spec import DEFAULT_SPEC, FeatureSpec


def compute_latest(
    window: pd.DataFrame, spec: FeatureSpec = DEFAULT_SPEC, *, unit: str | None = None
) -> pd.Series:
    """The newest row of `compute_features(window, spec)`, fast (for one new live candle).

    Equal to the batch row to 1e-9 relative (tests check every kind). With `talib=True` and
    TA-Lib importable, pandas-ta's results follow TA-Lib, so this falls back to the batch path.
    """
    if window.empty:
        raise ValueError("no candles to compute features from")
    if spec.talib and talib_importable():
        return compute_features(window, spec, unit=unit).iloc[-1]
    stamps, ts = timestamps(window)
    step = unit_ns(window, unit) if spec.max_gap is not None else 0
    values = latest_values(Candles(window, ts), spec, step)
    return pd.Series(values, index=spec._plan.index, name=stamps[-1], copy=False)


def latest_values(data: Candles, spec: FeatureSpec, step_ns: int) -> np.ndarray:
    """`compute_latest`'s values (in `spec`'s column order) for one series already held as
    arrays, ascending: the path of many markets at once (`Candles.of_arrays` over slices of
    one query's columns, no pandas per market). `step_ns` is the unit's bucket width (0 when
    the spec has no max_gap); a talib spec takes `compute_latest` instead."""
    plan = spec._plan
    raw = raw_columns(spec, data, plan.depth)
    newest = len(data) - 1
    since = since_break(data.ts, step_ns, spec.max_gap)
    newest_since = np.iinfo(np.int64).max if since is None else since[-1]
    values = np.empty(len(plan.info))
    for i, (col, (warmup, memory)) in enumerate(plan.info.items()):
        value = raw[col][-1]
        if newest < max(warmup, memory - 1) or newest_since < memory - 1 or math.isinf(value):
            value = np.nan
        values[i] = value
    return values
