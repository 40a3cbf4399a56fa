"""The paper broker's tables: accounts, orders, fills and open positions (migration 013).

Plain rows in and out: `engine.trading.paper_book` turns a `PaperBroker` into them and back
(the store never imports the engine). A save writes only what changed, in one transaction,
so a killed process keeps the account as it was at the previous save or at this one.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from store.db import transaction

ORDER_COLUMNS = ["id", "market", "ts", "side", "max_position", "status", "reason", "fill_ts"]
FILL_COLUMNS = ["id", "order_id", "market", "ts", "side", "price", "units", "value", "fee", "cash"]
POSITION_COLUMNS = [
    "market",
    "units",
    "entry_price",
    "entry_ts",
    "cost",
    "last_price",
    "last_ts",
]
TIME_COLUMNS = ("ts", "fill_ts", "entry_ts", "last_ts")


@dataclass(frozen=True)
class PaperRows:
    """One stored account: its row, open positions, pending orders, and the newest orders
    and fills (ascending id)."""

    config: dict[str, Any]
    cash: float
    realised_pnl: float
    positions: pd.DataFrame
    pending: pd.DataFrame
    orders: pd.DataFrame
    fills: pd.DataFrame
    updated_at: pd.Timestamp


def write_paper(
    con: duckdb.DuckDBPyConnection,
    account: str,
    *,
    config: dict[str, Any],
    cash: float,
    realised_pnl: float,
    orders: pd.DataFrame,
    fills: pd.DataFrame,
    positions: pd.DataFrame,
    markets: list[str],
    own_transaction: bool = True,
) -> None:
    """Save an account's changes: its cash, the orders given (new or changed: replaced by
    id), the new fills, and the positions of `markets` (those in `positions` are open, the
    others are flat now). In a transaction of its own, or with `own_transaction=False` in
    the caller's (a live pass that writes its signals and its paper book together)."""
    with transaction(con) if own_transaction else nullcontext():
        con.execute(
            "INSERT INTO paper_accounts (account, config, cash, realised_pnl) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (account) DO UPDATE SET config = excluded.config, cash = excluded.cash,"
            " realised_pnl = excluded.realised_pnl, updated_at = now()",
            [account, json.dumps(config, sort_keys=True), cash, realised_pnl],
        )
        _insert(con, "INSERT OR REPLACE INTO paper_orders", account, orders, ORDER_COLUMNS)
        _insert(con, "INSERT INTO paper_fills", account, fills, FILL_COLUMNS)
        if markets:
            con.execute(
                "DELETE FROM paper_positions WHERE account = ? AND list_contains(?, market)",
                [account, markets],
            )
            _insert(con, "INSERT INTO paper_positions", account, positions, POSITION_COLUMNS)


def _insert(
    con: duckdb.DuckDBPyConnection,
    statement: str,
    account: str,
    frame: pd.DataFrame,
    columns: list[str],
) -> None:
    if frame.empty:
        return
    names = ", ".join(columns)
    con.register("_paper_batch", frame[columns])
    try:
        con.execute(
            f"{statement} (account, {names}) SELECT ?, {names} FROM _paper_batch", [account]
        )
    finally:
        con.unregister("_paper_batch")


def read_paper(
    con: duckdb.DuckDBPyConnection, account: str, *, recent: int = 200
) -> PaperRows | None:
    """The stored account (None when it has never been saved), with its `recent` newest
    orders and fills."""
    row = con.execute(
        "SELECT config, cash, realised_pnl, updated_at FROM paper_accounts WHERE account = ?",
        [account],
    ).fetchone()
    if row is None:
        return None

    def frame(sql: str, columns: list[str]) -> pd.DataFrame:
        found = con.execute(sql, [account]).df()
        for col in TIME_COLUMNS:
            if col in found:
                found[col] = pd.to_datetime(found[col], utc=True)
        return found[columns]

    newest = f"ORDER BY id DESC LIMIT {int(recent)}) ORDER BY id"
    return PaperRows(
        config=dict(json.loads(row[0])),
        cash=float(row[1]),
        realised_pnl=float(row[2]),
        positions=frame(
            "SELECT * FROM paper_positions WHERE account = ? ORDER BY market", POSITION_COLUMNS
        ),
        pending=frame(
            "SELECT * FROM paper_orders WHERE account = ? AND status = 'pending' ORDER BY id",
            ORDER_COLUMNS,
        ),
        orders=frame(
            f"SELECT * FROM (SELECT * FROM paper_orders WHERE account = ? {newest}", ORDER_COLUMNS
        ),
        fills=frame(
            f"SELECT * FROM (SELECT * FROM paper_fills WHERE account = ? {newest}", FILL_COLUMNS
        ),
        updated_at=pd.Timestamp(row[3]),
    )


def delete_paper(con: duckdb.DuckDBPyConnection, account: str) -> None:
    """Forget an account: its row, orders, fills and positions (the next save starts it
    afresh)."""
    with transaction(con):
        for table in ("paper_accounts", "paper_orders", "paper_fills", "paper_positions"):
            con.execute(f"DELETE FROM {table} WHERE account = ?", [account])


def paper_accounts(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The names of the stored accounts."""
    return [
        r[0] for r in con.execute("SELECT account FROM paper_accounts ORDER BY account").fetchall()
    ]
