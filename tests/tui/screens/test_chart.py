"""The chart screen on the frozen store (real candles, real engine lanes, the Workstation
facade): overlays by the research definitions, unit switching, paging back through stored
history, zoom, stored signals as markers, and a session of two markets of which the chart
draws only the shown one's live candles."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.live.engine import CandleEvent, SignalEvent
from engine.live.sources import demo_candles
from engine.research.features import FeatureSpec, compute_features
from engine.trading.rules import rsi_values
from engine.trading.strategies import Signal
from store.candles import load_candles
from tests.tui.screens.conftest import FROZEN_NOW, settle
from tests.tui.test_tui import _plain
from tui.screens import MainScreen
from tui.widgets import CandleChart, PredictionPanel, SignalLog
from tui.widgets.chart_overlays import bollinger, ema, rsi, sma

BTC, ETH = "KRW-BTC", "KRW-ETH"
BIG, SMALL = (160, 48), (80, 24)


def test_overlays_equal_the_research_definitions() -> None:
    """SMA, EMA and Bollinger as the features compute them (sma_ratio, ema_ratio, bbands),
    RSI as the rsi rule decides on it; the chart draws those arrays."""
    candles = demo_candles(600, BTC, "1", seed=5)
    closes = candles["close"].to_numpy()
    spec = FeatureSpec(
        features=(
            {"kind": "sma_ratio", "lengths": [20]},
            {"kind": "ema_ratio", "lengths": [50]},
            {"kind": "bbands", "length": 20, "std": 2.0},
        )
    )
    # converged=False: the EMA seeded where the chart seeds it (its first candles), not cut
    features = compute_features(candles, spec, unit="1", converged=False)
    at = candles["ts"].isin(features.index).to_numpy()
    lower, upper = bollinger(closes)
    mid = (lower + upper) / 2
    ours = {
        "sma_ratio_20": closes / sma(closes) - 1,
        "ema_ratio_50": closes / ema(closes) - 1,
        "bb_pct_20": (closes - lower) / (upper - lower),
        "bb_width_20": (upper - lower) / mid,
    }
    for column, values in ours.items():
        theirs = features[column].to_numpy()
        kept = np.isfinite(theirs)  # the features' warm-up rows are NaN
        assert kept.sum() > 400
        np.testing.assert_allclose(values[at][kept], theirs[kept], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(rsi(closes), rsi_values(closes, 14))
    chart = CandleChart()
    chart.load(candles)
    lines, rsi_line = chart.indicators()
    np.testing.assert_array_equal(lines["sma"][0], sma(closes))
    np.testing.assert_array_equal(lines["bb"][1], upper)
    np.testing.assert_array_equal(rsi_line, rsi_values(closes, 14))


def _chart(app: Any) -> CandleChart:
    return app.chart_screen.query_one(CandleChart)


async def test_unit_switch_loads_the_other_units_candles(frozen_app, frozen_ws) -> None:
    app = frozen_app(start="chart")
    async with app.run_test(size=BIG) as pilot:
        await settle(pilot)
        chart = _chart(app)
        assert chart.bars[-1].ts == pd.Timestamp("2025-10-04 01:19", tz="UTC")
        for _ in range(4):  # 1 -> 3 -> 5 -> 15 -> 60 minutes
            await pilot.press("t")
            await settle(pilot)
        screen = app.chart_screen
        assert screen.unit == "60" and chart.border_title == f"{BTC} · 60m"
        stored = load_candles(frozen_ws.con(), BTC, "60")
        assert [bar.ts for bar in chart.bars] == list(stored["ts"])
        assert [bar.close for bar in chart.bars] == list(stored["close"])
        assert not screen.watched  # the session's unit is 1m: no live candles drawn
        await pilot.press("t")  # 240m: nothing stored
        await settle(pilot)
        assert chart.bars == [] and "no stored KRW-BTC 240m candles" in chart.empty_text


@pytest.mark.slow
async def test_scroll_back_pages_stored_history_with_bounded_memory(
    frozen_app, frozen_ws, monkeypatch
) -> None:
    stored = load_candles(frozen_ws.con(), BTC, "1")
    app = frozen_app(start="chart")
    async with app.run_test(size=BIG) as pilot:
        await settle(pilot)
        chart, screen = _chart(app), app.chart_screen
        assert screen.more and len(chart.bars) < len(stored)
        assert chart.bars[0].ts > stored["ts"].iloc[0]  # a page, not the whole series
        await pilot.press(*["left_square_bracket"] * 4)  # 8 candles a column: long strides
        for _ in range(300):
            if not screen.more and chart.at_oldest:
                break
            await pilot.press("left")
            await settle(pilot)
        assert not screen.more and chart.at_oldest and chart.back > 0
        assert [bar.ts for bar in chart.bars] == list(stored["ts"])  # every candle, once
        await pilot.press("end")
        await settle(pilot)
        assert chart.back == 0 and chart.live

        monkeypatch.setattr(CandleChart, "MAX_CANDLES", 1500)
        screen.show_market(BTC, "1")
        await settle(pilot)
        for _ in range(200):
            if not chart.live:
                break
            await pilot.press("left")
            await settle(pilot)
        assert not chart.live and len(chart.bars) <= 1500  # the newest dropped, not kept
        assert chart.bars[0].ts == stored["ts"].iloc[0]
        await pilot.press("end")  # back to the newest: the lane's window again
        await settle(pilot)
        assert chart.live and chart.bars[-1].ts == stored["ts"].iloc[-1]


async def test_zoom_and_times_in_kst_until_the_utc_key(frozen_app) -> None:
    app = frozen_app(start="chart")
    async with app.run_test(size=BIG) as pilot:
        await settle(pilot)
        chart = _chart(app)
        panel = app.chart_screen.query_one(PredictionPanel)
        kst = str(chart.render())
        assert "10:" in kst  # 01:19 UTC is 10:19 KST
        assert "01:19 UTC" not in _plain(panel.render()) and "KST" in _plain(panel.render())
        await pilot.press("u")
        await pilot.pause()
        assert chart.utc and "01:" in str(chart.render()) and str(chart.render()) != kst
        assert "UTC" in _plain(panel.render()) and FROZEN_NOW.hour == 1
        one = chart.shown  # a candle and a gap per candle
        await pilot.press("left_square_bracket")
        assert chart.per_group == 1 and abs(chart.shown - 2 * one) <= 1  # no gap
        await pilot.press("left_square_bracket")
        assert chart.per_group == 2 and abs(chart.shown - 4 * one) <= 2  # two candles merged
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        assert abs(chart.shown - one // 2) <= 1  # three columns of body and a gap
        assert "█" in str(chart.render())


async def test_markers_at_the_stored_signals_candles(frozen_app, frozen_ws) -> None:
    from engine.service.stored import SignalsRequest

    acted = [
        s
        for s in frozen_ws.signals(SignalsRequest(market=ETH, unit="1", last=1000)).root
        if s.action != "hold"
    ]
    assert {s.action for s in acted} == {"buy", "sell"}
    app = frozen_app(start="chart")
    async with app.run_test(size=BIG) as pilot:
        await settle(pilot)
        app.open_chart(ETH, "1")
        await settle(pilot)
        chart = _chart(app)
        assert chart.marks == {pd.Timestamp(s.ts).tz_convert("UTC"): s.action for s in acted}
        held = {bar.ts for bar in chart.bars}
        assert set(chart.marks) <= held
        await pilot.press("left_square_bracket", "left_square_bracket")  # 2 per column
        text = str(chart.render())
        assert "▲" in text and "▼" in text
        # not watched: the panel shows the newest stored signal and says so
        panel = app.chart_screen.query_one(PredictionPanel)
        assert panel.model_ref == "not watched" and panel.signal is not None


async def _loaded(pilot: Any) -> None:
    """Wait for the chart's loads (the session's feed of this test never ends)."""
    for _ in range(400):
        await pilot.pause(0.02)
        if not any(w.group in ("chart", "chart-page") and w.is_running for w in pilot.app.workers):
            break
    await pilot.pause()


def _two_market_session(ws: Any) -> tuple[Any, asyncio.Event]:
    """A live-like session watching KRW-BTC and KRW-ETH (real lanes primed from the store)
    whose feed waits until the test releases it."""
    from engine.live.markets import MarketsEngine
    from engine.live.session import Session

    gate = asyncio.Event()

    async def feed() -> int:
        await gate.wait()
        return 0

    async def factory() -> Session:
        con = ws.con()
        engine = MarketsEngine(con, "1", mode="live", persist_signals=False)
        for market in (BTC, ETH):
            lane = engine.add_market(market, no_model_reason="test: the rule decides")
            engine.prime(market, load_candles(con, market, "1", last=lane.window))
        return Session(engine.lanes[BTC], "live", "LIVE (test) · 2 markets", feed(), engine)

    return factory, gate


async def test_show_market_switches_market_and_draws_only_its_live_candles(
    frozen_app, frozen_ws
) -> None:
    factory, gate = _two_market_session(frozen_ws)
    app = frozen_app(start="chart", session_factory=factory)
    con = frozen_ws.con()
    eth = load_candles(con, ETH, "1")
    async with app.run_test(size=BIG) as pilot:
        await _loaded(pilot)
        chart, screen = _chart(app), app.chart_screen
        btc = load_candles(con, BTC, "1")
        assert screen.market == BTC and chart.bars[-1].close == btc["close"].iloc[-1]
        app.open_chart(ETH)
        await _loaded(pilot)
        assert isinstance(app.screen, MainScreen) and screen.market == ETH and screen.watched
        assert chart.bars[-1].close == eth["close"].iloc[-1] and chart.live
        lanes = app.session.markets.lanes
        after = eth["ts"].iloc[-1] + pd.Timedelta(minutes=1)
        eth_candle = {
            "market": ETH,
            "unit": "1",
            "ts": after,
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 3.0,
        }
        btc_candle = {**eth_candle, "market": BTC, "close": 7.0, "high": 8.0}
        lanes[BTC].publish(CandleEvent(btc_candle, closed=True))
        lanes[ETH].publish(CandleEvent(eth_candle, closed=False))
        await pilot.pause()
        assert chart.bars[-1].close == 1.5  # ETH's forming candle, BTC's never drawn
        assert all(bar.close != 7.0 for bar in chart.bars)
        # signals: the shown market's in the panel, the log and the markers; not another's
        lanes[ETH].publish(SignalEvent(Signal(after, ETH, "sell", 0.8, "rule", "t", None), None))
        lanes[BTC].publish(SignalEvent(Signal(after, BTC, "buy", 0.9, "rule", "t", None), None))
        await pilot.pause()
        panel = screen.query_one(PredictionPanel)
        assert panel.signal is not None and panel.signal.market == ETH
        assert [row.signal.market for row in screen.query_one(SignalLog).shown] == [ETH]
        assert chart.marks[after] == "sell"
        # the threshold keys move the shown market's lane only
        await pilot.press("+")
        assert lanes[ETH].threshold == pytest.approx(0.55) and lanes[BTC].threshold == 0.5
        assert screen.query_one(PredictionPanel).threshold == pytest.approx(0.55)
        gate.set()


def test_chart_snapshot_80x24(frozen_app, snap_compare) -> None:
    assert snap_compare(frozen_app(start="chart"), terminal_size=SMALL, run_before=settle)


def test_chart_snapshot_160x48(frozen_app, snap_compare) -> None:
    assert snap_compare(frozen_app(start="chart"), terminal_size=BIG, run_before=settle)


@pytest.mark.slow
async def test_attached_to_a_server_the_chart_follows_the_shown_markets_lane(
    frozen_app, frozen_ws
) -> None:
    """A real server (in this process, on 127.0.0.1) replays a watchlist of two markets; the
    attached TUI's chart switches to the second market, draws its window and only its live
    candles (the events stream carries both), and its threshold keys move that lane only."""
    from functools import partial

    from engine.server.lifecycle import read_token
    from engine.service.live import LiveStartRequest
    from tui.client import HttpWorkstation
    from tui.host import hosting
    from tui.remote import attach

    con = frozen_ws.con()
    eth = load_candles(con, ETH, "1").set_index("ts")["close"]
    btc = load_candles(con, BTC, "1").set_index("ts")["close"]
    async with hosting(frozen_ws) as info:
        token = read_token()
        assert token is not None
        watchlist = {"markets": [BTC, ETH], "unit": "1", "offline": True}
        await frozen_ws.start_live(
            LiveStartRequest.model_validate(
                {**watchlist, "replay_delay": 0.1, "replay_candles": 40}
            )
        )
        with HttpWorkstation(info.url, token) as facade:
            factory = partial(attach, info.url, token, BTC, "1")
            app = frozen_app(start="chart", session_factory=factory, facade=facade)
            async with app.run_test(size=BIG) as pilot:
                chart, screen = _chart(app), app.chart_screen
                for _ in range(200):
                    await pilot.pause(0.05)
                    if chart.bars and screen.view is not None:
                        break
                app.open_chart(ETH)
                await _loaded(pilot)
                assert screen.watched and chart.bars
                first = chart.bars[-1].ts
                for _ in range(200):  # the replay's next ETH candles arrive as frames
                    await pilot.pause(0.05)
                    if chart.bars[-1].ts > first + pd.Timedelta(minutes=2):
                        break
                drawn = [bar for bar in chart.bars if bar.ts >= first]
                assert len(drawn) >= 3
                assert all(bar.close == eth[bar.ts] for bar in drawn)
                assert any(btc[bar.ts] != bar.close for bar in drawn)
                await pilot.press("+")
                await pilot.pause(0.5)
                lanes = frozen_ws.live_session.markets.lanes
                assert lanes[ETH].threshold == pytest.approx(0.55)
                assert lanes[BTC].threshold == pytest.approx(0.5)
