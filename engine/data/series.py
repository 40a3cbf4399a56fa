"""Derived candle data of stored series: resampling to a larger unit, export to a file, and
per-series status (coverage and gaps)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from engine.upbit.markets import check_market, check_unit, unit_minutes
from store.candles import (
    candle_status,
    export_candles,
    resample,
)


class DataError(Exception):
    """A data command cannot run with these arguments (no candles, units that do not fit)."""


@dataclass
class ResampleReport:
    market: str
    from_unit: str
    to_unit: str
    source_rows: int
    written: int
    new: int


def resample_series(
    con: duckdb.DuckDBPyConnection,
    market: str,
    from_unit: str,
    to_unit: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ResampleReport:
    """Build `to_unit` candles of `market` from stored `from_unit` candles, in SQL.

    The result is what Upbit returns for `to_unit` (same UTC-aligned buckets, first open,
    last close, extremes, sums), wherever the stored `from_unit` series is complete.
    """
    market, from_unit, to_unit = check_market(market), check_unit(from_unit), check_unit(to_unit)
    small, large = unit_minutes(from_unit), unit_minutes(to_unit)
    if large <= small or large % small:
        raise DataError(
            f"cannot resample unit {from_unit} into unit {to_unit}: a {to_unit} candle must be"
            f" a whole number (> 1) of {from_unit} candles; pick a larger --to-unit that is a"
            f" multiple of {from_unit} (e.g. 1 → 15, 15 → 60, 60 → 240, 240 → D)"
        )
    rows = con.execute(
        "SELECT count(*) FROM candles WHERE market = ? AND unit = ?", [market, from_unit]
    ).fetchall()[0][0]
    if rows == 0:
        raise DataError(
            f"no {market} unit {from_unit} candles in the store to resample;"
            f" run `upquant data fetch {market} --unit {from_unit} --since ...` first"
        )
    written, new = resample(con, market, from_unit, to_unit, since, until)
    return ResampleReport(market, from_unit, to_unit, int(rows), written, new)


def export_series(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    path: Path,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Write one stored series to `path` (.csv or .parquet, shared format plus value); rows."""
    market, unit = check_market(market), check_unit(unit)
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise DataError(f"{path}: export writes .csv or .parquet; give --out a name ending so")
    if not path.parent.exists():
        raise DataError(f"{path}: directory {path.parent} does not exist")
    rows = export_candles(con, market, unit, path, since, until)
    if rows == 0:
        path.unlink(missing_ok=True)
        raise DataError(
            f"no {market} unit {unit} candles in the store for that range; nothing exported"
        )
    return rows


def series_status(con: duckdb.DuckDBPyConnection, min_gap: int = 2) -> pd.DataFrame:
    """Per market and unit: rows, first/last candle, gaps (see store.candles.candle_status)."""
    if min_gap < 1:
        raise DataError(f"--min-gap {min_gap}: a gap is at least 1 missing candle")
    return candle_status(con, min_gap=min_gap)
