"""The `ops_settings` table: per market/unit model-operation settings, stored as JSON.

The store keeps plain dicts; `engine.ops.settings.OpsSettings` is what they mean (its
defaults fill what a row leaves out, and a market/unit without a row has the defaults).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb


def read_settings(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> dict[str, Any]:
    """The stored settings of market/unit ({} when none were set)."""
    row = con.execute(
        "SELECT settings FROM ops_settings WHERE market = ? AND unit = ?", [market, unit]
    ).fetchone()
    return {} if row is None else dict(json.loads(row[0]))


def write_settings(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, settings: dict[str, Any]
) -> None:
    """Replace the settings of market/unit."""
    con.execute(
        "INSERT INTO ops_settings (market, unit, settings, updated_at) VALUES (?, ?, ?, now())"
        " ON CONFLICT (market, unit) DO UPDATE SET settings = excluded.settings,"
        " updated_at = excluded.updated_at",
        [market, unit, json.dumps(settings, sort_keys=True)],
    )


def all_settings(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, Any]]:
    """Every stored market/unit's settings (the retraining scheduler reads them all)."""
    rows = con.execute("SELECT market, unit, settings FROM ops_settings").fetchall()
    return {(m, u): dict(json.loads(s)) for m, u, s in rows}
