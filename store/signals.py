"""The `signals` table: every signal the engine emits, with its source and reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

SIGNAL_COLUMNS = [
    "ts",
    "market",
    "unit",
    "source",
    "action",
    "confidence",
    "model_id",
    "reason",
    "mode",
    "strategy",
]
# Up to this many signals go in as one parameterised INSERT (~1 ms); more through a registered
# frame (~3 ms whatever the size): the live engine writes one market's signal per candle.
SMALL_BATCH = 16


def insert_signals(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> None:
    """Append signals (a frame with SIGNAL_COLUMNS; `unit` and `strategy` may be missing:
    null)."""
    if frame.empty:
        return
    for column in ("unit", "strategy"):
        if column not in frame:
            frame = frame.assign(**{column: None})
    columns = ", ".join(SIGNAL_COLUMNS)
    con.register("_signal_batch", frame[SIGNAL_COLUMNS])
    try:
        con.execute(f"INSERT INTO signals ({columns}) SELECT {columns} FROM _signal_batch")
    finally:
        con.unregister("_signal_batch")


def insert_signal_rows(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append signals given as tuples in SIGNAL_COLUMNS order, in one statement: a few as one
    parameterised INSERT (no frame to build), many through a frame."""
    if not rows:
        return
    if len(rows) > SMALL_BATCH:
        insert_signals(con, pd.DataFrame(rows, columns=SIGNAL_COLUMNS))
        return
    marks = "(" + ", ".join("?" * len(SIGNAL_COLUMNS)) + ")"
    con.execute(
        f"INSERT INTO signals ({', '.join(SIGNAL_COLUMNS)}) VALUES"
        f" {', '.join([marks] * len(rows))}",
        [value for row in rows for value in row],
    )


def register_strategy(con: duckdb.DuckDBPyConnection, digest: str, name: str, spec: str) -> None:
    """Store a strategy spec (canonical JSON) under its sha256 `digest`, once."""
    con.execute(
        "INSERT INTO strategy_specs (hash, name, spec) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [digest, name, spec],
    )


def load_signals(
    con: duckdb.DuckDBPyConnection, market: str | None = None, *, last: int = 100
) -> pd.DataFrame:
    clause, params = ("WHERE market = ?", [market]) if market else ("", [])
    frame = con.execute(
        f"SELECT * FROM (SELECT * FROM signals {clause} ORDER BY ts DESC LIMIT {int(last)})"
        " ORDER BY ts",
        params,
    ).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame
