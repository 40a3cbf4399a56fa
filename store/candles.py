"""The `candles` table: bulk upsert, range reads, fetch coverage, resampling, export, status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from store.db import bump_writes, transaction

CANDLE_COLUMNS = ["market", "unit", "ts", "open", "high", "low", "close", "volume", "value"]
_VALUES = ["ts", "open", "high", "low", "close", "volume", "value"]
_OHLCV = ["open", "high", "low", "close", "volume"]
# A batch without `value` (NULL: unknown, e.g. a shared-format file or a resample of candles
# that lack it) never blanks a value already stored: every writer goes through this.
_SET_VALUES = (
    "open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,"
    " volume = excluded.volume, value = coalesce(excluded.value, candles.value)"
)
# A stored candle differs from an incoming one (b) when any of OHLCV differ, or the value
# does where the batch has one (a NULL value keeps the stored one, see _SET_VALUES).
_DIFFERS = " OR ".join(
    [f"b.{c} IS DISTINCT FROM s.{c}" for c in _OHLCV]
    + ["(b.value IS NOT NULL AND b.value IS DISTINCT FROM s.value)"]
)
_EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"  # Upbit's buckets are aligned on UTC

Range = tuple[pd.Timestamp, pd.Timestamp]


def unit_minutes(unit: str) -> int:
    """Width of one bucket in minutes (a day is 1440: Upbit days start at 00:00 UTC).

    The one definition of a unit's bucket width. It lives in the store, the lowest layer that
    needs it (resampling, gap counts) and one that may not import engine; the engine builds
    on it (engine.upbit.markets, engine.upbit.client.unit_width).
    """
    return 1440 if unit == "D" else int(unit)


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def upsert_candles(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> int:
    """Insert or update candles keyed by (market, unit, ts); returns how many keys were new.

    `frame` is in the canonical candle format (CANDLE_COLUMNS, `ts` timezone-aware UTC) with
    unique keys. Re-upserting identical rows leaves the table unchanged; a NaN `value` keeps
    the stored one. A frame with a non-finite price or volume is refused (ValueError), so no
    path writes one. A batch of one series whose time range holds no stored candle (a first
    import or fetch) takes a plain bulk insert, the fastest path into the keyed table.
    """
    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"candle frame lacks columns {missing}; expected {CANDLE_COLUMNS}")
    if frame.empty:
        return 0
    _check_finite(frame)
    try:
        return _upsert(con, frame)
    finally:  # the series versions a reader cached are stale now (see series_versions)
        bump_writes()


def _upsert(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> int:
    market, unit = frame["market"].iloc[0], frame["unit"].iloc[0]
    if (frame["market"] == market).all() and (frame["unit"] == unit).all():
        return _upsert_series(con, str(market), str(unit), frame)
    batch = frame[CANDLE_COLUMNS]
    con.register("_candle_batch", batch)
    try:
        new = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT market, unit, ts FROM _candle_batch) b"
            " ANTI JOIN candles c USING (market, unit, ts)"
        ).fetchall()[0][0]
        con.execute(
            "INSERT INTO candles SELECT market, unit, ts, open, high, low, close, volume, value"
            f" FROM _candle_batch ON CONFLICT (market, unit, ts) DO UPDATE SET {_SET_VALUES}"
        )
        con.execute(
            "INSERT INTO candle_series SELECT DISTINCT market, unit, now() FROM _candle_batch"
            " ON CONFLICT (market, unit) DO UPDATE SET updated_at = excluded.updated_at"
        )
    finally:
        con.unregister("_candle_batch")
    return int(new)


def _check_finite(frame: pd.DataFrame) -> None:
    """Refuse candles whose prices or volume are NaN or infinite (value may be NaN: unknown,
    not infinite): one such candle poisons every feature row computed over it."""
    numbers = frame[_OHLCV].to_numpy(np.float64)
    value = frame["value"].to_numpy(np.float64)
    bad = ~np.isfinite(numbers).all(axis=1) | np.isinf(value)
    if bad.any():
        first = frame[bad].iloc[0]
        raise ValueError(
            f"refusing to store {int(bad.sum()):,} candles with non-finite prices, volume or"
            f" value (NaN or infinite), the first {first['market']} unit {first['unit']} at"
            f" {first['ts']}: {first[[*_OHLCV, 'value']].to_dict()}; the store holds finite"
            " numbers only, so drop or repair these rows before writing"
        )


@dataclass
class SeriesDiff:
    """How a batch of one series compares with the stored candles at its timestamps."""

    market: str
    unit: str
    new: int  # timestamps the store does not hold
    changed: int  # stored candles the batch would change
    unchanged: int  # stored candles the batch repeats exactly
    first_changed: pd.Timestamp | None = None
    last_changed: pd.Timestamp | None = None
    # a few changed candles: {"ts", "stored": {column: value}, "incoming": {column: value}}
    examples: list[dict[str, Any]] = field(default_factory=list)


def diff_candles(
    con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, examples: int = 2
) -> SeriesDiff:
    """Compare a batch of ONE series (canonical format, unique keys) with the store, in SQL.

    Writes nothing. A batch whose time range holds no stored candle is all new without a
    join; otherwise one join of the batch with the stored range counts the changed and
    unchanged candles (see _DIFFERS), and the first `examples` changed ones are read back.
    """
    market, unit = str(frame["market"].iloc[0]), str(frame["unit"].iloc[0])
    if not ((frame["market"] == market).all() and (frame["unit"] == unit).all()):
        raise ValueError("diff_candles compares one series at a time; split the frame first")
    ts = frame["ts"]
    bounds = [market, unit, ts.min(), ts.max()]
    stored = "SELECT * FROM candles WHERE market = ? AND unit = ? AND ts BETWEEN ? AND ?"
    before = con.execute(f"SELECT count(*) FROM ({stored})", bounds).fetchall()[0][0]
    if before == 0:
        return SeriesDiff(market, unit, len(frame), 0, 0)
    con.register("_candle_diff", pa.Table.from_pandas(frame[_VALUES], preserve_index=False))
    try:
        joined = f"FROM _candle_diff b JOIN ({stored}) s USING (ts)"
        existing, changed, first, last = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {_DIFFERS}),"
            f" min(ts) FILTER (WHERE {_DIFFERS}), max(ts) FILTER (WHERE {_DIFFERS}) {joined}",
            bounds,
        ).fetchall()[0]
        diff = SeriesDiff(
            market, unit, len(frame) - int(existing), int(changed), int(existing) - int(changed)
        )
        if changed:
            diff.first_changed, diff.last_changed = _utc(first), _utc(last)
            cols = ", ".join(f"s.{c} AS s_{c}, b.{c} AS b_{c}" for c in _VALUES[1:])
            rows = con.execute(
                f"SELECT ts, {cols} {joined} WHERE {_DIFFERS} ORDER BY ts LIMIT {int(examples)}",
                bounds,
            ).df()
            for row in rows.to_dict("records"):
                differ = [
                    c
                    for c in _VALUES[1:]
                    if row[f"b_{c}"] == row[f"b_{c}"] and row[f"s_{c}"] != row[f"b_{c}"]
                ]
                diff.examples.append(
                    {
                        "ts": _utc(row["ts"]),
                        "stored": {c: row[f"s_{c}"] for c in differ},
                        "incoming": {c: row[f"b_{c}"] for c in differ},
                    }
                )
    finally:
        con.unregister("_candle_diff")
    return diff


def _upsert_series(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, frame: pd.DataFrame
) -> int:
    ts = frame["ts"]
    bounds = [market, unit, ts.min(), ts.max()]
    in_range = "SELECT count(*) FROM candles WHERE market = ? AND unit = ? AND ts BETWEEN ? AND ?"
    before = con.execute(in_range, bounds).fetchall()[0][0]
    insert = (
        "INSERT INTO candles SELECT ?, ?, ts, open, high, low, close, volume, value"
        " FROM _candle_batch"
    )
    # DuckDB scans an Arrow table ~30 % faster than the DataFrame it is made from (9 ms/1M)
    con.register("_candle_batch", pa.Table.from_pandas(frame[_VALUES], preserve_index=False))
    try:
        if before == 0:
            con.execute(insert, [market, unit])
            new = len(frame)
        else:
            con.execute(
                f"{insert} ON CONFLICT (market, unit, ts) DO UPDATE SET {_SET_VALUES}",
                [market, unit],
            )
            new = con.execute(in_range, bounds).fetchall()[0][0] - before
    finally:
        con.unregister("_candle_batch")
    _touch_series(con, market, unit)
    return int(new)


def _touch_series(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> None:
    con.execute(
        "INSERT INTO candle_series VALUES (?, ?, now())"
        " ON CONFLICT (market, unit) DO UPDATE SET updated_at = excluded.updated_at",
        [market, unit],
    )


def _series_where(
    market: str, unit: str, start: datetime | None, end: datetime | None
) -> tuple[list[str], list[object]]:
    """WHERE terms and parameters for one series with start <= ts < end."""
    where = ["market = ?", "unit = ?"]
    params: list[object] = [market, unit]
    if start is not None:
        where.append("ts >= ?")
        params.append(start)
    if end is not None:
        where.append("ts < ?")
        params.append(end)
    return where, params


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
    where, params = _series_where(market, unit, start, end)
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


def last_ts_by_market(
    con: duckdb.DuckDBPyConnection, markets: list[str], unit: str
) -> dict[str, pd.Timestamp]:
    """The newest stored candle of each of `markets` (those with any), in one query."""
    rows = con.execute(
        "SELECT market, max(ts) FROM candles WHERE unit = ? AND list_contains(?, market)"
        " GROUP BY market",
        [unit, markets],
    ).fetchall()
    return {str(m): pd.Timestamp(t).tz_convert("UTC") for m, t in rows}


def series_versions(
    con: duckdb.DuckDBPyConnection, markets: list[str], unit: str
) -> dict[str, datetime | None]:
    """A version of each of `markets`' candles of `unit`, in one primary-key read: when any of
    them was last written. Every writer of `candles` (upsert_candles, resample) stamps
    `candle_series` in the same statement or transaction (`_touch_series`), so a cache of
    anything computed from a series' candles is current exactly while this is unchanged.
    Markets without a series are absent. Every such write in this process also bumps
    `store.db.write_generation` once it is done, so the store's owner may keep these in
    memory while the generation is unchanged (engine.live.predictor does)."""
    rows = con.execute(
        "SELECT market, updated_at FROM candle_series WHERE unit = ? AND list_contains(?, market)",
        [unit, markets],
    ).fetchall()
    return {str(m): stamp for m, stamp in rows}


def last_candles(
    con: duckdb.DuckDBPyConnection,
    markets: list[str],
    unit: str,
    last: int,
    until: datetime | None = None,
) -> pd.DataFrame:
    """The newest `last` candles with ts <= `until` (all when None) of each of `markets`,
    grouped by market in the order of `markets`, ascending ts (a candle after `until` is never
    read); see `last_candle_arrays`."""
    found = last_candle_arrays(con, markets, unit, last, until)
    names = np.asarray(markets, dtype=object)
    frame = pd.DataFrame(
        {
            "market": names[found.pop("m")],
            "unit": unit,
            "ts": pd.to_datetime(found.pop("ts"), utc=True),
        }
    )
    for col in _VALUES[1:]:
        frame[col] = found[col]
    return frame


# How many bucket widths back `last_candle_arrays` first looks for `last` candles: a series
# with more missing buckets in that span than this leaves is read again without the bound.
_SPAN = 2


def last_candle_arrays(
    con: duckdb.DuckDBPyConnection,
    markets: list[str],
    unit: str,
    last: int,
    until: datetime | None = None,
) -> dict[str, np.ndarray]:
    """`last_candles` as numpy columns: `m` (the market's position in `markets`), `ts`
    (datetime64[us], UTC), open, high, low, close, volume, value (float64, NaN unknown),
    ordered by m and ts. Fast for many markets: a plain range read of the `_SPAN * last`
    buckets before `until` (before the newest candle of any of them when None; no window
    function over whole histories), then the newest `last` rows kept per market; only a
    series with too few candles in that span (gaps, a short or an older history) is read
    again with the exact per-market window."""
    if not markets:
        return _empty_arrays()
    width = pd.Timedelta(minutes=unit_minutes(unit) * _SPAN * max(int(last), 1))
    columns = "list_position(?, market) - 1 AS m, ts, open, high, low, close, volume, value"
    where = "unit = ? AND list_contains(?, market)" + (" AND ts <= ?" if until is not None else "")

    def of(names: list[str]) -> list[object]:  # the parameters of `where`
        return [unit, names] + ([until] if until is not None else [])

    anchor = until
    if anchor is None:  # the newest candle of any of them
        newest = f"SELECT max(ts) FROM candles WHERE {where}"
        anchor = con.execute(newest, of(markets)).fetchall()[0][0]
        if anchor is None:
            return _empty_arrays()
    bounded = _arrays(
        con.execute(
            f"SELECT {columns} FROM candles WHERE {where} AND ts > ? ORDER BY m, ts",
            [markets, *of(markets), _utc(anchor) - width],
        ).fetchnumpy()
    )
    counts = np.bincount(bounded["m"], minlength=len(markets))
    short = np.flatnonzero(counts < last)
    keep = _newest(bounded["m"], last)
    found = {k: v[keep] for k, v in bounded.items()}
    if len(short):  # gaps or a short history: the exact read for these few
        exact = _arrays(
            con.execute(
                f"SELECT * EXCLUDE (n) FROM (SELECT {columns}, row_number() OVER"
                f" (PARTITION BY market ORDER BY ts DESC) AS n FROM candles WHERE {where})"
                f" WHERE n <= {int(last)} ORDER BY m, ts",
                [markets, *of([markets[i] for i in short])],
            ).fetchnumpy()
        )
        ok = ~np.isin(found["m"], short)
        merged = {k: np.concatenate([found[k][ok], exact[k]]) for k in found}
        order = np.argsort(merged["m"], kind="stable")
        found = {k: v[order] for k, v in merged.items()}
    return found


def _arrays(fetched: dict[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "m": np.asarray(fetched["m"], dtype=np.int64),
        "ts": np.asarray(fetched["ts"], dtype="datetime64[us]"),
    }
    for col in _VALUES[1:]:
        out[col] = np.ma.filled(np.ma.asarray(fetched[col], dtype=np.float64), np.nan)
    return out


def _empty_arrays() -> dict[str, np.ndarray]:
    return {
        "m": np.empty(0, np.int64),
        "ts": np.empty(0, "datetime64[us]"),
        **{c: np.empty(0, np.float64) for c in _VALUES[1:]},
    }


def _newest(groups: np.ndarray, last: int) -> np.ndarray:
    """Rows among the newest `last` of their group (`groups` sorted, rows ascending in ts)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], n]
    group_end = np.repeat(ends, ends - starts)
    return np.arange(n) >= group_end - int(last)


# --------------------------------------------------------------------------- fetch coverage


def coverage(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> list[Range]:
    """Time ranges [start, end) of `market`/`unit` fetched completely from Upbit, ascending."""
    rows = con.execute(
        "SELECT start_ts, end_ts FROM candle_coverage WHERE market = ? AND unit = ?"
        " ORDER BY start_ts",
        [market, unit],
    ).fetchall()
    return [(_utc(s), _utc(e)) for s, e in rows]


def add_coverage(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
) -> None:
    """Record [start, end) as fetched completely, merged with ranges it overlaps or touches."""
    start, end = _utc(start), _utc(end)
    if start >= end:
        return
    key = [market, unit]
    touching = "market = ? AND unit = ? AND start_ts <= ? AND end_ts >= ?"
    rows = con.execute(
        f"SELECT min(start_ts), max(end_ts) FROM candle_coverage WHERE {touching}",
        [*key, end, start],
    ).fetchall()
    lo, hi = rows[0]
    if lo is not None:
        start, end = min(start, _utc(lo)), max(end, _utc(hi))
        con.execute(f"DELETE FROM candle_coverage WHERE {touching}", [*key, end, start])
    con.execute("INSERT INTO candle_coverage VALUES (?, ?, ?, ?, now())", [*key, start, end])


def missing_ranges(covered: list[Range], start: pd.Timestamp, end: pd.Timestamp) -> list[Range]:
    """The parts of [start, end) outside the ascending, disjoint `covered` ranges, ascending."""
    out: list[Range] = []
    cursor = start
    for lo, hi in covered:
        if hi <= cursor:
            continue
        if lo >= end:
            break
        if lo > cursor:
            out.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < end:
        out.append((cursor, end))
    return out


def store_fetched(
    con: duckdb.DuckDBPyConnection,
    frame: pd.DataFrame,
    market: str,
    unit: str,
    covered: Range | None,
) -> int:
    """Upsert one fetched page and record the range it covers completely, in one transaction.

    Returns how many candles were new. Either both land or neither, so a fetch killed at any
    moment resumes exactly after the last page it stored.
    """
    with transaction(con):
        new = upsert_candles(con, frame) if len(frame) else 0
        if covered is not None:
            add_coverage(con, market, unit, *covered)
    return new


# --------------------------------------------------------------------------- derived series


def resample(
    con: duckdb.DuckDBPyConnection,
    market: str,
    from_unit: str,
    to_unit: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[int, int]:
    """Aggregate stored `from_unit` candles into `to_unit` buckets in SQL; (written, new).

    Buckets are aligned on UTC like Upbit's (a day starts 00:00 UTC = 09:00 KST, 240 minutes
    at 00:00, 04:00, ... UTC); only buckets with candles exist, as at Upbit. open is the
    first open, close the last close, high/low the extremes, volume and value the sums
    (value NULL when any part lacks it; a NULL keeps a stored value). `start`/`end` widen to
    whole `to_unit` buckets.
    """
    width = unit_minutes(to_unit)
    bucket = f"time_bucket(to_minutes(CAST({width} AS BIGINT)), ts, {_EPOCH})"
    where = ["market = ?", "unit = ?"]
    params: list[object] = [market, from_unit]
    step = pd.Timedelta(minutes=width)
    if start is not None:
        where.append("ts >= ?")
        params.append(_floor(_utc(start), step))
    if end is not None:
        where.append("ts < ?")
        params.append(_ceil(_utc(end), step))
    select = (
        f"SELECT market, '{to_unit}' AS unit, {bucket} AS ts, arg_min(open, ts) AS open,"
        " max(high) AS high, min(low) AS low, arg_max(close, ts) AS close,"
        " sum(volume) AS volume,"
        " CASE WHEN count(value) = count(*) THEN sum(value) END AS value"
        f" FROM candles WHERE {' AND '.join(where)} GROUP BY market, {bucket}"
    )
    with transaction(con):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _resampled AS {select}", params)
        poisoned = con.execute(
            "SELECT count(*) FROM _resampled WHERE NOT (isfinite(open) AND isfinite(high)"
            " AND isfinite(low) AND isfinite(close) AND isfinite(volume)) OR isinf(value)"
        ).fetchall()[0][0]
        if poisoned:  # only a store written before the finite-numbers guard holds such parts
            raise ValueError(
                f"refusing to store {poisoned:,} resampled {market} unit {to_unit} candles with"
                f" non-finite numbers: the stored unit {from_unit} candles hold NaN or infinite"
                " prices; delete or re-import those candles first"
            )
        written, new = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE c.ts IS NULL) FROM _resampled r"
            " LEFT JOIN candles c USING (market, unit, ts)"
        ).fetchall()[0]
        con.execute(
            f"INSERT INTO candles SELECT * FROM _resampled"
            f" ON CONFLICT (market, unit, ts) DO UPDATE SET {_SET_VALUES}"
        )
        con.execute("DROP TABLE _resampled")
        if written:
            _touch_series(con, market, to_unit)
    return int(written), int(new)


def _floor(stamp: pd.Timestamp, step: pd.Timedelta) -> pd.Timestamp:
    epoch = pd.Timestamp(0, tz="UTC")
    return epoch + (stamp - epoch) // step * step


def _ceil(stamp: pd.Timestamp, step: pd.Timedelta) -> pd.Timestamp:
    floor = _floor(stamp, step)
    return floor if floor == stamp else floor + step


def export_candles(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    path: Path,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """Write one series to CSV or Parquet (by suffix) as `timestamp,open,...,value`; rows.

    The columns are those of ../shared/data plus `value`; CSV timestamps are UTC without a
    zone suffix, Parquet holds them as UTC-adjusted timestamps. `upquant data import` reads
    both back unchanged.
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: export writes .csv or .parquet, not {suffix or 'no suffix'!r}")
    where, params = _series_where(market, unit, start, end)
    stamp = "strftime(timezone('UTC', ts), '%Y-%m-%d %H:%M:%S')" if suffix == ".csv" else "ts"
    select = (
        f"SELECT {stamp} AS timestamp, open, high, low, close, volume, value FROM candles"
        f" WHERE {' AND '.join(where)} ORDER BY ts"
    )
    options = "FORMAT csv, HEADER" if suffix == ".csv" else "FORMAT parquet"
    target = str(path).replace("'", "''")
    rows = con.execute(f"COPY ({select}) TO '{target}' ({options})", params).fetchall()
    return int(rows[0][0]) if rows else 0


# --------------------------------------------------------------------------- status


def candle_status(con: duckdb.DuckDBPyConnection, *, min_gap: int = 2) -> pd.DataFrame:
    """One row per (market, unit): rows, first and last candle, gaps, last update.

    A gap is a run of consecutive missing buckets between two stored candles. Upbit has no
    candle for a bucket without trades, so short runs are normal on quiet markets: `gaps`
    counts runs of at least `min_gap` buckets, `missing` counts every missing bucket,
    `longest_gap` is the longest run (buckets) and `longest_gap_start` its first bucket.
    `last_update` is when a candle of the series was last written (NULL before migration 2).
    """
    frame = con.execute(
        """
        WITH w AS (
            SELECT market, unit, ts,
                CASE WHEN unit = 'D' THEN 1440 ELSE TRY_CAST(unit AS BIGINT) END AS width, -- unit_minutes
                lag(ts) OVER (PARTITION BY market, unit ORDER BY ts) AS prev
            FROM candles
        ), r AS (
            SELECT *, CASE WHEN prev IS NULL THEN 0
                ELSE (epoch_us(ts) - epoch_us(prev)) // (width * 60000000) - 1 END AS run
            FROM w
        )
        SELECT r.market, r.unit, count(*) AS rows, min(ts) AS first, max(ts) AS last,
            CAST(sum(run) AS BIGINT) AS missing,
            count(*) FILTER (WHERE run >= ?) AS gaps,
            CAST(max(run) AS BIGINT) AS longest_gap,
            CASE WHEN max(run) > 0 THEN arg_max(prev, run) + to_minutes(any_value(width))
            END AS longest_gap_start,
            any_value(s.updated_at) AS last_update
        FROM r LEFT JOIN candle_series s USING (market, unit)
        GROUP BY r.market, r.unit ORDER BY r.market, r.unit
        """,
        [max(1, int(min_gap))],
    ).df()
    for col in ("first", "last", "longest_gap_start", "last_update"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame
