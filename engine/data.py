"""Candles into the store: file import (validated) and REST backfill through the Upbit client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from engine.markets import check_market, check_unit
from store.candles import CANDLE_COLUMNS, upsert_candles


class DataImportError(Exception):
    """A file cannot be imported; the message names the file and the problem."""


@dataclass
class ImportReport:
    path: Path
    rows_read: int
    rows_new: int
    rows_rejected: int
    problems: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


def _read_candle_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataImportError(f"{path}: no such file")
    try:
        raw = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # the reader's own message is the useful part
        raise DataImportError(f"{path}: cannot be read as a candle file ({exc})") from exc
    columns = {c.lower(): c for c in raw.columns}
    time_col = next(
        (columns[c] for c in ("timestamp", "ts", "candle_date_time_utc") if c in columns), None
    )
    needed = ["open", "high", "low", "close", "volume"]
    absent = [c for c in needed if c not in columns]
    if time_col is None or absent:
        raise DataImportError(
            f"{path}: expected columns timestamp,open,high,low,close,volume[,value];"
            f" found {list(raw.columns)}"
        )
    frame = pd.DataFrame({"ts": pd.to_datetime(raw[time_col], utc=True, errors="coerce")})
    for col in needed + ["value"]:
        frame[col] = pd.to_numeric(raw[columns[col]], errors="coerce") if col in columns else np.nan
    return frame


def _validate(frame: pd.DataFrame) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Boolean mask of good rows, and one mask per problem."""
    prices = frame[["open", "high", "low", "close"]]
    problems = {
        "bad timestamp": frame["ts"].isna(),
        "NaN or non-positive price": prices.isna().any(axis=1) | (prices <= 0).any(axis=1),
        "high < low": frame["high"] < frame["low"],
        "open/close outside [low, high]": (
            (frame[["open", "close"]].max(axis=1) > frame["high"])
            | (frame[["open", "close"]].min(axis=1) < frame["low"])
        ),
        "negative or NaN volume": frame["volume"].isna() | (frame["volume"] < 0),
        "duplicate timestamp": frame["ts"].duplicated(keep="first"),
    }
    bad = pd.concat(problems, axis=1).any(axis=1)
    return ~bad, problems


def import_candle_file(
    con: duckdb.DuckDBPyConnection, path: Path, market: str, unit: str
) -> ImportReport:
    """Validate a CSV/Parquet candle file and upsert its good rows; bad rows are reported."""
    market, unit = check_market(market), check_unit(unit)
    frame = _read_candle_file(path)
    good, problems = _validate(frame)
    report = ImportReport(path, len(frame), 0, int((~good).sum()))
    for name, mask in problems.items():
        if mask.any():
            report.problems[name] = int(mask.sum())
            rows = np.flatnonzero(mask.to_numpy())[:3]
            report.examples += [f"row {r + 2} ({name})" for r in rows]  # +2: header, 1-based
    clean = frame[good].sort_values("ts")
    clean.insert(0, "unit", unit)
    clean.insert(0, "market", market)
    report.rows_new = upsert_candles(con, clean[CANDLE_COLUMNS])
    return report


async def fetch_into_store(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    since: datetime,
    until: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Backfill `market`/`unit` from Upbit REST into the store, page by page; returns new rows.

    Each page is stored as it arrives, so an interrupted fetch keeps what it got.
    """
    from engine.upbit import fetch_candles

    market, unit = check_market(market), check_unit(unit)
    new = 0

    def store_page(page: pd.DataFrame) -> None:
        nonlocal new
        new += upsert_candles(con, page[CANDLE_COLUMNS])
        if on_progress:
            on_progress(len(page))

    await fetch_candles(market, unit, since, until, on_page=store_page)
    return new
