"""The `signals` table: every signal the engine emits, with its source and reason."""

from __future__ import annotations

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
]


def insert_signals(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> None:
    """Append signals (a frame with SIGNAL_COLUMNS; `unit` may be missing: null)."""
    if frame.empty:
        return
    if "unit" not in frame:
        frame = frame.assign(unit=None)
    columns = ", ".join(SIGNAL_COLUMNS)
    con.register("_signal_batch", frame[SIGNAL_COLUMNS])
    try:
        con.execute(f"INSERT INTO signals ({columns}) SELECT {columns} FROM _signal_batch")
    finally:
        con.unregister("_signal_batch")


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
