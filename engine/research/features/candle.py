"""The shape of each candle: range, body and wicks, and the gap from the previous close."""

from __future__ import annotations

import numpy as np

from engine.research.features.kernels import last, shift
from engine.research.features.kind import Arrays, Candles, FeatureKind, fixed

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


def _candle_shape(c: Candles, talib: bool) -> Arrays:
    return _shape(c.open, c.high, c.low, c.close)


def _candle_shape_latest(c: Candles, m: int) -> Arrays:
    return _shape(*(last(x, m) for x in (c.open, c.high, c.low, c.close)))


CANDLE_SHAPE = FeatureKind(
    name="candle_shape",
    group="price",
    doc="range and body over close; upper/lower wick over the range (0 if flat)",
    defaults={},
    columns=fixed(_SHAPE),
    batch=_candle_shape,
    latest=_candle_shape_latest,
)


def _open_gap(c: Candles, talib: bool) -> Arrays:
    return {"open_gap": c.open / shift(c.close, 1) - 1.0}


def _open_gap_latest(c: Candles, m: int) -> Arrays:
    return {"open_gap": last(c.open, m) / last(c.close, m + 1)[:-1] - 1.0}


OPEN_GAP = FeatureKind(
    name="open_gap",
    group="price",
    doc="open / previous close - 1",
    defaults={},
    columns=fixed({"open_gap": (1, 2)}),
    batch=_open_gap,
    latest=_open_gap_latest,
)
