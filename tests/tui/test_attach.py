"""A TUI attached to a real `upquant serve` process: it starts the server's session (none
runs yet), draws the server's candles and signals as they arrive over the events WebSocket,
its threshold keys move the server's threshold, a dropped server reads DISCONNECTED and the
TUI reconnects to the server back on the same port, and quitting leaves the server (and its
session) running."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from engine.server.lifecycle import read_server_info, read_token
from store.candles import upsert_candles
from store.db import connect
from tests.tui.test_host import Terminal, until
from tests.tui.test_serve import Served, call, ping, start
from tests.tui.test_tui import SIZE
from tui import messages
from tui.app import UpquantApp
from tui.remote import RemoteSession, attach
from tui.widgets import CandleChart, PredictionPanel, SessionBanner, SignalLog, StatusLine

pytestmark = pytest.mark.slow

MARKET, UNIT = "KRW-BTC", "1"
STORED = 1500  # real candles stored before the server starts: the replay plays the newest


@pytest.fixture
def served(home: Path, btc_1m: pd.DataFrame) -> Iterator[Served]:
    """A real server on a home holding real candles (stored before it starts)."""
    with connect() as con:
        upsert_candles(con, btc_1m.head(STORED))
    server = start(home)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.communicate()


def status_of(url: str, token: str) -> dict[str, object]:
    code, answer = call(url, "live_status", token, {})
    assert code == 200, answer
    return answer


async def test_an_attached_tui_draws_the_servers_session_and_leaves_it_running(
    served: Served,
) -> None:
    token = read_token()
    assert token is not None
    assert status_of(served.url, token)["running"] is False
    factory = partial(
        attach, served.url, token, MARKET, UNIT, offline=True, replay_delay=0.2,
        replay_candles=1000,
    )
    app = UpquantApp(None, MARKET, UNIT, session_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.view, RemoteSession), "attached")
        view = app.view
        assert isinstance(view, RemoteSession)
        live = status_of(served.url, token)
        assert live["running"] is True and live["mode"] == "replay"  # the TUI started it
        assert (live["market"], live["unit"]) == (MARKET, UNIT)
        banner = app.screen.query_one(SessionBanner)
        await until(pilot, lambda: str(live["banner"]) in banner.text, "the server's banner")
        log, chart = app.screen.query_one(SignalLog), app.screen.query_one(CandleChart)
        await until(pilot, lambda: log.row_count >= 3, "signals over the socket")
        # the server's engine decided them: its window's candles and its signals
        newest = log.signals[-1]
        assert newest.market == MARKET and newest.source.startswith("sma-cross")
        assert chart.bars[-1].ts >= newest.ts and len(chart.bars) > 30
        panel = app.screen.query_one(PredictionPanel)
        assert panel.model_ref == "rule: sma-cross(10,30)" and panel.threshold == 0.5

        await pilot.press("+")
        assert panel.threshold == 0.55
        await until(
            pilot, lambda: status_of(served.url, token)["threshold"] == 0.55,
            "the server's threshold moved",
        )
        await pilot.press("q")
    # the server and its session outlive the TUI
    assert served.process.poll() is None and ping(served.url)["ok"] is True
    after = status_of(served.url, token)
    assert after["running"] is True and after["threshold"] == 0.55
    code, err = served.stop(signal.SIGTERM)
    assert code == 0, err


async def test_a_running_session_is_shown_and_a_dropped_server_reads_disconnected(
    home: Path, btc_1m: pd.DataFrame
) -> None:
    """`upquant serve --market KRW-BTC --offline` runs its own session: a TUI asking for
    KRW-ETH shows that one and says so; the server stopping reads DISCONNECTED until a server
    is back on the same port, whose new session the TUI then draws by itself, and follows a
server restarted on another port (server.json says where)."""
    with connect() as con:
        upsert_candles(con, btc_1m.head(STORED))
    options = ("--market", MARKET, "--offline", "--replay-delay", "0.2")
    served = start(home, *options)
    token = read_token()
    assert token is not None
    factory = partial(attach, served.url, token, "KRW-ETH", UNIT, offline=True)
    app = UpquantApp(None, "KRW-ETH", UNIT, session_factory=factory)
    again: Served | None = None
    moved: Served | None = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            log, status = app.screen.query_one(SignalLog), app.screen.query_one(StatusLine)
            await until(pilot, lambda: log.row_count >= 1, "a first signal")
            assert log.signals[-1].market == MARKET  # the server's session, not the one asked
            chart = app.screen.query_one(CandleChart)
            assert chart.border_title == f"{MARKET} · {UNIT}m"
            view = app.view
            assert isinstance(view, RemoteSession) and view.note is not None
            assert f"the server runs {MARKET} {UNIT}m, not KRW-ETH {UNIT}m" in view.note
            first = view.status["started"]

            code, err = served.stop(signal.SIGTERM)
            assert code == 0, err
            await until(pilot, lambda: status.text.startswith("DISCONNECTED"), "DISCONNECTED")
            assert served.url in status.text and status.has_class("-warning")
            # a server back on the same port (its own new session): found by itself
            port = served.url.rsplit(":", 1)[1]
            again = start(home, "--port", port, *options)
            assert again.url == served.url
            await until(
                pilot, lambda: view.status["started"] != first, "the new session drawn"
            )
            await until(pilot, lambda: not status.text.startswith("DISCONNECTED"), "reconnected")
            seen = log.row_count
            await until(pilot, lambda: log.row_count > seen, "signals of the new session")
            # stopped again, and back on another port: server.json says where
            code, err = again.stop(signal.SIGTERM)
            assert code == 0, err
            await until(pilot, lambda: status.text.startswith("DISCONNECTED"), "DISCONNECTED")
            moved = start(home, *options)
            await until(
                pilot,
                lambda: view.url == moved.url and not status.text.startswith("DISCONNECTED"),
                "the TUI followed the server to its new port",
            )
            seen = log.row_count
            await until(pilot, lambda: log.row_count > seen, "signals from the moved server")
            await pilot.press("q")
    finally:
        for server in (served, again, moved):
            if server is not None and server.process.poll() is None:
                server.process.kill()
                server.process.communicate()


def test_upquant_tui_in_a_terminal_attaches_and_leaves_the_server_running(
    served: Served,
) -> None:
    """The command itself: with a server running, `upquant tui` is its client (it hosts
    nothing), and quitting says the server was left running, which it is."""
    tui = Terminal(served.home, "tui", "--offline", "--replay-delay", "0.2")
    tui.until(lambda: "attached to" in tui.text, "the TUI attached")
    token = read_token(served.home)
    assert token is not None
    assert status_of(served.url, token)["running"] is True  # the TUI started the session
    assert tui.quit() == 0, tui.text
    assert "left the server running at" in tui.text and str(served.process.pid) in tui.text
    assert served.process.poll() is None and ping(served.url)["ok"] is True
    assert status_of(served.url, token)["running"] is True
    assert read_server_info(served.home).pid == served.process.pid  # type: ignore[union-attr]


def test_wire_frames_become_the_engines_messages() -> None:
    """from_wire beside from_engine: each frame kind of the events contract."""
    ts = "2025-09-01T00:05:00Z"
    candle = {"ts": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0,
              "value": 4.0}
    closed = messages.from_wire(
        {"type": "candle", "market": MARKET, "unit": UNIT, "closed": True, "candle": candle}
    )
    assert isinstance(closed, messages.CandleClosed)
    assert closed.candle["ts"] == pd.Timestamp(ts) and closed.candle["close"] == 1.5
    forming = messages.from_wire(
        {"type": "candle", "market": MARKET, "unit": UNIT, "closed": False, "candle": candle}
    )
    assert isinstance(forming, messages.FormingCandle)
    frame = {"type": "signal", "market": MARKET, "unit": UNIT, "probs": [0.2, 0.3, 0.5],
             "signal": {"ts": ts, "market": MARKET, "action": "buy", "confidence": 0.5,
                        "source": "xgb@1", "reason": "p(buy)=0.50", "model_id": 3}}
    received = messages.from_wire(json.loads(json.dumps(frame)))
    assert isinstance(received, messages.SignalReceived)
    assert received.signal.ts == pd.Timestamp(ts) and received.signal.model_id == 3
    assert received.probs is not None and list(received.probs) == [0.2, 0.3, 0.5]
    status = messages.from_wire(
        {"type": "status", "text": "Upbit stream dropped", "level": "warning", "connected": False}
    )
    assert isinstance(status, messages.FeedStatus)
    assert (status.text, status.level, status.connected) == ("Upbit stream dropped", "warning", False)
    assert messages.from_wire({"type": "job", "run": 1, "status": "running"}) is None
