"""The Signals screen on the frozen store (real signals of a replay through the live engine):
the stored signals listed with their reasons; filters and search narrowing the rows; pause
holding the session's new signals and resume appending them in order; the log of server and
feed events, in process and from a real server's events stream; snapshots at 80x24 and
160x48."""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd
import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot

from engine.live.engine import SignalEvent
from engine.live.session import Session, open_session
from engine.service.events import engine_event, job_event
from engine.service.stored import SignalsRequest
from engine.trading.strategies import Signal
from tests.tui.screens.conftest import APP_REPLAYED, frozen_session, served, settle
from tui.app import UpquantApp
from tui.screens.signals import SignalsScreen
from tui.widgets.event_log import EventLog
from tui.widgets.signal_log import SignalLog


def _log(app: UpquantApp) -> SignalLog:
    return app.screen.query_one(SignalLog)


def _events(app: UpquantApp) -> list[str]:
    return [
        f"{line.source} {line.level} {line.text}" for line in app.screen.query_one(EventLog).kept
    ]


async def until(pilot: Pilot[Any], check: Any, what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if check():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_stored_signals_are_listed_then_filters_and_search_narrow_them(frozen_app, frozen_ws):
    stored = frozen_ws.signals(SignalsRequest(last=1000)).root  # newest first
    assert {s.market for s in stored} == {"KRW-BTC", "KRW-ETH"}
    app = frozen_app(start="signals")
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        screen, log = app.screen, _log(app)
        assert isinstance(screen, SignalsScreen)
        # every stored signal once, oldest first (the session replays the same KRW-BTC
        # candles with the same champion: its signals are the stored ones, not doubled)
        rows = log.shown
        assert len(rows) == len(stored) == log.row_count
        assert [(r.signal.ts, r.signal.market) for r in rows] == [
            (s.ts, s.market) for s in sorted(stored, key=lambda s: (s.ts, s.market))
        ]
        by_key = {(r.signal.ts, r.signal.market): r for r in rows}
        for s in stored:
            row = by_key[(s.ts, s.market)]
            assert (row.signal.reason, row.signal.action, row.mode, row.unit) == (
                s.reason,
                s.action,
                "replay",
                "1",
            )
        cells = [str(cell) for cell in log.get_row_at(0)]
        assert rows[0].signal.reason in cells and "KRW-BTC" in cells or "KRW-ETH" in cells
        # the highlighted row's whole reason below the table, following the newest
        await pilot.press("up")
        assert rows[-2].signal.reason in str(screen.query_one("#detail").render())

        def shown() -> list[tuple[str, str, str]]:
            return [(r.signal.market, r.signal.action, r.kind) for r in log.shown]

        await pilot.press("a")  # buy
        await settle(pilot)
        buys = [s for s in stored if s.action == "buy"]
        assert buys and len(shown()) == len(buys) and {a for _, a, _ in shown()} == {"buy"}
        await pilot.press("a", "a", "a")  # sell, hold, all
        await pilot.press("s")  # model: the champion decides KRW-BTC only
        assert shown() and set(shown()) <= {
            ("KRW-BTC", "buy", "model"),
            ("KRW-BTC", "hold", "model"),
            ("KRW-BTC", "sell", "model"),
        }
        await pilot.press("s")  # rule: KRW-ETH
        assert shown() and {m for m, _, k in shown()} == {"KRW-ETH"}
        await pilot.press("s", "m")  # every source; the highlighted (newest) row's market
        await settle(pilot)
        market = log.shown[-1].signal.market
        assert {m for m, _, _ in shown()} == {market} and len(shown()) == sum(
            s.market == market for s in stored
        )
        await pilot.press("m")
        assert len(shown()) == len(stored)
        # search: over market and reason, each word
        await pilot.press("slash", *"eth cross", "enter")
        await pilot.pause(0.3)
        eth = [s for s in stored if s.market == "KRW-ETH" and "cross" in (s.reason or "")]
        assert eth and len(shown()) == len(eth) and screen.focused is log
        assert "/eth cross" in str(screen.query_one("#filters").render())
        await pilot.press("slash", "ctrl+u", *"sell", "escape")
        await pilot.pause(0.3)
        assert shown() == [
            (s.market, s.action, "model" if s.model_id else "rule")
            for s in sorted(stored, key=lambda s: (s.ts, s.market))
            if "sell" in f"{s.market} {s.reason}".lower()
        ]
        await pilot.press("c")
        assert len(shown()) == len(stored)


def _gated(ws: Any, gate: asyncio.Event) -> Any:
    """The frozen KRW-BTC 60m replay (signals the store does not hold), held until `gate`."""
    factory = frozen_session(ws, "KRW-BTC", "60")

    async def gated() -> Session:
        session = await factory()
        runner = session.runner

        async def later() -> Any:
            await gate.wait()
            return await runner

        return Session(session.engine, session.mode, session.banner, later())

    return gated


async def test_pause_holds_new_signals_and_resume_adds_them_in_order(frozen_app, frozen_ws):
    gate = asyncio.Event()
    app = frozen_app(start="signals", unit="60", session_factory=_gated(frozen_ws, gate))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SignalsScreen), "the screen")
        log = _log(app)
        await until(pilot, lambda: log.kept == 400 and app.view is not None, "the stored ones")
        before = log.signals
        await pilot.press("p")
        gate.set()
        await settle(pilot)
        played = list(app.session.engine.signals)
        assert len(played) == APP_REPLAYED
        assert log.signals == before  # nothing appended while paused
        bar = str(app.screen.query_one("#filters").render())
        assert f"PAUSED, {APP_REPLAYED} new" in bar
        await pilot.press("p")
        assert log.signals == before + played  # in the order they came
        assert log.shown[-1].unit == "60" and log.shown[-1].mode == "replay"
        assert "PAUSED" not in str(app.screen.query_one("#filters").render())
        # the log: the session's end, at the frozen time in KST, and in UTC after `u`
        assert f"session info replay finished: {APP_REPLAYED} candles" in _events(app)
        events = app.screen.query_one(EventLog)
        first = events.lines[-1].text
        assert first.startswith("10-04 10:20:00")  # FROZEN_NOW in KST
        await pilot.press("u")
        await pilot.pause()
        assert events.lines[-1].text.startswith("10-04 01:20:00")
        # the in-process Workstation's events: a job's status, another market's signal
        other = Signal(
            pd.Timestamp("2025-10-04 01:00", tz="UTC"),
            "KRW-XRP",
            "sell",
            0.9,
            "sma-cross(10,30)",
            "crossed down",
        )
        frozen_ws.publish_event(job_event(3, "running", 0.2))
        frozen_ws.publish_event(engine_event(SignalEvent(other, None), "KRW-XRP", "240"))
        await until(pilot, lambda: "job info training run 3 running" in _events(app), "a job")
        await until(pilot, lambda: log.signals[-1] == other, "the hub's signal")
        assert log.shown[-1].unit == "240"


async def test_a_watchlists_signals_carry_each_markets_unit(frozen_app, frozen_ws):
    """A replay session of KRW-BTC 1m and KRW-ETH 60m (open_session, offline): each signal
    listed with its own market's unit, not the session's first one."""

    async def watchlist() -> Session:
        return await open_session(
            frozen_ws.con(),
            ["KRW-BTC", "KRW-ETH"],
            "1",
            units={"KRW-ETH": "60"},
            offline=True,
            replay_delay=0,
            replay_candles=20,
            threshold=0.45,
        )

    app = frozen_app(start="signals", session_factory=watchlist)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        lanes = app.session.markets.lanes
        assert lanes["KRW-ETH"].unit == "60"
        rows = _log(app).shown
        played = {(s.ts, s.market) for lane in lanes.values() for s in lane.signals}
        mine = [r for r in rows if (r.signal.ts, r.signal.market) in played]
        assert {(r.signal.market, r.unit) for r in mine} == {("KRW-BTC", "1"), ("KRW-ETH", "60")}


async def test_the_log_follows_a_real_servers_events(frozen_ws, frozen_app):
    """Attached to a real server: its stored signals over HTTP, its events (a training job,
    a feed's status) over the events WebSocket; a job's progress logged once per status."""
    async with served(frozen_ws, "read", "signals-screen") as facade:
        app = frozen_app(start="signals", facade=facade)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            assert _log(app).kept == 400
            await until(
                pilot,
                lambda: any("following the events of the server" in e for e in _events(app)),
                "the hello",
            )
            for event in (
                job_event(7, "running", 0.1),
                job_event(7, "running", 0.5),
                {
                    "type": "status",
                    "text": "feed 1: streaming 2 markets 1m",
                    "level": "info",
                    "connected": None,
                    "feed": 1,
                },
                job_event(7, "failed", None, "out of memory"),
            ):
                frozen_ws.publish_event(event)
            await until(pilot, lambda: "job error" in " ".join(_events(app)), "the job's end")
            lines = [e for e in _events(app) if e.startswith(("job", "feed"))]
            assert lines == [
                "job info training run 7 running",
                "feed info feed 1: streaming 2 markets 1m",
                "job error training run 7 failed: out of memory",
            ]


async def test_the_table_shows_the_newest_matching_rows_of_those_kept():
    """Kept: max_rows; in the table: the newest table_rows that match, trimmed in one redraw
    a fifth past it (not a row removed per signal); a filter reaches every kept row."""

    class Host(App[None]):
        utc = False

        def compose(self) -> ComposeResult:
            yield SignalLog(wide=True, max_rows=50, table_rows=10)

    start = pd.Timestamp("2025-10-03 00:00", tz="UTC")
    signals = [
        Signal(
            start + pd.Timedelta(minutes=i),
            "KRW-ETH" if i % 5 == 0 else "KRW-BTC",
            "buy",
            0.5,
            "sma-cross(10,30)",
            f"reason {i}",
        )
        for i in range(60)
    ]
    async with Host().run_test(size=(120, 30)) as pilot:
        log = pilot.app.query_one(SignalLog)
        for signal in signals[:12]:
            assert log.add_signal(signal, unit="1")
        assert log.row_count == 12 and not log.add_signal(signals[3], unit="1")
        log.add_signal(signals[12], unit="1")  # past 10 + 2: redrawn to the newest 10
        assert log.row_count == 10 and log.signals == signals[3:13]
        for signal in signals[13:]:
            log.add_signal(signal, unit="1")
        assert log.kept == 50 and log.signals[-1] == signals[-1] and log.row_count <= 12
        log.set_filter(lambda row: row.signal.market == "KRW-ETH")
        assert log.signals == [s for s in signals[10:] if s.market == "KRW-ETH"]
        assert log.row_count == 10
        await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_signals_snapshot(frozen_app, snap_compare, size):
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)

    assert snap_compare(frozen_app(start="signals"), terminal_size=size, run_before=run_before)
