"""Rows of the model registry (`models`, `metrics`, `training_runs`) and champion lookup."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    version: int
    kind: str
    market: str
    unit: str
    feature_spec: dict[str, Any]
    feature_spec_hash: str
    label_spec: dict[str, Any]
    params: dict[str, Any]
    artifact: str
    sha256: str
    size: int
    status: str
    created_at: datetime
    parent_id: int | None
    tags: dict[str, Any] | None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


_COLUMNS = (
    "id, name, version, kind, market, unit, feature_spec, feature_spec_hash, label_spec, params,"
    " artifact, sha256, size, status, created_at, parent_id, tags"
)


def _record(row: tuple) -> ModelRecord:
    values = list(row)
    for i in (6, 8, 9, 16):
        values[i] = json.loads(values[i]) if values[i] is not None else None
    return ModelRecord(*values)


def register_model(
    con: duckdb.DuckDBPyConnection,
    *,
    name: str,
    kind: str,
    market: str,
    unit: str,
    feature_spec: dict[str, Any],
    feature_spec_hash: str,
    label_spec: dict[str, Any],
    params: dict[str, Any],
    artifact: str,
    sha256: str,
    size: int,
    status: str,
    metrics: dict[str, dict[str, float]],
    tags: dict[str, Any] | None = None,
) -> ModelRecord:
    """Insert a model row with the next version of `name` and its metrics, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        version = con.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM models WHERE name = ?", [name]
        ).fetchall()[0][0]
        row = con.execute(
            f"INSERT INTO models ({_COLUMNS.replace('id, ', '', 1)}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [
                name, version, kind, market, unit, json.dumps(feature_spec), feature_spec_hash,
                json.dumps(label_spec), json.dumps(params), artifact, sha256, size, status,
                datetime.now(UTC), None, json.dumps(tags) if tags is not None else None,
            ],
        ).fetchall()
        model_id = row[0][0]
        metric_rows = [
            (model_id, split, metric, float(value), None)
            for split, named in metrics.items()
            for metric, value in named.items()
        ]
        if metric_rows:
            con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", metric_rows)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return get_model(con, model_id)


def get_model(con: duckdb.DuckDBPyConnection, ref: int | str) -> ModelRecord:
    """Look a model up by id, `name` (newest version) or `name@version`; KeyError if absent."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        rows = con.execute(f"SELECT {_COLUMNS} FROM models WHERE id = ?", [int(ref)]).fetchall()
    elif "@" in ref:
        name, version = ref.rsplit("@", 1)
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM models WHERE name = ? AND version = ?", [name, int(version)]
        ).fetchall()
    else:
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM models WHERE name = ? ORDER BY version DESC LIMIT 1", [ref]
        ).fetchall()
    if not rows:
        raise KeyError(f"no model {ref!r} in the registry (see `upquant models list`)")
    return _record(rows[0])


def list_models(
    con: duckdb.DuckDBPyConnection, market: str | None = None, unit: str | None = None
) -> list[ModelRecord]:
    where, params = [], []
    if market:
        where.append("market = ?")
        params.append(market)
    if unit:
        where.append("unit = ?")
        params.append(unit)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = con.execute(f"SELECT {_COLUMNS} FROM models {clause} ORDER BY id", params).fetchall()
    return [_record(r) for r in rows]


def champion(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> ModelRecord | None:
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM models WHERE market = ? AND unit = ? AND status = 'champion'"
        " ORDER BY id DESC LIMIT 1",
        [market, unit],
    ).fetchall()
    return _record(rows[0]) if rows else None


def set_champion(con: duckdb.DuckDBPyConnection, model_id: int) -> None:
    """Make `model_id` the champion of its market/unit; the previous champion becomes `retired`."""
    record = get_model(con, model_id)
    con.execute("BEGIN TRANSACTION")
    con.execute(
        "UPDATE models SET status = 'retired' WHERE market = ? AND unit = ? AND status = 'champion'",
        [record.market, record.unit],
    )
    con.execute("UPDATE models SET status = 'champion' WHERE id = ?", [model_id])
    con.execute("COMMIT")


def model_metrics(con: duckdb.DuckDBPyConnection, model_id: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for split, name, value in con.execute(
        "SELECT split, name, value FROM metrics WHERE model_id = ? ORDER BY split, name", [model_id]
    ).fetchall():
        out.setdefault(split, {})[name] = value
    return out
