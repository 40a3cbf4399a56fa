"""Candle files into the store: validated import of three formats (shared CSV/Parquet, pyupbit
export, Upbit REST dump). REST backfill is engine/data/backfill.py; resampling, export and
status are engine/data/series.py."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.upbit.markets import CANDLE_FIELDS, check_market, check_unit, unit_minutes
from store.candles import (
    CANDLE_COLUMNS,
    SeriesDiff,
    diff_candles,
    upsert_candles,
)
from store.db import transaction

FORMATS = ("auto", "shared", "pyupbit", "upbit")
FORMAT_HELP = {
    "shared": "timestamp (UTC open time), open, high, low, close, volume[, value]",
    "pyupbit": "pyupbit export: index = open time in KST, open, high, low, close, volume, value",
    "upbit": "Upbit REST candles: market, candle_date_time_utc, opening_price, ... (JSON array)",
}
_TIME_COLUMNS = ("timestamp", "ts", "time", "datetime", "date", "candle_date_time")
_INDEX_COLUMNS = ("", "index", "unnamed: 0", "__index_level_0__")
_DAY_FIELDS = ("prev_closing_price", "change_price", "change_rate")
MAX_EXAMPLES = 10
MAX_REJECTED = 1000  # rejected rows a report lists one by one (with all their problems)

# Plausible numbers of a KRW candle; anything outside is a broken file, not a market. Upbit KRW
# prices run from fractions of a won (micro-caps such as BTT have traded near 0.001 KRW, and
# the order book ticks down to 0.0001 KRW and below) to ~1.6e8 for BTC: [1e-8, 1e12] leaves
# four orders of magnitude below the smallest tick and ~6000x above BTC, yet catches 1e308,
# 1e-300 and the like. Volume is in coins (billions per candle for micro-caps; 1e18 is above
# the whole supply of any token Upbit lists) and value in KRW (Upbit's busiest day ever is
# ~1e13 KRW over all markets); a positive volume or value below 1e-12 is below any order's
# precision (Upbit quotes 8 decimals). Zero volume and value are allowed.
MIN_PRICE, MAX_PRICE = 1e-8, 1e12
MAX_VOLUME, MAX_VALUE, MIN_AMOUNT = 1e18, 1e16, 1e-12
# No crypto market traded before Bitcoin's genesis block (2009-01-03).
EARLIEST = pd.Timestamp("2009-01-01", tz="UTC")
# pandas keeps nanoseconds: stamps beyond these bounds are clipped to them when read, so a
# year-1 or year-9999 row is rejected by the range checks instead of aborting the import.
_NS_FLOOR, _NS_CEIL = pd.Timestamp("1678-01-01", tz="UTC"), pd.Timestamp("2262-01-01", tz="UTC")


class DataImportError(Exception):
    """A file cannot be imported; the message names the file, the problem and the fix."""


class ValidationFailed(DataImportError):
    """`--strict` import of a file with bad rows: nothing was written; `report` says why."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


class ImportConflict(DataImportError):
    """The file would change stored candles and `overwrite` was not given: nothing was
    written; `report` counts what would be inserted, updated and left unchanged."""

    def __init__(self, message: str, report: ImportReport, hint: str) -> None:
        super().__init__(message)
        self.report = report
        self.hint = hint


# --------------------------------------------------------------------------- file import


@dataclass
class ImportReport:
    path: Path
    format: str
    series: list[str]  # "KRW-BTC 1" for every market/unit written
    rows_read: int
    rows_new: int  # inserted: timestamps the store did not hold
    rows_rejected: int
    problems: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # "row 2 (high < low)", by row
    written: bool = True
    # the first MAX_REJECTED rejected rows: {"row": 2, "problems": ["high < low", ...]}
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rows_updated: int = 0  # stored candles the file changed (or would change)
    rows_unchanged: int = 0  # stored candles the file repeats exactly
    changes: list[SeriesDiff] = field(default_factory=list)  # series with changed candles

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "path": str(self.path),
            "changes": [
                {
                    "series": f"{d.market} {d.unit}",
                    "candles": d.changed,
                    "first": d.first_changed,
                    "last": d.last_changed,
                    "examples": d.examples,
                }
                for d in self.changes
            ],
        }


def _describe_changes(changes: Sequence[SeriesDiff]) -> str:
    """'32,777 stored KRW-ETH 1 candles would change (2025-09-01 00:00 … 2025-09-23 18:16
    UTC), e.g. 2025-09-01 00:00 open 6,114,000 → 158,000,000, ...'."""

    def number(x: float) -> str:
        return "NULL" if math.isnan(x) else f"{x:,.12g}" if abs(x) < 1e12 else f"{x:.6g}"

    parts = []
    for d in changes:
        span = f"{d.first_changed:%Y-%m-%d %H:%M} … {d.last_changed:%Y-%m-%d %H:%M} UTC"
        examples = [
            f"{e['ts']:%Y-%m-%d %H:%M} "
            + ", ".join(
                f"{c} {number(e['stored'][c])} → {number(e['incoming'][c])}" for c in e["stored"]
            )
            for e in d.examples
        ]
        parts.append(
            f"{d.changed:,} stored {d.market} {d.unit} candles would change ({span}),"
            f" e.g. {'; '.join(examples)}"
        )
    return "; ".join(parts)


def _read_raw(path: Path) -> tuple[pd.DataFrame, int]:
    """The file as a raw frame, and the number of the first data row as a report shows it
    (CSV: the line number, the header being line 1; Parquet and JSON: the record number)."""
    if not path.exists():
        raise DataImportError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            try:
                raw = pd.read_csv(path, engine="pyarrow")
            except (ValueError, TypeError):  # odd CSV: the slower reader says what is wrong
                raw = pd.read_csv(path)
            return raw, 2
        if suffix in (".parquet", ".pq"):
            raw = pd.read_parquet(path)
            if not isinstance(raw.index, pd.RangeIndex):  # pyupbit's time index, kept
                raw = raw.reset_index(names=raw.index.name or "index")
            return raw, 1
        if suffix in (".json", ".jsonl", ".ndjson"):
            return _read_json(path), 1
    except DataImportError:
        raise
    except Exception as exc:  # the reader's own message is the useful part
        raise DataImportError(f"{path}: cannot be read as a candle file ({exc})") from exc
    raise DataImportError(
        f"{path}: unknown file type {suffix or '(no suffix)'!r}; import reads .csv, .parquet"
        " and .json (an Upbit REST response: a JSON array of candles)"
    )


def _read_json(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        try:  # JSON lines: one candle object per line
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise DataImportError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "error" in data:
        raise DataImportError(f"{path}: holds an Upbit error response, not candles: {data}")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise DataImportError(
            f"{path}: expected a JSON array of candle objects (an Upbit REST response),"
            f" found {type(data).__name__}"
        )
    return pd.DataFrame(data)


def detect_format(columns: Sequence[str]) -> str | None:
    """Which import format a file's columns are in, or None."""
    names = {str(c).strip().lower() for c in columns}
    if "candle_date_time_utc" in names or "opening_price" in names:
        return "upbit"
    if names & set(_TIME_COLUMNS):
        return "shared"
    if names & set(_INDEX_COLUMNS) and {"open", "close"} <= names:
        return "pyupbit"
    return None


def _column(raw: pd.DataFrame, *names: str) -> pd.Series | None:
    lookup = {str(c).strip().lower(): c for c in raw.columns}
    for name in names:
        if name in lookup:
            return raw[lookup[name]]
    return None


def _times(values: pd.Series, naive_zone: str) -> pd.Series:
    """Timestamps as UTC nanoseconds; values without a zone are read in `naive_zone` (UTC or
    KST). Stamps beyond what nanoseconds hold (year 1, year 9999) are clipped to
    _NS_FLOOR/_NS_CEIL for validation to reject; unreadable ones are NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return _nanoseconds(values.dt.tz_convert("UTC"))
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return _nanoseconds(
            values.dt.tz_localize(naive_zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert(
                "UTC"
            )
        )
    text = values.astype("string").str.strip()
    has_zone = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if has_zone.any():
        zoned = pd.to_datetime(text[has_zone], utc=True, errors="coerce", format="ISO8601")
        out[has_zone] = _nanoseconds(zoned)
    if (~has_zone).any():
        naive = pd.to_datetime(text[~has_zone], errors="coerce", format="ISO8601")
        out[~has_zone] = _nanoseconds(naive.dt.tz_localize(naive_zone).dt.tz_convert("UTC"))
    return out


def _nanoseconds(stamps: pd.Series) -> pd.Series:
    """UTC stamps in nanoseconds, those beyond its range clipped to _NS_FLOOR/_NS_CEIL."""
    if stamps.dt.unit == "ns":
        return stamps
    if not (stamps.min() >= _NS_FLOOR and stamps.max() <= _NS_CEIL):  # (also when all NaT)
        stamps = stamps.clip(_NS_FLOOR, _NS_CEIL)
    return stamps.dt.as_unit("ns")


def _normalize(raw: pd.DataFrame, fmt: str, path: Path) -> tuple[pd.DataFrame, pd.Series | None]:
    """Canonical columns ts, open, ..., value (market/unit not yet), and the file's own market
    and unit columns where the format carries them."""
    out = pd.DataFrame(index=raw.index)
    if fmt == "upbit":
        utc_time = _column(raw, "candle_date_time_utc")
        kst_time = _column(raw, "candle_date_time_kst")
        if utc_time is not None:
            out["ts"] = _times(utc_time, "UTC")
        elif kst_time is not None:
            out["ts"] = _times(kst_time, "Asia/Seoul")
        fields = CANDLE_FIELDS
    else:
        stamp = (
            _column(raw, *_TIME_COLUMNS)
            if fmt == "shared"
            else _column(raw, *_INDEX_COLUMNS, *_TIME_COLUMNS)
        )
        if stamp is not None:
            out["ts"] = _times(stamp, "UTC" if fmt == "shared" else "Asia/Seoul")
        fields = {c: c for c in CANDLE_FIELDS}
    absent = [name for col, name in fields.items() if col != "value" and _column(raw, name) is None]
    if "ts" not in out or absent:
        wanted = FORMAT_HELP[fmt]
        raise DataImportError(
            f"{path}: the {fmt} format needs {wanted}; missing"
            f" {(['time column'] if 'ts' not in out else []) + absent}, found {list(raw.columns)}"
        )
    for col, name in fields.items():
        values = _column(raw, name)
        if values is None:
            out[col] = np.nan
        elif values.dtype == np.float64:
            out[col] = values
        else:
            out[col] = pd.to_numeric(values, errors="coerce").astype("float64")
    return out, _column(raw, "market")


def _file_unit(raw: pd.DataFrame) -> str | None:
    unit = _column(raw, "unit")
    if unit is not None:
        values = {str(v).split(".")[0] for v in unit.dropna().unique()}
        return values.pop() if len(values) == 1 else None
    if any(_column(raw, name) is not None for name in _DAY_FIELDS):
        return "D"
    return None


def _resolve_series(
    raw: pd.DataFrame,
    fmt: str,
    markets: pd.Series | None,
    market: str | None,
    unit: str | None,
    path: Path,
) -> tuple[pd.Series, str]:
    """The market of every row and the file's unit, from the file and/or the options."""
    file_unit = _file_unit(raw) if fmt == "upbit" else None
    if file_unit is not None:
        file_unit = check_unit(file_unit)
        if unit is not None and check_unit(unit) != file_unit:
            raise DataImportError(
                f"{path}: the file holds unit {file_unit} candles but --unit says {unit};"
                " drop --unit or import the right file"
            )
        unit = file_unit
    if unit is None:
        raise DataImportError(
            f"{path}: the {fmt} format does not say which candle unit it holds; pass --unit"
            " (minutes 1,3,5,10,15,30,60,240 or D)"
        )
    if markets is not None and markets.notna().any():
        found = sorted({str(m) for m in markets.dropna().unique()})
        for name in found:
            check_market(name)
        if market is not None and found != [market]:
            raise DataImportError(
                f"{path}: the file holds {', '.join(found)} but --market says {market};"
                " drop --market or import the right file"
            )
        return markets.astype("str"), unit
    if market is None:
        raise DataImportError(
            f"{path}: the {fmt} format does not say which market it holds; pass --market,"
            " e.g. --market KRW-BTC"
        )
    return pd.Series(market, index=raw.index, dtype="str"), unit


def validate_candles(
    frame: pd.DataFrame, unit: str, now: pd.Timestamp | None = None
) -> dict[str, np.ndarray]:
    """One boolean mask per problem (True = bad row) for canonical candles of one unit.

    Rows are checked in file order, per market: NaN, infinite, non-positive or implausible
    prices (outside [MIN_PRICE, MAX_PRICE]), high < low, open or close outside [low, high],
    negative, NaN, infinite or implausible volume and value (`value` may be NaN: unknown),
    timestamps missing, before EARLIEST or after the bucket forming at `now` (default: the
    clock), off the unit's grid (UTC-aligned buckets), duplicated (later copies) or out of
    order (files may run oldest first or, like Upbit's responses, newest first; rows out of
    the time range take no part in the order checks).
    """
    o, h, low, c, v, val = (
        frame[col].to_numpy(np.float64)
        for col in ("open", "high", "low", "close", "volume", "value")
    )
    ns = frame["ts"].dt.as_unit("ns").array.asi8
    stamped = frame["ts"].notna().to_numpy()
    width = unit_minutes(unit) * 60 * 10**9
    forming = (now or pd.Timestamp.now(tz="UTC")).value // width * width
    early = stamped & (ns < EARLIEST.value)
    future = stamped & (ns > forming)
    valid = stamped & ~early & ~future
    duplicate = np.zeros(len(frame), dtype=bool)
    unsorted = np.zeros(len(frame), dtype=bool)
    markets = frame["market"]
    groups = (
        [np.arange(len(frame))]
        if len(frame) == 0 or (markets == markets.iloc[0]).all()
        else list(markets.groupby(markets, sort=False).indices.values())
    )
    for rows in groups:
        rows = rows[valid[rows]]
        stamps = ns[rows]
        dup = pd.Series(stamps).duplicated(keep="first").to_numpy()
        duplicate[rows[dup]] = True
        rest, kept = stamps[~dup], rows[~dup]
        if len(rest) > 1:
            if rest[-1] >= rest[0]:
                late = rest[1:] < np.maximum.accumulate(rest)[:-1]
            else:
                late = rest[1:] > np.minimum.accumulate(rest)[:-1]
            unsorted[kept[1:][late]] = True
    # The smallest and largest of each row's four prices (NaN when any is NaN) decide the
    # price checks in a few passes over the columns.
    least = np.minimum(np.minimum(o, h), np.minimum(low, c))
    most = np.maximum(np.maximum(o, h), np.maximum(low, c))
    with np.errstate(invalid="ignore"):
        return {
            "bad timestamp": ~stamped,
            "timestamp before 2009": early,
            "candle in the future": future,
            "NaN or non-positive price": np.isnan(least) | (least <= 0),
            "infinite price, volume or value": np.isinf(least)
            | np.isinf(most)
            | np.isinf(v)
            | np.isinf(val),
            f"price outside [{MIN_PRICE:g}, {MAX_PRICE:g}] KRW": (least > 0)
            & np.isfinite(most)
            & ((least < MIN_PRICE) | (most > MAX_PRICE)),
            "high < low": h < low,
            "open/close outside [low, high]": (np.fmax(o, c) > h) | (np.fmin(o, c) < low),
            "negative or NaN volume": np.isnan(v) | (v < 0),
            f"volume outside [{MIN_AMOUNT:g}, {MAX_VOLUME:g}]": _implausible(v, MAX_VOLUME),
            "negative value": val < 0,
            f"value outside [{MIN_AMOUNT:g}, {MAX_VALUE:g}] KRW": _implausible(val, MAX_VALUE),
            "off the unit's grid": valid & (ns % width != 0),
            "duplicate timestamp": duplicate,
            "unsorted timestamp": unsorted,
        }


def _implausible(amounts: np.ndarray, ceiling: float) -> np.ndarray:
    """Finite positive amounts below MIN_AMOUNT or above `ceiling` (0 is fine: no trades)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(amounts) & (amounts > 0) & ((amounts < MIN_AMOUNT) | (amounts > ceiling))


def import_candles(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    market: str | None = None,
    unit: str | None = None,
    *,
    fmt: str = "auto",
    strict: bool = False,
    overwrite: bool = False,
) -> ImportReport:
    """Validate a CSV, Parquet or JSON candle file and upsert its good rows in one transaction.

    `fmt` is one of FORMATS ("auto" detects it from the columns). Market and unit come from
    the file when it carries them (Upbit REST dumps), else from the arguments. Bad rows are
    rejected and reported; with `strict` any bad row rejects the file (ValidationFailed,
    nothing written). The good rows are compared with the store first (in SQL): when any
    stored candle would change, the import is refused (ImportConflict, nothing written)
    unless `overwrite`; the report counts inserted, updated and unchanged candles. A file
    without `value` never blanks stored values. Re-importing the same file changes nothing.
    """
    if fmt not in FORMATS:
        raise DataImportError(f"format {fmt!r} is not known; use one of {', '.join(FORMATS)}")
    if market is not None:
        check_market(market)
    if unit is not None:
        unit = check_unit(unit)
    raw, first_row = _read_raw(path)
    chosen = detect_format(list(raw.columns)) if fmt == "auto" else fmt
    if chosen is None:
        raise DataImportError(
            f"{path}: cannot tell the file's format from its columns {list(raw.columns)};"
            " expected one of: "
            + "; ".join(f"{name}: {text}" for name, text in FORMAT_HELP.items())
            + " (or pass --format)"
        )
    frame, markets = _normalize(raw, chosen, path)
    markets, unit = _resolve_series(raw, chosen, markets, market, unit, path)
    frame.insert(0, "unit", unit)
    frame.insert(0, "market", markets)
    problems = validate_candles(frame, unit)
    bad = np.logical_or.reduce(list(problems.values()))
    report = ImportReport(
        path, chosen, [], len(frame), 0, int(bad.sum()), written=not (strict and bad.any())
    )
    examples: list[tuple[int, str]] = []
    for name, mask in problems.items():
        if mask.any():
            report.problems[name] = int(mask.sum())
            rows = np.flatnonzero(mask)[:MAX_EXAMPLES]
            examples += [(int(r) + first_row, name) for r in rows]
    report.examples = [f"row {r} ({name})" for r, name in sorted(examples)[:MAX_EXAMPLES]]
    flagged = [(name, mask) for name, mask in problems.items() if mask.any()]
    report.rejected = [
        {"row": int(r) + first_row, "problems": [name for name, mask in flagged if mask[r]]}
        for r in np.flatnonzero(bad)[:MAX_REJECTED]
    ]
    if not report.written:
        summary = ", ".join(f"{n:,} × {name}" for name, n in report.problems.items())
        raise ValidationFailed(
            f"{path}: {report.rows_rejected:,} of {report.rows_read:,} rows fail validation"
            f" ({summary}); --strict: nothing was written",
            report,
        )
    clean = frame[~bad] if bad.any() else frame
    names = [str(n) for n in clean["market"].unique()]
    parts = [clean] if len(names) == 1 else [clean[clean["market"] == n] for n in sorted(names)]
    batches = []
    for part in parts:
        if not part["ts"].is_monotonic_increasing:
            part = part.sort_values("ts")
        batches.append(part[CANDLE_COLUMNS].reset_index(drop=True))
    with transaction(con):
        diffs = []
        for batch in batches:
            diff = diff_candles(con, batch)
            diffs.append(diff)
            report.series.append(f"{diff.market} {unit}")
            report.rows_new += diff.new
            report.rows_updated += diff.changed
            report.rows_unchanged += diff.unchanged
            if diff.changed:
                report.changes.append(diff)
        if report.changes and not overwrite:
            report.written = False
            raise ImportConflict(
                f"{path}: {_describe_changes(report.changes)}; nothing was written",
                report,
                "if the file is right and the stored candles wrong, import again with"
                " --overwrite; else check that --market/--unit name the file's series",
            )
        for batch, diff in zip(batches, diffs, strict=True):
            if diff.new or diff.changed:  # a series the store holds exactly is not rewritten
                upsert_candles(con, batch)
    return report


def import_candle_file(
    con: duckdb.DuckDBPyConnection, path: Path, market: str, unit: str
) -> ImportReport:
    """Import a file of one market and unit (format detected); bad rows are reported."""
    return import_candles(con, path, market, unit)
