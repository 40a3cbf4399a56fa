"""Workstation operations on the paper broker's book (issue 12): `paper` shows an account.

The live engine keeps one paper account per mode ("live", "replay") and saves it after each
pass (engine.trading.paper_book); this reads what was saved: cash, equity, realised and
unrealised PnL, open positions with their last price, pending orders, recent fills and
orders. Paper only: nothing here or below it sends an order to Upbit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import NotFound, Request, Response, operation

ACCOUNTS = ("live", "replay")


class PaperRequest(Request):
    account: str = Field(
        default="live", min_length=1, max_length=100, description="The account: live or replay."
    )
    fills: int = Field(
        default=20, ge=0, le=200, description="How many of the newest fills to show."
    )
    orders: int = Field(
        default=20, ge=0, le=200, description="How many of the newest orders to show."
    )


class PaperPositionInfo(BaseModel):
    market: str
    units: float
    entry_price: float = Field(description="KRW per unit paid at the fill (slippage, tick).")
    entry_ts: datetime = Field(description="The candle at whose open it was bought.")
    cost: float = Field(description="KRW spent, fee included.")
    last_price: float = Field(description="The newest close it was marked to.")
    last_ts: datetime
    value: float = Field(description="units * last_price")
    unrealised_pnl: float = Field(description="value - cost")


class PaperOrderInfo(BaseModel):
    id: int
    market: str
    ts: datetime = Field(description="The candle at whose close it was decided.")
    side: str
    max_position: float | None = Field(description="A buy's cap in KRW (null: all cash).")
    status: str = Field(description="pending, filled or rejected.")
    reason: str | None = Field(description="Why it was rejected.")
    fill_ts: datetime | None = Field(description="The candle whose open filled or rejected it.")


class PaperFillInfo(BaseModel):
    id: int
    order_id: int
    market: str
    ts: datetime = Field(description="The candle at whose open it filled.")
    side: str
    price: float
    units: float
    value: float = Field(description="units * price, KRW")
    fee: float = Field(description="KRW")
    cash: float = Field(description="The account's cash after it.")


class PaperBook(Response):
    """A paper account as last saved; `stored` is false for one that never traded."""

    account: str
    stored: bool
    updated_at: datetime | None
    config: dict[str, Any] = Field(
        description="initial_cash, fee, slippage_bps, min_order (KRW), tick."
    )
    initial_cash: float
    cash: float
    equity: float = Field(description="Cash plus every position marked to its last close.")
    realised_pnl: float
    unrealised_pnl: float
    return_pct: float = Field(description="equity / initial_cash - 1, in percent.")
    positions: list[PaperPositionInfo]
    pending: list[PaperOrderInfo]
    fills: list[PaperFillInfo] = Field(description="The newest fills, oldest first.")
    orders: list[PaperOrderInfo] = Field(description="The newest orders, oldest first.")


class PaperOps(StoreHolder):
    @operation("read")
    def paper(self, request: PaperRequest) -> PaperBook:
        """The paper broker's book: cash, equity, PnL, positions, recent fills and orders."""
        import dataclasses

        from engine.trading.paper import BrokerConfig
        from engine.trading.paper_book import load_book
        from store.paper import paper_accounts, read_paper

        con = self.con()
        rows = read_paper(con, request.account, recent=1)
        if rows is None and request.account not in ACCOUNTS:
            known = sorted({*ACCOUNTS, *paper_accounts(con)})
            raise NotFound(
                f"no paper account {request.account!r}",
                f"the accounts are {', '.join(known)} (`upquant paper --account live`)",
            )
        broker = load_book(con, request.account)
        book = broker.book()
        config = dataclasses.asdict(broker.config if rows is not None else BrokerConfig())

        def order_info(order: Any) -> PaperOrderInfo:
            return PaperOrderInfo.model_validate(dataclasses.asdict(order))

        positions = [
            PaperPositionInfo(
                **dataclasses.asdict(p), value=p.value, unrealised_pnl=p.unrealised_pnl
            )
            for p in book.positions.values()
        ]
        fills = book.recent_fills[-request.fills :] if request.fills else []
        orders = book.recent_orders[-request.orders :] if request.orders else []
        return PaperBook(
            account=request.account,
            stored=rows is not None,
            updated_at=None if rows is None else rows.updated_at.to_pydatetime(),
            config=config,
            initial_cash=book.initial_cash,
            cash=book.cash,
            equity=book.equity,
            realised_pnl=book.realised_pnl,
            unrealised_pnl=book.unrealised_pnl,
            return_pct=(book.equity / book.initial_cash - 1.0) * 100.0,
            positions=positions,
            pending=[order_info(o) for o in book.pending.values()],
            fills=[PaperFillInfo.model_validate(dataclasses.asdict(f)) for f in fills],
            orders=[order_info(o) for o in orders],
        )
