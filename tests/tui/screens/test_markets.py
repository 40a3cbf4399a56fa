"""The Markets screen and its operation, `market_board`, on a real store of real candles.

The board's 24 h change and volume are checked against pandas on the same stored candles; the
screen runs against a real Workstation (the facade) and the real engine's demo session: filter
-> open the chart -> change the threshold, sorting, favourites kept across a restart, and the
coalescing of many updates into one table refresh.

The board's cost is measured in engine/service/board.py's docstring; the screen's (200 rows,
measured with a 200-row board): the first flush ~40-50 ms, every row changed ~35-40 ms, the same
board again ~0.05 ms (no cells made).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from engine.server.runner import stop_workstation
from engine.service import Workstation
from engine.service.board import BoardRequest, MarketBoard
from engine.service.live import LiveStatusRequest
from engine.trading.strategies import Signal
from store.candles import upsert_candles
from store.db import connect
from store.drift import insert_drift_event
from store.paper import FILL_COLUMNS, ORDER_COLUMNS, write_paper
from store.signals import insert_signals
from tests.conftest import shared_candles
from tests.tui.test_tui import demo_factory
from tui import messages
from tui.app import UpquantApp
from tui.cli.live import Watch
from tui.host import hosted_session
from tui.screens.markets import REFRESH_S, MarketsScreen, compact
from tui.widgets.sparkline import spark_blocks

ROWS = 3000  # real 1-minute candles per market: two days, so the 24 h window is full
XRP_SCALE = 1e-5  # KRW-XRP: BTC's candles scaled down, stored with a KRW value column


def _candles() -> pd.DataFrame:
    btc = shared_candles("KRW-BTC_1m.csv", ROWS)
    eth = shared_candles("KRW-ETH_1m.csv", ROWS, market="KRW-ETH")
    xrp = btc.copy()
    xrp["market"] = "KRW-XRP"
    for column in ("open", "high", "low", "close"):
        xrp[column] = (xrp[column] * XRP_SCALE).round(1)
    xrp["value"] = xrp["close"] * xrp["volume"] * 1.001  # as Upbit gives it: not estimated
    return pd.concat([btc, eth.iloc[:-120], xrp])  # ETH's newest candle two hours earlier


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return _candles()


@pytest.fixture
def board_home(home: Path, candles: pd.DataFrame) -> Path:
    """A store with three markets' candles, a stored signal, a paper position and a drift
    event."""
    with connect() as con:
        upsert_candles(con, candles)
        last_eth = candles[candles.market == "KRW-ETH"].ts.max()
        insert_signals(
            con,
            pd.DataFrame(
                {
                    "ts": [last_eth - timedelta(minutes=1), last_eth],
                    "market": "KRW-ETH",
                    "unit": "1",
                    "source": "sma-cross(10,30)",
                    "action": ["hold", "buy"],
                    "confidence": [0.0, 1.0],
                    "model_id": None,
                    "reason": "fast SMA crossed above slow",
                    "mode": "replay",
                }
            ),
        )
        write_paper(
            con,
            "live",
            config={"initial_cash": 1e6},
            cash=5e5,
            realised_pnl=0.0,
            orders=pd.DataFrame(columns=ORDER_COLUMNS),
            fills=pd.DataFrame(columns=FILL_COLUMNS),
            positions=pd.DataFrame(
                {
                    "market": ["KRW-ETH"],
                    "units": [0.1],
                    "entry_price": [5e6],
                    "entry_ts": [last_eth],
                    "cost": [500_250.0],
                    "last_price": [5.1e6],
                    "last_ts": [last_eth],
                }
            ),
            markets=["KRW-ETH"],
        )
        insert_drift_event(
            con,
            ts=last_eth,
            market="KRW-BTC",
            unit="1",
            model_id=1,
            stream="correctness",
            detector="adwin",
        )
    return home


@pytest.fixture
def ws(board_home: Path) -> Iterator[Workstation]:
    workstation = Workstation()
    yield workstation
    stop_workstation(workstation)


# --- the operation --------------------------------------------------------------------------


def test_the_board_computes_the_24h_window_from_the_stored_candles(ws, candles):
    board = ws.market_board(BoardRequest(spark=20))
    assert not board.live and board.unit == "1" and board.account == "live"
    rows = {row.market: row for row in board.rows}
    assert list(rows) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
    for market, row in rows.items():
        series = candles[candles.market == market].sort_values("ts")
        last = series.ts.max()
        day = series[series.ts > last - pd.Timedelta(hours=24)]
        assert len(day) == row.day_candles == 1440 and row.unit == "1"
        assert row.last_ts == last.to_pydatetime()
        assert row.last_price == series.close.iloc[-1]
        assert row.change_24h == pytest.approx(series.close.iloc[-1] / day.open.iloc[0] - 1)
        assert row.volume_24h == pytest.approx(day.volume.sum())
        value = day.value.fillna(day.close * day.volume).sum()
        assert row.value_24h == pytest.approx(value)
        assert row.value_estimated is (market != "KRW-XRP")
        assert row.spark == list(series.close.iloc[-20:])
    eth, btc = rows["KRW-ETH"], rows["KRW-BTC"]
    # the newest stored signal decides while no session runs; the live paper account's position
    assert (eth.action, eth.confidence, eth.source_kind) == ("buy", 1.0, "rule")
    assert (eth.position, eth.position_value) == (0.1, pytest.approx(5.1e5))
    assert eth.unrealised_pnl == pytest.approx(5.1e5 - 500_250.0)
    assert btc.action is None and btc.position is None
    assert btc.drift == "correctness adwin" and eth.drift_at is None
    # asked again with nothing written: the same answer (the candle aggregate kept)
    assert ws.market_board(BoardRequest(spark=20)) == board
    only = ws.market_board(BoardRequest(markets=["KRW-XRP", "KRW-DOGE"]))
    assert [r.market for r in only.rows] == ["KRW-XRP", "KRW-DOGE"]
    assert only.rows[1].last_price is None and only.rows[1].spark == []


def test_a_new_candle_is_on_the_next_board(ws, candles):
    before = {r.market: r for r in ws.market_board(BoardRequest()).rows}["KRW-BTC"]
    newest = candles[candles.market == "KRW-BTC"].tail(1).copy()
    newest["ts"] += pd.Timedelta(minutes=1)
    newest["close"] = before.last_price * 1.01
    upsert_candles(ws.con(), newest)
    after = {r.market: r for r in ws.market_board(BoardRequest()).rows}["KRW-BTC"]
    assert after.last_price == newest.close.iloc[0] and after.last_ts > before.last_ts
    assert after.spark[-1] == after.last_price and after.day_candles == 1440


async def test_the_board_route(ws):
    """GET /api/v1/markets/board on the server's app: the operation's answer as JSON; a bad
    unit is 422."""
    from aiohttp.test_utils import TestClient, TestServer

    from engine.server.app import create_app
    from store.tokens import create_token

    _, token = create_token(ws.con(), "read-test", "read")
    client = TestClient(TestServer(create_app(ws), host="127.0.0.1"))
    await client.start_server()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        answer = await client.get("/api/v1/markets/board?unit=1&spark=5", headers=headers)
        assert answer.status == 200
        body = await answer.json()
        expected = await asyncio.to_thread(ws.market_board, BoardRequest(unit="1", spark=5))
        assert body == expected.model_dump(mode="json")
        assert [r["market"] for r in body["rows"]] == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
        bad = await client.get("/api/v1/markets/board?unit=7", headers=headers)
        assert bad.status == 422
    finally:
        await client.close()


async def test_a_tui_watchlist_session_is_the_board(ws, candles):
    """`upquant tui --markets KRW-ETH:60,KRW-XRP` hosting the server: the session it starts
    decides every market, each at its unit, and the board's rows are its watchlist (a replay
    of the newest stored candles: the last prices are the stored last closes)."""
    hourly = shared_candles("KRW-ETH_60m.csv", 300, market="KRW-ETH", unit="60")
    upsert_candles(ws.con(), hourly)
    watch = Watch(["KRW-ETH:60", "KRW-XRP"], all_krw=False)
    assert watch.start == "markets" and Watch([], all_krw=False).start == "chart"
    options = {"threshold": 0.5, "offline": True, "replay_delay": 0.0, "replay_candles": 60}
    ws.attach_loop(asyncio.get_running_loop())
    await hosted_session(ws, "KRW-BTC", "1", **options, **watch.fields())
    try:
        for _ in range(200):
            status = await asyncio.to_thread(ws.live_status, LiveStatusRequest())
            if not status.running:
                break
            await asyncio.sleep(0.05)
        board = await asyncio.to_thread(ws.market_board, BoardRequest())
    finally:
        await ws.stop_live_async()
    assert board.live and board.mode == "replay"
    assert [(r.market, r.unit) for r in board.rows] == [
        ("KRW-BTC", "1"),
        ("KRW-ETH", "60"),  # at its own unit: its hourly candles
        ("KRW-XRP", "1"),
    ]
    for row in board.rows:
        series = hourly if row.unit == "60" else candles[candles.market == row.market]
        assert row.watched and row.last_price == series.close.iloc[-1]
        if row.unit == "1":  # (the replay's newest minutes: the hourly lane decides none)
            assert row.action in ("buy", "hold", "sell") and row.source_kind == "rule"
        assert row.day_candles == (24 if row.unit == "60" else 1440)
        assert len(row.spark) == 30


def test_sparkline_blocks():
    assert spark_blocks([1, 2, 3, 4, 5, 6, 7, 8], 8) == "▁▂▃▄▅▆▇█"
    assert spark_blocks([5, 5, 5], 8) == "▄▄▄"
    assert spark_blocks(list(range(100)), 4) == "▁▃▆█"
    assert compact(306_901_842_221.9) == "307B" and compact(1_234_567) == "1.2M"


# --- the screen -----------------------------------------------------------------------------

FROZEN = datetime(2025, 9, 3, 3, 0, tzinfo=UTC)


def markets_app(con, ws: Workstation, **kwargs) -> UpquantApp:
    return UpquantApp(
        con,
        session_factory=demo_factory(con, 5),
        facade=ws,
        clock=lambda: FROZEN,
        start="markets",
        **kwargs,
    )


async def shown(pilot: Pilot) -> MarketsScreen:
    """The Markets screen once its first board is in the table."""
    for _ in range(200):
        screen = pilot.app.screen
        if isinstance(screen, MarketsScreen) and screen.board is not None:
            screen.flush()
            await pilot.pause()
            return screen
        await pilot.pause(0.02)
    raise AssertionError("the Markets screen never showed a board")


def markets_of(screen: MarketsScreen) -> list[str]:
    return screen.table.keys


@pytest.mark.slow  # two charts loaded, the session's engine driven: ~4-8 s on 2 busy cores
async def test_filter_open_the_chart_and_change_the_threshold(con, ws):
    """Filter, open a market's chart, back (the filter kept), open the session's market and
    move its threshold with the chart's `+`."""
    app = markets_app(con, ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await shown(pilot)
        assert markets_of(screen) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
        await pilot.press("slash", "e", "t")
        assert screen.query_one(Input).has_focus
        await pilot.pause()
        assert markets_of(screen) == ["KRW-ETH"]
        await pilot.press("enter")  # the filter done: the table has the focus again
        assert screen.table.has_focus and screen.cursor_market == "KRW-ETH"
        screen.ingest(await app.call("market_board", BoardRequest(spark=30)))
        screen.flush()  # an update keeps the filter and the cursor
        assert markets_of(screen) == ["KRW-ETH"] and screen.cursor_market == "KRW-ETH"
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "chart"
        assert (app.chart_screen.market, app.chart_screen.unit) == ("KRW-ETH", "1")
        await pilot.press("escape")  # back to the markets, the filter still there
        await pilot.pause()
        assert app.current_mode == "markets" and markets_of(screen) == ["KRW-ETH"]
        await pilot.press("escape")  # the table focused: Esc clears the filter
        assert markets_of(screen) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
        assert screen.cursor_market == "KRW-ETH"
        await pilot.press("slash", "x", "r", "p")
        assert markets_of(screen) == ["KRW-XRP"]
        await pilot.press("escape")  # typing: Esc clears the filter too, the table focused
        assert markets_of(screen) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"] and not screen.filter_text
        assert screen.table.has_focus and not screen.has_class("-filtering")
        await pilot.press("slash", "b", "t", "c", "enter", "enter")  # the session's market
        await pilot.pause()
        assert app.current_mode == "chart" and app.chart_screen.market == "KRW-BTC"
        engine = app.session.engine
        before = engine.threshold
        await pilot.press("plus")
        assert engine.threshold == pytest.approx(before + 0.05)


async def test_sorting_by_key_and_by_header(con, ws):
    app = markets_app(con, ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await shown(pilot)
        await pilot.press("s")  # market -> price
        assert screen.sort_key == "price"
        assert markets_of(screen) == ["KRW-XRP", "KRW-ETH", "KRW-BTC"]
        await pilot.press("r")
        assert markets_of(screen) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]
        header = (screen.table.column_x("signal") + 2, 0)  # a click on the Signal header
        await pilot.click("#board", offset=header)
        await pilot.pause()
        assert screen.sort_key == "signal" and not screen.reverse
        assert markets_of(screen)[0] == "KRW-ETH"  # the only decision: buy; none last
        await pilot.click("#board", offset=header)
        await pilot.pause()
        assert screen.reverse and markets_of(screen)[-1] == "KRW-XRP"  # none still last


async def test_favourites_sort_first_and_survive_a_restart(con, ws, board_home):
    app = markets_app(con, ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await shown(pilot)
        await pilot.press("down", "down", "f")  # KRW-XRP
        assert markets_of(screen)[0] == "KRW-XRP" and screen.cursor_market == "KRW-XRP"
        assert screen.table.cell("KRW-XRP", "market").plain == "★KRW-XRP"
    assert (board_home / "favourites.json").exists()
    again = markets_app(con, ws)
    async with again.run_test(size=(100, 30)) as pilot:
        screen = await shown(pilot)
        assert markets_of(screen) == ["KRW-XRP", "KRW-BTC", "KRW-ETH"]
        await pilot.press("f")  # unstarred
        assert markets_of(screen) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]


async def test_many_updates_in_one_interval_are_one_table_refresh(con, ws):
    app = markets_app(con, ws)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await shown(pilot)
        screen.poll_timer.pause()  # only the updates below arrive
        screen.refresh_timer.pause()  # they all land within one interval
        board: MarketBoard = screen.board
        refreshes = screen.refreshes
        first_price = screen.table.cell("KRW-ETH", "price").plain
        for i in range(200):  # a board per tick and a signal per tick
            rows = [
                r.model_copy(update={"last_price": r.last_price * (1 + i / 1e4)})
                for r in board.rows
            ]
            screen.ingest(board.model_copy(update={"rows": rows}))
            signal = Signal(pd.Timestamp(FROZEN), "KRW-BTC", "sell", 0.5 + i / 1e3, "x", "y", 3)
            screen.post_message(messages.SignalReceived(signal, np.zeros(3)))
        await pilot.pause()
        assert screen.refreshes == refreshes  # taken in, not drawn
        assert screen.table.cell("KRW-ETH", "price").plain == first_price
        screen.refresh_timer.resume()
        for _ in range(100):
            await pilot.pause(REFRESH_S / 20)
            if screen.refreshes > refreshes:
                break
        assert screen.refreshes == refreshes + 1
        assert screen.table.cell("KRW-BTC", "signal").plain == "sell 0.70 m"  # the newest
        assert screen.table.cell("KRW-ETH", "price").plain == f"{rows[1].last_price:,.0f}"
        await pilot.pause(REFRESH_S * 1.2)
        assert screen.refreshes == refreshes + 1  # nothing new: no table work


async def test_without_the_store_the_screen_says_so(con):
    app = UpquantApp(con, session_factory=demo_factory(con, 5), start="markets")
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(100):
            await pilot.pause(0.02)
            if isinstance(app.screen, MarketsScreen) and app.screen.is_mounted:
                status = str(app.screen.query_one("#board-status", Static).render())
                if status:
                    break
        assert "store is not available" in status


# --- snapshots on the frozen store ------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_markets_snapshot(frozen_app, snap_compare, size):
    """The frozen store's markets (KRW-BTC decided by the champion, KRW-ETH by the rule, the
    replay account's position), the cursor on KRW-ETH."""
    from engine.service.board import BoardRequest
    from tests.tui.screens.conftest import settle
    from tui.screens.markets import SPARK

    app = frozen_app(start="markets")

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        screen = await shown(pilot)
        screen.poll_timer.pause()
        screen.refresh_timer.pause()
        # the newest board last, whichever of the session's signals and the polls came first
        screen.ingest(await app.call("market_board", BoardRequest(spark=SPARK)))
        screen.flush()
        screen.table.focus()
        await pilot.press("down")
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
