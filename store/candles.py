"""The `candles` table: bulk upsert from DataFrames, range reads, per-series status."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

CANDLE_COLUMNS = ["market", "unit", "ts", "open", "high", "low", "close", "volume", "value"]


def upsert_candles(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> int:
    """Insert or update candles keyed by (market, unit, ts); returns how many keys were new.

    `frame` is in the canonical candle format (CANDLE_COLUMNS, `ts` timezone-aware UTC).
    Re-upserting identical rows leaves the table unchanged.
    """
    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"candle frame lacks columns {missing}; expected {CANDLE_COLUMNS}")
    if frame.empty:
        return 0
    batch = frame[CANDLE_COLUMNS]
    con.register("_candle_batch", batch)
    try:
        new = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT market, unit, ts FROM _candle_batch) b"
            " ANTI JOIN candles c USING (market, unit, ts)"
        ).fetchall()[0][0]
        con.execute(
            "INSERT INTO candles SELECT market, unit, ts, open, high, low, close, volume, value"
            " FROM _candle_batch ON CONFLICT (market, unit, ts) DO UPDATE SET"
            " open = excluded.open, high = excluded.high, low = excluded.low,"
            " close = excluded.close, volume = excluded.volume, value = excluded.value"
        )
    finally:
        con.unregister("_candle_batch")
    return int(new)


def load_candles(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    last: int | None = None,
) -> pd.DataFrame:
    """Candles of one series with start <= ts < end, ascending; `last` keeps the newest N."""
    where = ["market = ?", "unit = ?"]
    params: list[object] = [market, unit]
    if start is not None:
        where.append("ts >= ?")
        params.append(start)
    if end is not None:
        where.append("ts < ?")
        params.append(end)
    sql = f"SELECT * FROM candles WHERE {' AND '.join(where)} ORDER BY ts"
    if last is not None:
        sql = f"SELECT * FROM ({sql} DESC LIMIT {int(last)}) ORDER BY ts"
    frame = con.execute(sql, params).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def last_ts(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> pd.Timestamp | None:
    rows = con.execute(
        "SELECT max(ts) FROM candles WHERE market = ? AND unit = ?", [market, unit]
    ).fetchall()
    value = rows[0][0]
    return None if value is None else pd.Timestamp(value).tz_convert("UTC")


def candle_status(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per (market, unit): rows, first and last candle."""
    frame = con.execute(
        "SELECT market, unit, count(*) AS rows, min(ts) AS first, max(ts) AS last"
        " FROM candles GROUP BY market, unit ORDER BY market, unit"
    ).df()
    for col in ("first", "last"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame
