"""A paper broker kept in the store: save what changed, load it back after a restart.

The engine keeps one account per mode ("live", "replay"; a replay starts from a fresh
"replay" book, demo is never stored). The broker itself (engine/trading/paper.py) knows
nothing of the store; the store (store/paper.py) knows nothing of the broker: this module
turns one into the other's rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import duckdb
import pandas as pd

from engine.trading.paper import RECENT, Book, BrokerConfig, Fill, Order, PaperBroker, Position
from store.paper import (
    FILL_COLUMNS,
    ORDER_COLUMNS,
    POSITION_COLUMNS,
    delete_paper,
    read_paper,
    write_paper,
)

ACCOUNTS = ("live", "replay")


def save_book(
    con: duckdb.DuckDBPyConnection,
    account: str,
    broker: PaperBroker,
    *,
    own_transaction: bool = True,
) -> None:
    """Write what changed in `broker` since its last save (orders, fills, the positions of
    the markets it touched, cash), in one transaction (the caller's with
    `own_transaction=False`); the live engine calls it once per pass of many markets.
    Nothing is written when nothing changed. The broker forgets what was written only once
    it is committed: after a failed save the next one writes it again; in the caller's
    transaction, the caller calls `broker.take_journal()` after its commit."""
    journal = broker.journal
    if not (journal.orders or journal.fills or journal.markets):
        return
    orders = _frame(list(journal.orders.values()), ORDER_COLUMNS)
    orders["max_position"] = orders["max_position"].astype("float64")
    positions = [broker.positions[m] for m in sorted(journal.markets) if m in broker.positions]
    write_paper(
        con,
        account,
        config=dataclasses.asdict(broker.config),
        cash=broker.cash,
        realised_pnl=broker.realised_pnl,
        orders=orders,
        fills=_frame(journal.fills, FILL_COLUMNS),
        positions=_frame(positions, POSITION_COLUMNS),
        markets=sorted(journal.markets),
        own_transaction=own_transaction,
    )
    if own_transaction:
        broker.take_journal()


def load_book(
    con: duckdb.DuckDBPyConnection, account: str, config: BrokerConfig | None = None
) -> PaperBroker:
    """The stored account as a broker that continues where it stopped (cash, positions,
    pending orders, order and fill numbers), or a fresh one when none is stored.

    The account keeps its own initial cash (its PnL is measured from it); fee, slippage,
    minimum order and tick are `config`'s, today's settings (the stored ones when None).
    """
    rows = read_paper(con, account, recent=RECENT)
    if rows is None:
        return PaperBroker(config or BrokerConfig())
    stored = BrokerConfig(**rows.config)
    config = dataclasses.replace(config or stored, initial_cash=stored.initial_cash)
    orders = [_order(r) for r in rows.orders.to_dict("records")]
    pending = {o.market: o for o in (_order(r) for r in rows.pending.to_dict("records"))}
    positions = {
        str(r["market"]): Position(**_plain(r, POSITION_COLUMNS))
        for r in rows.positions.to_dict("records")
    }
    fills = [Fill(**_plain(r, FILL_COLUMNS)) for r in rows.fills.to_dict("records")]
    book = Book(
        cash=rows.cash,
        equity=rows.cash + sum(p.value for p in positions.values()),
        realised_pnl=rows.realised_pnl,
        unrealised_pnl=sum(p.unrealised_pnl for p in positions.values()),
        positions=positions,
        pending=pending,
        recent_fills=fills,
        recent_orders=orders,
        initial_cash=stored.initial_cash,
    )
    return PaperBroker(config, book=book)


def reset_book(con: duckdb.DuckDBPyConnection, account: str) -> None:
    """Forget `account` (a replay starts from a fresh book this way)."""
    delete_paper(con, account)


def _frame(items: list[Any], columns: list[str]) -> pd.DataFrame:
    """The `columns` attributes of `items` as a frame (column by column: no deep copies)."""
    return pd.DataFrame({col: [getattr(item, col) for item in items] for col in columns})


def _plain(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """A stored row's values as the broker holds them (Timestamps, None for null)."""
    out: dict[str, Any] = {}
    for col in columns:
        value = row[col]
        if isinstance(value, float) and math.isnan(value) or value is pd.NaT:
            value = None
        elif isinstance(value, int | float) and col not in ("id", "order_id"):
            value = float(value)
        elif col in ("id", "order_id"):
            value = int(value)
        out[col] = value
    return out


def _order(row: dict[str, Any]) -> Order:
    return Order(**_plain(row, ORDER_COLUMNS))
