"""Calendar features: time of day and of week (UTC), as sin/cos or raw."""

from __future__ import annotations

import numpy as np

from engine.research.features.kernels import last
from engine.research.features.kind import NS_MINUTE, Arrays, Candles, ColumnInfo, FeatureKind

_DAY_MINUTES = 1440
CYCLIC_COLUMNS = ("day_sin", "day_cos", "week_sin", "week_cos")
RAW_COLUMNS = ("hour", "weekday")
# what the clock alone decides: no market ever moves them (a model's dissimilarity gate
# leaves them out: a training range shorter than a week never saw every weekday)
CALENDAR_COLUMNS = CYCLIC_COLUMNS + RAW_COLUMNS


def _calendar_cols(_: ColumnInfo, cyclic: bool, raw: bool) -> ColumnInfo:
    names = (list(CYCLIC_COLUMNS) if cyclic else []) + (list(RAW_COLUMNS) if raw else [])
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
    minutes = ts // NS_MINUTE
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


def _calendar(c: Candles, talib: bool, cyclic: bool, raw: bool) -> Arrays:
    return _calendar_of(c.ts, cyclic, raw)


def _calendar_latest(c: Candles, m: int, cyclic: bool, raw: bool) -> Arrays:
    ts = c.ts[-m:]
    out = _calendar_of(ts, cyclic, raw)
    return {k: last(v, m) for k, v in out.items()}


CALENDAR = FeatureKind(
    name="calendar",
    group="calendar",
    doc="time of day and of week (UTC) as sin/cos; raw hour/weekday if asked",
    defaults={"cyclic": True, "raw": False},
    columns=_calendar_cols,
    batch=_calendar,
    latest=_calendar_latest,
)
