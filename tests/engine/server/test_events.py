"""`GET /api/v1/events` over real WebSockets on 127.0.0.1, with a real store of real candles:
the hello first, auth (no token 401, a read token listens but may not start a session), a
replay session's candle and signal frames equal to what the store holds afterwards, the
coalescing rule for a reader that falls behind (forming candles replaced, every closed
candle and signal kept; too far behind: closed with 1013), job frames while a tiny model
trains, and a real `upquant serve --market ... --offline` streaming its session and, on
SIGTERM, leaving every signal it played in the store (exit 0)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.live.engine import CandleEvent, SignalEvent
from engine.server.app import create_app
from engine.service import Workstation
from engine.service.events import engine_event
from engine.trading.strategies import Signal
from store.candles import load_candles, upsert_candles
from store.db import connect
from store.signals import load_signals
from store.tokens import create_token
from tests.conftest import shared_candles

pytestmark = pytest.mark.slow

FRAME_WAIT_S = 240.0  # a hang guard, never a speed check
REPLAY = {
    "market": "KRW-BTC",
    "unit": "1",
    "offline": True,
    "replay_delay": 0,
    "replay_candles": 150,
}


@pytest.fixture
def ws(con, btc_1m: pd.DataFrame) -> Workstation:  # type: ignore[no-untyped-def]
    upsert_candles(con, btc_1m.iloc[:3000])
    return Workstation(con)


@pytest.fixture
def tokens(con) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}


@pytest.fixture
async def client(ws: Workstation, tokens: dict[str, str]) -> AsyncIterator[TestClient]:
    test_client = TestClient(TestServer(create_app(ws), host="127.0.0.1"))
    await test_client.start_server()
    yield test_client
    await ws.stop_live_async()
    ws.shutdown_jobs()
    await test_client.close()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def frame(sock: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await sock.receive(timeout=FRAME_WAIT_S)
    assert message.type == aiohttp.WSMsgType.TEXT, (message.type, message.data, message.extra)
    return message.json()  # type: ignore[no-any-return]


async def until(sock: aiohttp.ClientWebSocketResponse, last: Any) -> list[dict[str, Any]]:
    """Frames up to and including the first for which `last(frame)` holds."""
    frames = []
    while True:
        frames.append(await frame(sock))
        if last(frames[-1]):
            return frames


async def test_hello_comes_first_and_the_stream_needs_a_token(
    client: TestClient, tokens: dict[str, str]
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as bare:
        await client.ws_connect("/api/v1/events")
    assert bare.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as bad:
        await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"] + "x"))
    assert bad.value.status == 401

    sock = await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"]))
    hello = await frame(sock)
    assert hello["type"] == "hello"
    assert hello["server"]["pid"] == os.getpid() and hello["server"]["store"].endswith(".duckdb")
    assert hello["live"]["running"] is False
    # a read token listens, but may not start a session
    started = await client.post("/api/v1/live", json=REPLAY, headers=bearer(tokens["read"]))
    assert started.status == 403
    await sock.close()


async def test_a_replay_streams_the_candles_and_signals_the_store_then_holds(
    client: TestClient,
    tokens: dict[str, str],
    ws: Workstation,
    con,  # type: ignore[no-untyped-def]
) -> None:
    sock = await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"]))
    assert (await frame(sock))["type"] == "hello"
    answer = await client.post("/api/v1/live", json=REPLAY, headers=bearer(tokens["write"]))
    assert answer.status == 200, await answer.text()
    frames = await until(sock, lambda f: f["type"] == "live" and not f["live"]["running"])
    await sock.close()

    opened = next(f for f in frames if f["type"] == "live")["live"]
    assert opened["running"] is True and opened["mode"] == "replay"
    ended = frames[-1]["live"]
    assert ended["mode"] == "replay" and ended["signals"] == 150 and "ended" in ended["ended"]
    candles = [f for f in frames if f["type"] == "candle"]
    signals = [f for f in frames if f["type"] == "signal"]
    assert all(f["closed"] and (f["market"], f["unit"]) == ("KRW-BTC", "1") for f in candles)
    played = load_candles(con, "KRW-BTC", "1").tail(150)
    assert [pd.Timestamp(f["candle"]["ts"]) for f in candles] == list(played["ts"])
    assert [f["candle"]["close"] for f in candles] == list(played["close"])
    stored = load_signals(con, "KRW-BTC", last=10_000)
    assert len(signals) == len(stored) == 150
    assert [pd.Timestamp(f["signal"]["ts"]) for f in signals] == list(stored["ts"])
    assert [f["signal"]["action"] for f in signals] == list(stored["action"])
    assert [f["signal"]["source"] for f in signals] == list(stored["source"])
    assert all(
        f["probs"] is None and f["signal"]["market"] == "KRW-BTC" for f in signals
    )  # no model: the rule


def forming(ts: pd.Timestamp, close: float, market: str = "KRW-BTC") -> dict[str, Any]:
    candle = {
        "ts": ts,
        "open": 1.0,
        "high": 2.0,
        "low": 0.5,
        "close": close,
        "volume": 3.0,
        "value": None,
    }
    return engine_event(CandleEvent(candle, closed=False), market, "1")


async def test_a_reader_behind_loses_forming_candles_only(
    client: TestClient, tokens: dict[str, str], ws: Workstation
) -> None:
    sock = await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"]))
    assert (await frame(sock))["type"] == "hello"
    hub = ws.events
    start = pd.Timestamp("2026-01-01", tz="UTC")
    # a burst published on the loop without yielding: the sender cannot write any of it yet,
    # exactly as when the client reads slower than the engine publishes
    for minute in range(60):
        ts = start + pd.Timedelta(minutes=minute)
        for tick in range(5):
            hub.publish(forming(ts, 100.0 + minute + tick / 10))
            hub.publish(forming(ts, 200.0 + minute + tick / 10, "KRW-ETH"))
        candle = {
            "ts": ts,
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 100.0 + minute,
            "volume": 3.0,
            "value": 4.0,
        }
        hub.publish(engine_event(CandleEvent(candle, closed=True), "KRW-BTC", "1"))
        hub.publish(
            engine_event(
                SignalEvent(Signal(ts, "KRW-BTC", "hold", 0.0, "rule", "why"), None), "KRW-BTC", "1"
            )
        )
    hub.publish({"type": "status", "text": "end of burst", "level": "info", "connected": None})
    frames = await until(sock, lambda f: f["type"] == "status")
    await sock.close()

    closed = [f for f in frames if f["type"] == "candle" and f["closed"]]
    assert [f["candle"]["close"] for f in closed] == [100.0 + m for m in range(60)]
    assert len([f for f in frames if f["type"] == "signal"]) == 60
    kept = [
        (f["market"], f["candle"]["close"])
        for f in frames
        if f["type"] == "candle" and not f["closed"]
    ]
    assert kept == [("KRW-BTC", 159.4), ("KRW-ETH", 259.4)]  # only the newest price of each


async def test_a_reader_too_far_behind_is_closed_with_1013_and_may_come_back(
    client: TestClient, tokens: dict[str, str], ws: Workstation
) -> None:
    ws.events.bound = 20
    sock = await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"]))
    assert (await frame(sock))["type"] == "hello"
    start = pd.Timestamp("2026-01-01", tz="UTC")
    for minute in range(21):  # one closed candle more than it may hold
        candle = {
            "ts": start + pd.Timedelta(minutes=minute),
            "open": 1,
            "high": 1,
            "low": 1,
            "close": 1,
            "volume": 1,
            "value": 1,
        }
        ws.events.publish(engine_event(CandleEvent(candle, closed=True), "KRW-BTC", "1"))
    message = await sock.receive(timeout=FRAME_WAIT_S)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1013, message
    assert ws.events.subscribers == 0
    again = await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"]))
    assert (await frame(again))["type"] == "hello"
    await again.close()


async def test_job_frames_follow_a_tiny_training_run(
    client: TestClient, tokens: dict[str, str]
) -> None:
    sock = await client.ws_connect("/api/v1/events", headers=bearer(tokens["read"]))
    assert (await frame(sock))["type"] == "hello"
    body = {"kind": "xgboost", "market": "KRW-BTC", "n_estimators": 20, "device": "cpu"}
    answer = await client.post(
        "/api/v1/ops/train_start", json=body, headers=bearer(tokens["write"])
    )
    assert answer.status == 200, await answer.text()
    run = (await answer.json())["run"]
    frames = await until(
        sock, lambda f: f["type"] == "job" and f["status"] not in ("queued", "running")
    )
    await sock.close()
    jobs = [f for f in frames if f["type"] == "job"]
    assert {f["run"] for f in jobs} == {run}
    assert jobs[0]["status"] == "running"
    assert jobs[-1] == {
        "type": "job",
        "run": run,
        "status": "finished",
        "progress": 1.0,
        "message": "registered xgboost-KRW-BTC-1@1",
    }


async def test_serve_with_a_market_streams_its_session_and_sigterm_stores_every_signal(
    home: Path,
) -> None:
    from tests.tui.test_serve import start

    con = connect()
    upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
    con.close()
    served = start(
        home,
        "--quiet",
        "--market",
        "KRW-BTC",
        "--offline",
        "--replay-delay",
        "0.05",
        "--replay-candles",
        "2400",
    )
    try:
        token = (home / "api-token").read_text().strip()
        async with (
            aiohttp.ClientSession(headers=bearer(token)) as http,
            http.ws_connect(f"{served.url}/api/v1/events") as sock,
        ):
            hello = await frame(sock)
            assert hello["type"] == "hello"
            live = hello["live"]
            if not live[
                "running"
            ]:  # server.json is written once it listens, the session opens next
                live = (await until(sock, lambda f: f["type"] == "live"))[-1]["live"]
            assert (
                live["running"] is True and live["mode"] == "replay" and live["market"] == "KRW-BTC"
            )
            streamed: list[dict[str, Any]] = []
            while len([f for f in streamed if f["type"] == "signal"]) < 30:
                streamed.append(await frame(sock))
            served.process.send_signal(signal.SIGTERM)
            while True:  # the stream ends with the session's end, then the server's close
                message = await sock.receive(timeout=FRAME_WAIT_S)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                streamed.append(message.json())
        _out, err = served.process.communicate(timeout=FRAME_WAIT_S)
        assert served.process.returncode == 0, err
    finally:
        if served.process.poll() is None:
            served.process.kill()
            served.process.communicate()
    ended = [f["live"] for f in streamed if f["type"] == "live" and not f["live"]["running"]]
    assert ended and ended[-1]["ended"] == "stopped"
    played = ended[-1]["signals"]
    assert 30 <= played < 2400  # stopped mid-replay, with signals still buffered (batches of 50)
    con = connect()
    try:
        stored = load_signals(con, "KRW-BTC", last=10_000)
    finally:
        con.close()
    assert len(stored) == played  # every signal played is stored
    # the stream joined a running session: what it showed is a run of what is stored
    shown = [
        (pd.Timestamp(f["signal"]["ts"]), f["signal"]["action"])
        for f in streamed
        if f["type"] == "signal"
    ]
    kept = list(zip(stored["ts"], stored["action"], strict=True))
    first = kept.index(shown[0])
    assert kept[first : first + len(shown)] == shown and first + len(shown) == len(kept)
