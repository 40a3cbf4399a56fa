"""The Portfolio screen on the frozen store, whose "replay" paper book a replay of real
candles through the real live engine traded (KRW-ETH bought and sold, KRW-BTC held): the
screen's numbers are the `paper` operation's; the account switches by key; a book that
changes is redrawn by the periodic refresh; snapshots at 80x24 and 160x48."""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd
import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable

from engine.service.paper import PaperRequest
from engine.trading.paper_book import load_book, save_book
from tests.tui.screens.conftest import settle
from tui.fmt import fmt_krw, fmt_pct, fmt_price, fmt_time
from tui.screens import portfolio
from tui.screens.portfolio import FILLS, PortfolioScreen


def _cells(table: DataTable[Any], row: int) -> list[str]:
    return [str(cell) for cell in table.get_row_at(row)]


def _style(table: DataTable[Any], row: int, column: int) -> str:
    cell = table.get_row_at(row)[column]
    assert isinstance(cell, Text)
    return str(cell.style)


async def test_the_screen_shows_the_paper_operations_numbers(frozen_app, frozen_ws):
    book = frozen_ws.paper(PaperRequest(account="replay", fills=FILLS))
    live = frozen_ws.paper(PaperRequest(account="live", fills=FILLS))
    assert book.stored and book.positions and book.fills and not live.stored
    app = frozen_app(start="portfolio")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, PortfolioScreen)
        # no live trading yet: the replay's book is shown, as the operation answers it
        assert screen.account == "replay" and screen.book == book
        summary = str(screen.query_one("#summary").render())
        for amount in (book.cash, book.equity):
            assert f" {fmt_krw(amount)} " in summary
        assert fmt_krw(book.realised_pnl, signed=True) in summary
        assert fmt_krw(book.unrealised_pnl, signed=True) in summary
        assert fmt_pct(book.return_pct / 100) in summary
        positions = screen.query_one("#positions", DataTable)
        assert positions.row_count == len(book.positions)
        for i, p in enumerate(book.positions):
            assert _cells(positions, i) == [
                p.market,
                f"{p.units:,.8f}".rstrip("0").rstrip("."),
                fmt_price(p.entry_price),
                fmt_time(p.entry_ts),
                fmt_price(p.last_price),
                fmt_krw(p.value),
                fmt_krw(p.unrealised_pnl, signed=True),
                fmt_pct(p.unrealised_pnl / p.cost),
            ]
            assert _style(positions, i, 6) == ("red" if p.unrealised_pnl < 0 else "green")
        fills = screen.query_one("#fills", DataTable)
        assert [_cells(fills, i)[:4] for i in range(fills.row_count)] == [
            [fmt_time(f.ts), f.market, f.side, fmt_price(f.price)] for f in book.fills
        ]
        assert not screen.query_one("#pending").display  # none pending: no room taken
        # the live account by key: empty, said so
        await pilot.press("a")
        await settle(pilot)
        assert screen.account == "live" and screen.book == live
        assert positions.row_count == 0 and fills.row_count == 0
        assert "never traded" in str(screen.query_one("#summary").render())
        await pilot.press("a")
        await settle(pilot)
        assert screen.book == book


async def test_a_changed_book_is_redrawn_by_the_refresh_while_shown(
    frozen_app, frozen_ws, monkeypatch
):
    monkeypatch.setattr(portfolio, "REFRESH_S", 0.5)  # refreshes 4 times as often
    app = frozen_app(start="portfolio")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, PortfolioScreen) and screen.narrow
        positions = screen.query_one("#positions", DataTable)
        assert positions.row_count == 1 and len(positions.columns) == 6  # narrow: fewer
        shown = screen.book
        con = frozen_ws.con()
        # hidden (the chart shown): the broker sells the position, and the book is not read
        await pilot.press("2")
        broker = load_book(con, "replay")
        [(market, held)] = broker.positions.items()
        ts = pd.Timestamp(held.last_ts) + pd.Timedelta(minutes=1)
        broker.order(market, held.last_ts, "sell", None)
        broker.on_candle(market, ts, held.last_price * 1.01, held.last_price * 1.01)
        save_book(con, "replay", broker)
        await pilot.pause(1.0)  # two refreshes' time
        assert screen.book == shown
        # shown again: read at once
        await pilot.press("7")
        await settle(pilot)
        answer = frozen_ws.paper(PaperRequest(account="replay", fills=FILLS))
        assert not answer.positions and screen.book == answer and positions.row_count == 0
        assert fmt_krw(answer.cash) in str(screen.query_one("#summary").render())
        # while shown: a buy the broker saves is on the screen within a refresh
        broker.order(market, ts, "buy", 300_000.0)
        broker.on_candle(market, ts + pd.Timedelta(minutes=1), held.last_price, held.last_price)
        save_book(con, "replay", broker)
        answer = frozen_ws.paper(PaperRequest(account="replay", fills=FILLS))
        for _ in range(100):  # a refresh or two (a loaded machine may skip a late tick)
            await pilot.pause(0.1)
            if screen.book == answer:
                break
        await pilot.pause()
        assert answer.positions and screen.book == answer
        assert _cells(positions, 0)[0] == market
        assert not screen.query_one("#pending").display
        # an order decided, not filled yet: the pending orders are shown
        broker.order(market, ts + pd.Timedelta(minutes=1), "sell", None)
        save_book(con, "replay", broker)
        pending = screen.query_one("#pending", DataTable)
        for _ in range(100):
            await pilot.pause(0.1)
            if pending.row_count:
                break
        assert pending.display and _cells(pending, 0)[:2] == [market, "sell"]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_portfolio_snapshot(frozen_app, snap_compare, size):
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)

    assert snap_compare(frozen_app(start="portfolio"), terminal_size=size, run_before=run_before)


async def test_without_the_store_both_screens_say_so(con):
    """An app that runs only a session (no facade): Signals lists the session's signals and
    says the store is not available; Portfolio says it reads the book through the store."""
    from tests.tui.test_tui import demo_factory
    from tui.app import UpquantApp
    from tui.screens.signals import SignalsScreen
    from tui.widgets.signal_log import SignalLog

    gate, demo = asyncio.Event(), demo_factory(con, 40)

    async def opened_later() -> Any:  # the demo once the Signals screen listens
        await gate.wait()
        return await demo()

    app = UpquantApp(con, session_factory=opened_later, start="signals")
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(200):  # until the screen listens (its status bar drawn after that)
            await pilot.pause(0.02)
            screen = app.screen
            if isinstance(screen, SignalsScreen) and "of" in str(
                screen.query_one("#filters").render()
            ):
                break
        gate.set()
        await settle(pilot)
        assert app.screen.query_one(SignalLog).signals == list(app.session.engine.signals)
        assert "store is not available" in str(app.screen.query_one("#filters").render())
        await pilot.press("7")
        await settle(pilot)
        assert isinstance(app.screen, PortfolioScreen)
        assert "store is not available" in str(app.screen.query_one("#summary").render())
