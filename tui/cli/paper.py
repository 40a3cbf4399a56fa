"""`upquant paper`: the paper broker's book (issue 12): cash, equity, PnL, positions, recent
fills and orders of a paper account as the live engine last saved it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tui.cli.options import JsonOpt, workstation
from tui.cli.render import console, emit_json, styled


def _krw(value: float) -> str:
    return f"{value:,.0f}"


def _price(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.8g}"


def paper(
    account: Annotated[
        str, typer.Option("--account", help="The paper account: live or replay.")
    ] = "live",
    fills: Annotated[int, typer.Option(help="How many of the newest fills to show.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """The paper broker's book: cash, equity, PnL, positions and recent fills (no real orders)."""
    from engine.service.paper import PaperRequest

    with workstation() as ws:
        book = ws.paper(PaperRequest(account=account, fills=fills, orders=fills))
    if as_json:
        emit_json(book.model_dump(mode="json"))
        return
    if not book.stored:
        console.print(
            styled(
                f"paper account {account}: no trades yet; it starts with ",
                (f"{_krw(book.initial_cash)} KRW", "bold"),
            ),
            highlight=False,
        )
        return
    pnl_style = "green" if book.equity >= book.initial_cash else "red"
    console.print(
        styled(
            (f"paper account {book.account}", "bold"),
            f"  cash {_krw(book.cash)} KRW  equity ",
            (f"{_krw(book.equity)} KRW ({book.return_pct:+.2f}%)", pnl_style),
            f"  realised {_krw(book.realised_pnl)}  unrealised {_krw(book.unrealised_pnl)}",
        ),
        highlight=False,
    )
    if book.updated_at is not None:
        console.print(f"saved {book.updated_at:%Y-%m-%d %H:%M:%S} UTC", highlight=False)
    positions = Table("market", "units", "entry", "since (UTC)", "last", "value", "unrealised")
    for p in book.positions:
        positions.add_row(
            p.market,
            f"{p.units:.8g}",
            _price(p.entry_price),
            f"{p.entry_ts:%Y-%m-%d %H:%M}",
            _price(p.last_price),
            _krw(p.value),
            _krw(p.unrealised_pnl),
        )
    console.print(positions if book.positions else "no open positions", highlight=False)
    for order in book.pending:
        console.print(
            f"pending: {order.side} {order.market} (decided at {order.ts:%Y-%m-%d %H:%M})",
            highlight=False,
        )
    if book.fills:
        table = Table("fill (UTC)", "market", "side", "price", "units", "value", "fee", "cash")
        for f in book.fills:
            table.add_row(
                f"{f.ts:%Y-%m-%d %H:%M}",
                f.market,
                f.side,
                _price(f.price),
                f"{f.units:.8g}",
                _krw(f.value),
                _krw(f.fee),
                _krw(f.cash),
            )
        console.print(table)
    for order in book.orders:
        if order.status == "rejected":
            console.print(
                styled(("rejected", "yellow"), f" {order.side} {order.market}: {order.reason}"),
                highlight=False,
            )
