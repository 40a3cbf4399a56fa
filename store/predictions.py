"""The live prediction log in `predictions` (source 'live', migration 010): appending the rows
the live engine makes (one per model and closed candle, idempotent under a replay of the same
candles) and reading a model's rows back. The resolver (engine.ops.outcomes) fills their
outcomes; batch predictions (source 'batch') are engine.training.batch's."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from store.db import bump_writes

LIVE_COLUMNS = [
    "ts",
    "market",
    "unit",
    "model_id",
    "role",
    "mode",
    "probs",
    "action",
    "confidence",
    "threshold",
    "acted",
    "latency_ms",
    "fallback",
]

# what `load_live_predictions` answers, in this order
LOADED_COLUMNS = [
    *LIVE_COLUMNS,
    "label_resolved",
    "outcome_return",
    "resolved_at",
]

_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("market", pa.string()),
        ("unit", pa.string()),
        ("model_id", pa.int64()),
        ("role", pa.string()),
        ("mode", pa.string()),
        ("probs", pa.list_(pa.float64())),
        ("action", pa.string()),
        ("confidence", pa.float64()),
        ("threshold", pa.float64()),
        ("acted", pa.bool_()),
        ("latency_ms", pa.float64()),
        ("fallback", pa.string()),
    ]
)


def _probs_column(values: pd.Series) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for value in values:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            out.append(None)
            continue
        row = [float(v) for v in value]
        if len(row) != 3:
            raise ValueError(
                f"a live prediction's probs must be 3 floats (sell, hold, buy), got {row}"
            )
        out.append(row)
    return out


def _arrow_batch(frame: pd.DataFrame) -> pa.Table:
    missing = [c for c in ("ts", "market", "unit", "model_id") if c not in frame]
    if missing:
        raise ValueError(f"live predictions need columns {missing} (have {list(frame.columns)})")
    columns = {}
    for name in LIVE_COLUMNS:
        kind = _SCHEMA.field(name).type
        if name not in frame:
            columns[name] = pa.nulls(len(frame), kind)
        elif name == "probs":
            columns[name] = pa.array(_probs_column(frame[name]), type=kind)
        elif name == "ts":
            columns[name] = pa.array(pd.to_datetime(frame[name], utc=True), type=kind)
        else:  # NaN, None and pandas' NA are null
            columns[name] = pa.array(frame[name].tolist(), type=kind, from_pandas=True)
    return pa.table(columns, schema=_SCHEMA)


def insert_live_predictions(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> int:
    """Append live predictions (a frame with LIVE_COLUMNS: probs a list of 3 floats, or None
    when the model gave no answer; role, mode, action, confidence, threshold, acted,
    latency_ms and fallback may be missing: null) as source 'live', in one INSERT. A row whose
    (model_id, market, unit, ts) already has a live row, or repeats an earlier row of the same
    frame, is skipped: replaying the same candles appends nothing. Returns the rows inserted."""
    if frame.empty:
        return 0
    batch = _arrow_batch(frame)
    ts = pd.to_datetime(frame["ts"], utc=True)
    con.register("_live_prediction_batch", batch)
    try:
        return _insert_new(con, "_live_prediction_batch", [], ts.min(), ts.max())
    finally:
        con.unregister("_live_prediction_batch")


def _insert_new(
    con: duckdb.DuckDBPyConnection,
    source: str,
    params: list[Any],
    first: pd.Timestamp,
    last: pd.Timestamp,
) -> int:
    """Insert the rows `source` (a relation of LIVE_COLUMNS, with `params`) holds, first to
    last ts, as source 'live': the first of each (model_id, market, unit, ts), none already
    stored. Returns the rows inserted."""
    columns = ", ".join(LIVE_COLUMNS)
    selected = ", ".join(f"b.{c}" for c in LIVE_COLUMNS)
    # the batch's time range as constants: the scan for earlier rows skips, by the row
    # groups' min/max ts, all of the log outside it (a candle's rows: ~1 ms, not ~150 ms
    # against 1M stored rows)
    inserted = con.execute(
        f"INSERT INTO predictions ({columns}, source)"
        f" SELECT {selected}, 'live' FROM ("
        f"   SELECT * FROM {source}"
        "   QUALIFY row_number() OVER (PARTITION BY model_id, market, unit, ts) = 1"
        " ) b"
        " WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.source = 'live'"
        "   AND p.ts BETWEEN ? AND ?"
        "   AND p.model_id = b.model_id AND p.market = b.market AND p.unit = b.unit"
        "   AND p.ts = b.ts)",
        [*params, first.to_pydatetime(), last.to_pydatetime()],
    ).fetchall()
    bump_writes()
    return int(inserted[0][0]) if inserted else 0


# Up to this many live predictions go in as one parameterised INSERT (no frame, no Arrow
# table: ~1 ms against ~8 ms): the live engine writes one candle's few rows at a time.
SMALL_BATCH = 16
_CASTS = {
    "ts": "TIMESTAMPTZ",
    "model_id": "BIGINT",
    "probs": "DOUBLE[]",
    "confidence": "DOUBLE",
    "threshold": "DOUBLE",
    "acted": "BOOLEAN",
    "latency_ms": "DOUBLE",
}


def insert_live_prediction_rows(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> int:
    """`insert_live_predictions` for rows given as dicts (LIVE_COLUMNS keys; missing: null):
    a few as one parameterised INSERT, many through a frame. Returns the rows inserted."""
    if not rows:
        return 0
    if len(rows) > SMALL_BATCH:
        return insert_live_predictions(con, pd.DataFrame(rows))
    for name in ("ts", "market", "unit", "model_id"):
        if any(row.get(name) is None for row in rows):
            raise ValueError(f"live predictions need {name} on every row")
    marks = "(" + ", ".join(f"?::{_CASTS.get(c, 'VARCHAR')}" for c in LIVE_COLUMNS) + ")"
    values = [_param(name, row.get(name)) for row in rows for name in LIVE_COLUMNS]
    stamps = [pd.Timestamp(row["ts"]) for row in rows]
    source = f"(VALUES {', '.join([marks] * len(rows))}) AS v({', '.join(LIVE_COLUMNS)})"
    return _insert_new(con, source, values, min(stamps), max(stamps))


def _param(name: str, value: Any) -> Any:
    """A live prediction's value as a query parameter (NaN: null)."""
    if value is None:
        return None
    if name == "ts":
        return pd.Timestamp(value).to_pydatetime()
    if name == "probs":
        return [float(p) for p in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if name == "model_id":
        return int(value)
    return value


def load_live_predictions(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    *,
    market: str | None = None,
    unit: str | None = None,
    since: datetime | pd.Timestamp | None = None,
    last: int | None = None,
    resolved: bool | None = None,
) -> pd.DataFrame:
    """Model `model_id`'s live rows (LOADED_COLUMNS), ascending ts: of one market/unit when
    given, from `since` on, the newest `last` of them, only resolved (True) or only pending
    (False) rows. `probs` is a list of 3 floats or None."""
    clauses = ["source = 'live'", "model_id = ?"]
    params: list[object] = [int(model_id)]
    if market is not None:
        clauses.append("market = ?")
        params.append(market)
    if unit is not None:
        clauses.append("unit = ?")
        params.append(unit)
    if since is not None:
        clauses.append("ts >= ?")
        stamp = pd.Timestamp(since)  # a naive time is UTC, as every ts in the store
        params.append((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).to_pydatetime())
    if resolved is True:
        clauses.append("label_resolved IS NOT NULL")
    elif resolved is False:
        clauses.append("label_resolved IS NULL")
    columns = ", ".join(LOADED_COLUMNS)
    where = " AND ".join(clauses)
    limit = "" if last is None else f" LIMIT {max(int(last), 0)}"
    frame = con.execute(
        f"SELECT {columns} FROM (SELECT {columns} FROM predictions WHERE {where}"
        f" ORDER BY ts DESC, market, unit{limit}) ORDER BY ts, market, unit",
        params,
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["resolved_at"] = pd.to_datetime(frame["resolved_at"], utc=True)
    frame["probs"] = [
        [float(v) for v in p] if isinstance(p, (list, tuple, np.ndarray)) else None
        for p in frame["probs"]
    ]
    return frame
