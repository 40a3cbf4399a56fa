"""The Textual workstation driven by the real live engine on demo candles (no mocks)."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

import duckdb
from rich.console import Console
from textual.pilot import Pilot

from engine.live.engine import LiveEngine
from engine.live.inference import LoadedModel, load_champion
from engine.live.session import Session
from engine.live.sources import demo_candles, replay, upbit_live
from engine.training.train import train_model
from store.candles import load_candles, upsert_candles
from tests.conftest import next_minute
from tests.fake_upbit import FakeUpbit
from tui.app import UpquantApp
from tui.fmt import fmt_time
from tui.screens import HelpScreen, MainScreen
from tui.widgets import CandleChart, PredictionPanel, SessionBanner, SignalLog, StatusLine

MARKET, UNIT = "KRW-BTC", "1"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SIZE = (120, 40)
DEMO_BANNER = (
    "Upbit unreachable (test) · DEMO market (synthetic) · no champion model for KRW-BTC unit 1"
)


def demo_factory(
    con: duckdb.DuckDBPyConnection,
    candles: int = 120,
    *,
    model: LoadedModel | None = None,
    banner: str = DEMO_BANNER,
    mode: str = "demo",
):
    """A session like open_session's offline one: the real engine replaying demo candles."""

    async def factory() -> Session:
        engine = LiveEngine(
            con,
            MARKET,
            UNIT,
            model=model,
            mode=mode,
            persist_signals=mode != "demo",
            no_model_reason="no champion model for KRW-BTC unit 1",
        )
        frame = demo_candles(engine.window + candles, MARKET, UNIT, seed=11, start=START)
        engine.prime(frame.iloc[: engine.window])
        return Session(engine, mode, banner, replay(engine, frame.iloc[engine.window :], delay=0))

    return factory


async def settle(pilot: Pilot) -> None:
    """Wait until the session worker (and so the replay) is done and the screen caught up."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def test_demo_replay_fills_the_screen(con):
    app = UpquantApp(con, session_factory=demo_factory(con, 120))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        engine = app.session.engine
        log = app.screen.query_one(SignalLog)
        assert log.row_count == len(engine.signals) == 120
        newest = engine.signals[-1]
        # newest last, in KST (the signal log's zone by default)
        assert log.get_row_at(log.row_count - 1)[0] == fmt_time(newest.ts, fmt="%H:%M")
        assert str(log.get_row_at(log.row_count - 1)[1]) == newest.action
        banner = app.screen.query_one(SessionBanner)
        assert banner.text == DEMO_BANNER and banner.has_class("-warning")
        status = app.screen.query_one(StatusLine)
        assert status.text == "replay finished: 120 candles (demo market)"
        panel = app.screen.query_one(PredictionPanel)
        assert panel.model_ref == "rule: sma-cross(10,30)"
        assert panel.probs is None and panel.signal == newest
        text = app.screen.query_one(PredictionPanel).render()
        assert "rule: sma-cross(10,30)" in _plain(text)
        chart = app.screen.query_one(CandleChart)
        assert chart.bars[-1].ts == newest.ts
        assert "█" in _plain(chart.render())


def _plain(renderable) -> str:
    """The text a renderable shows, without styles."""
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


async def test_threshold_keys_set_the_engine_threshold(con):
    app = UpquantApp(con, session_factory=demo_factory(con, 40))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        engine, panel = app.session.engine, app.screen.query_one(PredictionPanel)
        assert engine.threshold == panel.threshold == 0.5
        await pilot.press("+", "=")
        assert engine.threshold == panel.threshold == 0.6
        await pilot.press("-")
        assert engine.threshold == panel.threshold == 0.55
        await pilot.press(*["+"] * 20)
        assert engine.threshold == 0.95
        await pilot.press(*["-"] * 20)
        assert engine.threshold == panel.threshold == 0.34
        assert "0.34" in _plain(panel.render())


async def test_startup_shows_a_starting_state_before_the_session_opens(con):
    gate = asyncio.Event()
    real = demo_factory(con, 10)

    async def slow_factory() -> Session:
        await gate.wait()  # like open_session probing an unreachable Upbit
        return await real()

    app = UpquantApp(con, session_factory=slow_factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        banner = app.screen.query_one(SessionBanner)
        assert banner.has_class("-starting") and "Starting the KRW-BTC 1m session" in banner.text
        assert "waiting for candles" in _plain(app.screen.query_one(CandleChart).render())
        await pilot.press("+")  # no engine yet: nothing to change, nothing breaks
        gate.set()
        await settle(pilot)
        assert banner.text == DEMO_BANNER
        assert app.session.engine.threshold == 0.5


async def test_a_failing_feed_is_shown_not_raised(con):
    async def broken_feed() -> int:
        raise ConnectionError("socket closed by peer")

    async def factory() -> Session:
        session = await demo_factory(con, 1)()
        session.runner.close()
        return Session(session.engine, "live", "LIVE · Upbit · KRW-BTC 1m", broken_feed())

    app = UpquantApp(con, session_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        status = app.screen.query_one(StatusLine)
        assert status.text == "engine stopped: ConnectionError: socket closed by peer"
        assert status.has_class("-error")
        banner = app.screen.query_one(SessionBanner)
        assert banner.has_class("-error")
        assert banner.text == "LIVE · Upbit · KRW-BTC 1m · " + status.text
        assert app.is_running


async def test_a_failing_session_start_is_shown_in_the_banner(con):
    async def factory() -> Session:
        raise duckdb.IOException("database is locked")

    app = UpquantApp(con, session_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        banner = app.screen.query_one(SessionBanner)
        assert banner.has_class("-error")
        assert banner.text == "could not start the session: IOException: database is locked"


async def test_signal_log_keeps_the_newest_500_and_can_hide_holds(con):
    app = UpquantApp(con, session_factory=demo_factory(con, 620))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        signals = list(app.session.engine.signals)
        log = app.screen.query_one(SignalLog)
        assert log.row_count == SignalLog.MAX_ROWS
        assert log.signals[-1] == signals[-1] and log.signals[0] == signals[-SignalLog.MAX_ROWS]
        await pilot.press("h")
        await pilot.pause()
        acted = [s for s in signals[-SignalLog.MAX_ROWS :] if s.action != "hold"]
        assert acted and log.row_count == len(acted)
        assert {str(log.get_row_at(i)[1]) for i in range(log.row_count)} <= {"buy", "sell"}
        await pilot.press("h")
        await pilot.pause()
        assert log.row_count == SignalLog.MAX_ROWS


async def test_live_session_draws_the_forming_candle_and_stores_candles_on_quit(con, monkeypatch):
    """The real live path: fake Upbit WebSocket -> the feed (which closes candles) -> engine."""
    candles = demo_candles(5, MARKET, UNIT, seed=3, start=next_minute())
    frames = candles.to_dict("records")

    async def factory() -> Session:
        engine = LiveEngine(
            con, MARKET, UNIT, no_model_reason="no champion model for KRW-BTC unit 1"
        )
        return Session(engine, "live", "LIVE · Upbit · KRW-BTC 1m", upbit_live(engine))

    async with FakeUpbit() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        app = UpquantApp(con, session_factory=factory)
        async with app.run_test(size=SIZE) as pilot:
            await fake.wait_subscribed()
            for frame in frames:
                await fake.push_candle(MARKET, frame)
            log = app.screen.query_one(SignalLog)
            for _ in range(100):
                await pilot.pause(0.05)
                if log.row_count == 4:
                    break
            assert log.row_count == 4  # five frames of five buckets close four candles
            assert app.screen.query_one(SessionBanner).has_class("-live")
            chart = app.screen.query_one(CandleChart)
            assert [bar.ts for bar in chart.bars] == [frame["ts"] for frame in frames]
            await pilot.press("q")
    assert len(load_candles(con, MARKET, UNIT)) == 5  # the feed stores the forming one too


async def test_help_screen_lists_every_binding(con):
    app = UpquantApp(con, session_factory=demo_factory(con, 10))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("?")
        assert isinstance(app.screen, HelpScreen)
        rows = {desc: keys for keys, desc in app.screen.rows}
        assert rows["Threshold up"] == "+ =" and rows["Threshold down"] == "-"
        assert "q" in rows["Quit"].split() and rows["Help"] == "?" and rows["Toggle holds"] == "h"
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_trained_champion_shows_class_probabilities(con):
    upsert_candles(con, demo_candles(3000, MARKET, UNIT, seed=7, start=START))
    report = train_model(con, "xgboost", MARKET, UNIT, params={"n_estimators": 20})
    model, reason = load_champion(con, MARKET, UNIT)
    assert model is not None, reason
    app = UpquantApp(
        con,
        session_factory=demo_factory(
            con, 30, model=model, mode="replay", banner=f"REPLAY · {reason}"
        ),
    )
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        engine, panel = app.session.engine, app.screen.query_one(PredictionPanel)
        assert panel.model_ref == report.model.ref == "xgboost-KRW-BTC-1@1"
        assert panel.model_note == ""
        assert panel.probs is not None and abs(sum(panel.probs) - 1) < 1e-6
        assert panel.signal == engine.signals[-1] and panel.signal.source == report.model.ref
        text = _plain(panel.render())
        for action, p in zip(("sell", "hold", "buy"), panel.probs, strict=True):
            assert f"{action}" in text and f"{p * 100:5.1f}%" in text
        log = app.screen.query_one(SignalLog)
        assert log.row_count == 30 and str(log.get_row_at(log.row_count - 1)[3]) == report.model.ref


async def test_default_factory_opens_an_offline_demo_session(con):
    app = UpquantApp(con, offline=True, replay_delay=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.session.mode == "demo"
        banner = app.screen.query_one(SessionBanner)
        assert banner.text == app.session.banner and "DEMO market" in banner.text
        assert app.screen.query_one(StatusLine).text.startswith("replay finished: 2000 candles")


def test_main_screen_snapshot(con, snap_compare):
    """A finished demo replay at 120x40: chart with signal marks, rule panel, signal log."""
    app = UpquantApp(con, session_factory=demo_factory(con, 240))
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_help_screen_snapshot(con, snap_compare):
    app = UpquantApp(con, session_factory=demo_factory(con, 20))

    async def open_help(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("?")

    assert snap_compare(app, terminal_size=SIZE, run_before=open_help)


async def test_a_live_banner_says_disconnected_while_the_socket_is_down(con):
    from engine.live.engine import StatusEvent

    live_banner = "LIVE · Upbit · KRW-BTC 1m · no champion model for KRW-BTC unit 1"
    app = UpquantApp(con, session_factory=demo_factory(con, 5, banner=live_banner, mode="live"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        banner = app.screen.query_one(SessionBanner)
        assert banner.text == live_banner and banner.has_class("-live")
        engine = app.session.engine
        engine.publish(StatusEvent("Upbit stream dropped (reset); reconnecting in 1.2s", "warning",
                                   connected=False))
        await pilot.pause()
        assert banner.has_class("-warning") and banner.text.startswith("DISCONNECTED · Upbit stream dropped")
        engine.publish(StatusEvent("a status that is not about the socket", "info"))
        await pilot.pause()
        assert banner.text.startswith("DISCONNECTED")
        engine.publish(StatusEvent("Upbit live: streaming 1 markets 1m", "info", connected=True))
        await pilot.pause()
        assert banner.text == live_banner and banner.has_class("-live")


async def test_model_names_and_reasons_with_markup_are_shown_as_written(con):
    """A model named with `[/]` (a markup closing tag) and a reason with `[low, high]` render in
    the signal log and the prediction panel as written, instead of crashing the screen."""
    upsert_candles(con, demo_candles(3000, MARKET, UNIT, seed=7, start=START))
    report = train_model(
        con, "xgboost", MARKET, UNIT, params={"n_estimators": 5}, name="odd[/]name[bold]"
    )
    model, reason = load_champion(con, MARKET, UNIT)
    assert model is not None, reason
    app = UpquantApp(
        con,
        session_factory=demo_factory(
            con, 30, model=model, mode="replay", banner=f"REPLAY · [low, high] {reason}"
        ),
    )
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        panel, log = app.screen.query_one(PredictionPanel), app.screen.query_one(SignalLog)
        assert report.model.ref == "odd[/]name[bold]@1"
        assert "odd[/]name[bold]@1" in _plain(panel.render())
        assert str(log.get_row_at(log.row_count - 1)[3]) == report.model.ref
        assert app.screen.query_one(SessionBanner).text.startswith("REPLAY · [low, high]")
        app.screen.query_one(SignalLog).render_line(0)  # a cell parsed as markup raises here


def test_engine_events_become_one_message_each_and_forming_updates_coalesce():
    """The one boundary between the engine and Textual: each event kind has its message; a
    queued forming-candle update gives way to the next one, nothing else does."""
    from engine.live.engine import CandleEvent, StatusEvent
    from tui import messages

    candle = {"ts": START, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0}
    forming = messages.from_engine(CandleEvent(candle, closed=False))
    closed = messages.from_engine(CandleEvent(candle, closed=True))
    status = messages.from_engine(StatusEvent("reconnecting", "warning", connected=False))
    assert isinstance(forming, messages.FormingCandle) and forming.candle is candle
    assert isinstance(closed, messages.CandleClosed) and closed.candle is candle
    assert isinstance(status, messages.FeedStatus)
    assert (status.text, status.level, status.connected) == ("reconnecting", "warning", False)
    assert forming.can_replace(messages.FormingCandle(candle))
    assert not forming.can_replace(closed) and not closed.can_replace(forming)
