"""The paper broker: a KRW account that fills the live engine's signals on paper.

It follows the vectorised backtest's convention (engine/trading/backtest.py) candle by
candle, so a replay through the live engine and `backtest` agree to rounding:
- `order(market, ts, action, max_position)` at a candle's close: a buy while flat or a sell
  while long becomes an order for the next candle's open; anything else is no order.
- `on_candle(market, ts, open, close)` at the next candle: the pending order fills at
  `open` (a buy at `open * (1 + slippage)` rounded up to Upbit's tick, a sell at
  `open * (1 - slippage)` rounded down), then the position is marked to `close`.
- A buy spends `min(max_position, cash)` at the fill (None: all cash) and keeps `1 - fee`
  of it as units; a sell sells all units and keeps `1 - fee` of the proceeds.
- Upbit's minimum order: a buy spending less than `min_order` KRW, or a sell whose units are
  worth less at the fill price, is rejected; the order records why and the position stays.
Long/flat per market, one KRW cash for all markets (fills of one pass spend it in the order
`on_candle` is called). Nothing here talks to Upbit: no client is imported, no order leaves
the process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from engine.trading.backtest import DEFAULT_FEE
from engine.trading.ticks import round_to_tick

UPBIT_MIN_ORDER = 5_000.0  # KRW, per order, both sides
RECENT = 200  # fills and orders a book keeps in memory for display

Side = Literal["buy", "sell"]
Status = Literal["pending", "filled", "rejected"]


@dataclass(frozen=True)
class BrokerConfig:
    """How the paper account trades: start cash, fee per side, slippage, Upbit's rules."""

    initial_cash: float = 1_000_000.0
    fee: float = DEFAULT_FEE
    slippage_bps: float = 0.0
    min_order: float = UPBIT_MIN_ORDER
    tick: bool = True  # round fill prices to Upbit's price tick

    def __post_init__(self) -> None:
        if not (np.isfinite(self.initial_cash) and self.initial_cash > 0):
            raise ValueError(f"initial cash is KRW above 0; got {self.initial_cash}")
        if not 0.0 <= self.fee < 1.0:
            raise ValueError(f"fee is a fraction per side, 0 <= fee < 1; got {self.fee}")
        if not 0.0 <= self.slippage_bps < 10_000.0:
            raise ValueError(
                f"slippage is in basis points, 0 <= it < 10000; got {self.slippage_bps}"
            )
        if not self.min_order >= 0.0:
            raise ValueError(f"the minimum order is KRW >= 0; got {self.min_order}")


@dataclass
class Order:
    """An order decided at a close (`ts`) for the next open; `reason` says why it was
    rejected. `fill_ts` is the candle whose open filled or rejected it."""

    id: int
    market: str
    ts: pd.Timestamp
    side: Side
    max_position: float | None = None  # a buy's cap in KRW (None: all cash)
    status: Status = "pending"
    reason: str | None = None
    fill_ts: pd.Timestamp | None = None


@dataclass(frozen=True)
class Fill:
    """An order filled at a candle's open: `value` is units * price, `fee` the KRW fee paid,
    `cash` the account's cash after it."""

    id: int
    order_id: int
    market: str
    ts: pd.Timestamp
    side: Side
    price: float
    units: float
    value: float
    fee: float
    cash: float


@dataclass
class Position:
    """A long position: units bought at `entry_price` (`cost` KRW spent, fee included),
    marked to `last_price` (the newest close seen)."""

    market: str
    units: float
    entry_price: float
    entry_ts: pd.Timestamp
    cost: float
    last_price: float
    last_ts: pd.Timestamp

    @property
    def value(self) -> float:
        return self.units * self.last_price

    @property
    def unrealised_pnl(self) -> float:
        """Marked value less what was paid (no exit fee: equity is marked the same way)."""
        return self.value - self.cost


@dataclass(frozen=True)
class Book:
    """A snapshot of the account: what `upquant paper` shows."""

    cash: float
    equity: float
    realised_pnl: float
    unrealised_pnl: float
    positions: dict[str, Position]
    pending: dict[str, Order]
    recent_fills: list[Fill]
    recent_orders: list[Order]
    initial_cash: float


@dataclass
class _Journal:
    """What changed since the last save: the store writes only this."""

    orders: dict[int, Order] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    markets: set[str] = field(default_factory=set)  # positions opened, closed or marked


class PaperBroker:
    """A paper account: cash, long positions per market, pending orders (see the module)."""

    def __init__(self, config: BrokerConfig | None = None, book: Book | None = None) -> None:
        self.config = config or BrokerConfig()
        self.cash = self.config.initial_cash
        self.realised_pnl = 0.0
        self.positions: dict[str, Position] = {}
        self.pending: dict[str, Order] = {}
        self.recent_fills: deque[Fill] = deque(maxlen=RECENT)
        self.recent_orders: deque[Order] = deque(maxlen=RECENT)
        self.next_order_id = 1
        self.next_fill_id = 1
        self.journal = _Journal()
        if book is not None:
            self._resume(book)

    def _resume(self, book: Book) -> None:
        """Continue from a saved book (store.paper.load_book): nothing of it is unsaved."""
        self.cash, self.realised_pnl = book.cash, book.realised_pnl
        self.positions = {m: replace(p) for m, p in book.positions.items()}
        orders = {o.id: replace(o) for o in book.recent_orders}
        self.pending = {m: orders.get(o.id) or replace(o) for m, o in book.pending.items()}
        self.recent_fills.extend(book.recent_fills)
        self.recent_orders.extend(orders.values())
        order_ids = [o.id for o in [*book.recent_orders, *book.pending.values()]]
        self.next_order_id = max(order_ids, default=0) + 1
        self.next_fill_id = max((f.id for f in book.recent_fills), default=0) + 1

    # --- the two calls of a candle -------------------------------------------------------
    def on_candle(self, market: str, ts: pd.Timestamp, open: float, close: float) -> list[Fill]:
        """Candle `ts` of `market`: fill its pending order at `open`, then mark to `close`."""
        if not (np.isfinite(open) and np.isfinite(close) and open > 0 and close > 0):
            raise ValueError(f"{market} candle {ts}: open {open} / close {close} must be > 0")
        done: list[Fill] = []
        order = self.pending.pop(market, None)
        if order is not None:
            fill = self._fill(order, ts, open)
            if fill is not None:
                done.append(fill)
        position = self.positions.get(market)
        if position is not None:
            position.last_price, position.last_ts = close, ts
            self.journal.markets.add(market)
        return done

    def order(
        self,
        market: str,
        ts: pd.Timestamp,
        action: str,
        max_position: float | None = None,
    ) -> Order | None:
        """At candle `ts`'s close: a buy while flat or a sell while long becomes an order
        for the next open (returned); hold, a buy while long, a sell while flat, or any
        action while an order of `market` is pending is no order (None)."""
        if action not in ("buy", "sell", "hold"):
            raise ValueError(f"action must be 'buy', 'sell' or 'hold'; got {action!r}")
        if max_position is not None and not max_position > 0:
            raise ValueError(f"max_position is KRW above 0 or None; got {max_position}")
        if action == "hold" or market in self.pending:
            return None
        long = market in self.positions
        if (action == "buy") == long:
            return None
        order = Order(self.next_order_id, market, ts, action, max_position)  # type: ignore[arg-type]
        self.next_order_id += 1
        self.pending[market] = order
        self.recent_orders.append(order)
        self.journal.orders[order.id] = order
        return order

    # --- fills ---------------------------------------------------------------------------
    def _fill(self, order: Order, ts: pd.Timestamp, open: float) -> Fill | None:
        cfg = self.config
        slip, keep = cfg.slippage_bps / 10_000.0, 1.0 - cfg.fee
        order.fill_ts = ts
        self.journal.orders[order.id] = order
        if order.side == "buy":
            price = open * (1.0 + slip)
            if cfg.tick:
                price = float(round_to_tick(price, up=True))
            spend = self.cash if order.max_position is None else min(order.max_position, self.cash)
            if spend < cfg.min_order:
                self._reject(
                    order, f"buy of {spend:,.0f} KRW is below the {cfg.min_order:,.0f} KRW minimum"
                )
                return None
            units = spend * keep / price
            self.cash -= spend
            self.positions[order.market] = Position(order.market, units, price, ts, spend, open, ts)
            value, fee = units * price, spend - units * price
        else:
            position = self.positions[order.market]
            price = open * (1.0 - slip)
            if cfg.tick:
                price = float(round_to_tick(price, up=False))
            units = position.units
            value = units * price
            if value < cfg.min_order:
                self._reject(
                    order,
                    f"sell of {value:,.0f} KRW is below the {cfg.min_order:,.0f} KRW minimum;"
                    " the position stays open",
                )
                return None
            proceeds = value * keep
            fee = value - proceeds
            self.cash += proceeds
            self.realised_pnl += proceeds - position.cost
            del self.positions[order.market]
        order.status = "filled"
        fill = Fill(
            self.next_fill_id, order.id, order.market, ts, order.side, price, units, value,
            fee, self.cash,
        )  # fmt: skip
        self.next_fill_id += 1
        self.recent_fills.append(fill)
        self.journal.fills.append(fill)
        self.journal.markets.add(order.market)
        return fill

    def _reject(self, order: Order, reason: str) -> None:
        order.status, order.reason = "rejected", reason

    # --- the account ---------------------------------------------------------------------
    @property
    def equity(self) -> float:
        """Cash plus every position marked to its newest close."""
        return self.cash + sum(p.value for p in self.positions.values())

    def book(self) -> Book:
        """A snapshot of the account (copies: later candles do not change it)."""
        return Book(
            cash=self.cash,
            equity=self.equity,
            realised_pnl=self.realised_pnl,
            unrealised_pnl=sum(p.unrealised_pnl for p in self.positions.values()),
            positions={m: replace(p) for m, p in self.positions.items()},
            pending={m: replace(o) for m, o in self.pending.items()},
            recent_fills=list(self.recent_fills),
            recent_orders=[replace(o) for o in self.recent_orders],
            initial_cash=self.config.initial_cash,
        )

    def take_journal(self) -> _Journal:
        """What changed since the last call (store.paper.save_book writes it), and a fresh
        journal from now on."""
        journal, self.journal = self.journal, _Journal()
        return journal
