"""The drift tables: performance drift events (`drift_events`, migration 011) and per-feature
drift against a model's training reference (`drift`, PSI and KS, display only).

Plain rows in and out; what they mean and how they are computed is `engine.ops.monitor`'s.
Reads answer newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from store.db import bump_writes


@dataclass(frozen=True)
class StoredDriftEvent:
    """One row of `drift_events`."""

    id: int
    ts: datetime  # the candle whose resolved outcome raised it
    detected_at: datetime
    market: str
    unit: str
    model_id: int
    stream: str  # correctness or pnl
    detector: str  # adwin or page-hinkley
    before_mean: float | None
    after_mean: float | None
    observations: int | None
    action: str | None
    detail: str | None


@dataclass(frozen=True)
class StoredFeatureDrift:
    """One row of `drift`: a feature's PSI and KS statistic for the recent candles up to `ts`."""

    ts: datetime  # the newest candle compared
    model_id: int
    feature: str
    psi: float | None
    ks: float | None


_EVENT_COLUMNS = (
    "id, ts, detected_at, market, unit, model_id, stream, detector, before_mean, after_mean,"
    " observations, action, detail"
)


def insert_drift_event(
    con: duckdb.DuckDBPyConnection,
    *,
    ts: datetime,
    market: str,
    unit: str,
    model_id: int,
    stream: str,
    detector: str,
    before_mean: float | None = None,
    after_mean: float | None = None,
    observations: int | None = None,
    action: str | None = None,
    detail: str | None = None,
) -> int:
    """Append one drift event; its id."""
    if stream not in ("correctness", "pnl"):
        raise ValueError(f"a drift event's stream is correctness or pnl, got {stream!r}")
    if detector not in ("adwin", "page-hinkley"):
        raise ValueError(f"a drift event's detector is adwin or page-hinkley, got {detector!r}")
    row = con.execute(
        "INSERT INTO drift_events (ts, market, unit, model_id, stream, detector, before_mean,"
        " after_mean, observations, action, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        [
            ts,
            market,
            unit,
            int(model_id),
            stream,
            detector,
            before_mean,
            after_mean,
            observations,
            action,
            detail,
        ],
    ).fetchone()
    bump_writes()
    assert row is not None
    return int(row[0])


def set_drift_event_action(con: duckdb.DuckDBPyConnection, event_id: int, action: str) -> None:
    """Say what followed an event (e.g. `retrain started (run 12)`), once it is known."""
    con.execute("UPDATE drift_events SET action = ? WHERE id = ?", [action, int(event_id)])
    bump_writes()


def drift_events(
    con: duckdb.DuckDBPyConnection,
    *,
    market: str | None = None,
    unit: str | None = None,
    model_id: int | None = None,
    limit: int | None = None,
) -> list[StoredDriftEvent]:
    """Drift events of market/unit and/or one model, newest first (at most `limit`)."""
    where, params = _where(market=market, unit=unit, model_id=model_id)
    rows = con.execute(
        f"SELECT {_EVENT_COLUMNS} FROM drift_events {where} ORDER BY ts DESC, id DESC LIMIT ?",
        [*params, limit if limit is not None else 2**62],
    ).fetchall()
    return [StoredDriftEvent(*row) for row in rows]


def insert_feature_drift(
    con: duckdb.DuckDBPyConnection,
    ts: datetime,
    model_id: int,
    rows: list[tuple[str, float | None, float | None]],
) -> None:
    """Record (feature, psi, ks) of model `model_id` for the candles up to `ts`; rows recorded
    before for the same model and ts are replaced (computing twice keeps one set)."""
    con.execute("DELETE FROM drift WHERE model_id = ? AND ts = ?", [int(model_id), ts])
    if rows:
        con.executemany(
            "INSERT INTO drift (ts, model_id, feature, psi, ks) VALUES (?, ?, ?, ?, ?)",
            [[ts, int(model_id), feature, psi, ks] for feature, psi, ks in rows],
        )
    bump_writes()


def feature_drift(
    con: duckdb.DuckDBPyConnection,
    *,
    model_id: int | None = None,
    market: str | None = None,
    unit: str | None = None,
    limit: int | None = None,
) -> list[StoredFeatureDrift]:
    """Recorded feature drift of one model and/or the models of market/unit, newest first
    (then by model and feature), at most `limit` rows."""
    where, params = _where(market=market, unit=unit, model_id=model_id, prefix="m.")
    rows = con.execute(
        "SELECT d.ts, d.model_id, d.feature, d.psi, d.ks FROM drift d"
        f" JOIN models m ON m.id = d.model_id {where}"
        " ORDER BY d.ts DESC, d.model_id, d.feature LIMIT ?",
        [*params, limit if limit is not None else 2**62],
    ).fetchall()
    return [StoredFeatureDrift(*row) for row in rows]


def latest_feature_drift(
    con: duckdb.DuckDBPyConnection,
    *,
    model_id: int | None = None,
    market: str | None = None,
    unit: str | None = None,
) -> dict[int, list[StoredFeatureDrift]]:
    """The newest recorded feature drift of each model (of market/unit, or one model): its
    rows at its newest ts, by feature, keyed by model id."""
    where, params = _where(market=market, unit=unit, model_id=model_id, prefix="m.")
    rows = con.execute(
        "SELECT d.ts, d.model_id, d.feature, d.psi, d.ks FROM drift d"
        f" JOIN models m ON m.id = d.model_id {where}"
        " QUALIFY d.ts = max(d.ts) OVER (PARTITION BY d.model_id)"
        " ORDER BY d.model_id, d.feature",
        params,
    ).fetchall()
    out: dict[int, list[StoredFeatureDrift]] = {}
    for row in rows:
        out.setdefault(int(row[1]), []).append(StoredFeatureDrift(*row))
    return out


def _where(
    *,
    market: str | None,
    unit: str | None,
    model_id: int | None,
    prefix: str = "",
) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (("market", market), ("unit", unit)):
        if value is not None:
            clauses.append(f"{prefix}{column} = ?")
            params.append(value)
    if model_id is not None:
        clauses.append(f"{prefix}id = ?" if prefix else "model_id = ?")
        params.append(int(model_id))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
