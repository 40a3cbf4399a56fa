"""The live operations over real HTTP on 127.0.0.1 (aiohttp's test server, the server's own
app) with a real store holding real KRW-BTC candles: a replay session started, its status,
window and threshold, a second start refused, stop flushing every signal it decided, a replay
that plays out saying so, a one-shot Workstation refusing to start one, and the stored-data
routes (markets, candles, signals, data status) answering what the store holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import ServiceError, Workstation
from engine.service.live import LiveStartRequest, LiveStatusRequest
from store.candles import load_candles, upsert_candles
from store.signals import load_signals
from store.tokens import create_token
from tests.conftest import shared_candles

pytestmark = pytest.mark.slow

STORED = 1500
# a replay slow enough to be running through the whole test (a candle every 30 s)
SLOW = {
    "market": "KRW-BTC",
    "unit": "1",
    "offline": True,
    "replay_delay": 30.0,
    "replay_candles": 200,
}


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    async def __call__(
        self, method: str, path: str, scope: str = "write", **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"}
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            text = await response.text()
            assert "Traceback" not in text
            return response.status, await response.json()


@pytest.fixture
def ws(con) -> Workstation:  # type: ignore[no-untyped-def]
    upsert_candles(con, shared_candles("KRW-BTC_1m.csv", STORED))
    upsert_candles(con, shared_candles("KRW-ETH_1m.csv", 300, market="KRW-ETH"))
    return Workstation(con)


@pytest.fixture
async def api(ws: Workstation, con) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    client = TestClient(TestServer(create_app(ws), host="127.0.0.1"))
    await client.start_server()
    yield Api(client, tokens)
    await ws.stop_live_async()
    await client.close()


async def test_start_status_history_threshold_conflict_and_stop(
    api: Api, ws: Workstation, con
) -> None:  # type: ignore[no-untyped-def]
    status, idle = await api("GET", "/api/v1/live", "read")
    assert status == 200 and idle["running"] is False and idle["market"] is None

    status, refused = await api("POST", "/api/v1/live", "read", json=SLOW)
    assert status == 403 and "write" in refused["hint"]

    status, started = await api("POST", "/api/v1/live", json=SLOW)
    assert status == 200, started
    assert started["running"] is True and started["mode"] == "replay"
    assert (started["market"], started["unit"], started["threshold"]) == ("KRW-BTC", "1", 0.5)
    assert "REPLAY" in started["banner"] and started["model_ref"] is None
    assert started["rule"] and started["no_model_reason"] and started["started"]
    assert ws.live_session is not None and ws.live_session.engine.market == "KRW-BTC"

    status, second = await api("POST", "/api/v1/live", json={**SLOW, "market": "KRW-ETH"})
    assert (
        status == 409
        and "already runs" in second["error"]
        and "DELETE /api/v1/live" in second["hint"]
    )

    status, moved = await api("PUT", "/api/v1/live/threshold", json={"threshold": 0.7})
    assert status == 200 and moved["threshold"] == 0.7
    assert ws.live_session.engine.threshold == 0.7
    for bad in (0.2, 0.99):
        status, body = await api("PUT", "/api/v1/live/threshold", json={"threshold": bad})
        assert status == 422 and "0.34" in body["error"] and "0.95" in body["error"], body
    status, body = await api("POST", "/api/v1/live", json={**SLOW, "threshold": 0.1})
    assert status == 422 and "[0.34, 0.95]" in body["error"]

    # the engine's window: a run of consecutive stored candles, the same values
    status, history = await api("GET", "/api/v1/live/history?last=50", "read")
    assert status == 200 and history["market"] == "KRW-BTC" and len(history["candles"]) == 50
    stored = load_candles(con, "KRW-BTC", "1").reset_index(drop=True)
    shown = [pd.Timestamp(c["ts"]) for c in history["candles"]]
    first = int(stored.index[stored["ts"] == shown[0]][0])
    assert list(stored["ts"].iloc[first : first + 50]) == shown
    assert list(stored["close"].iloc[first : first + 50]) == [
        c["close"] for c in history["candles"]
    ]
    assert {c["market"] for c in history["candles"]} == {"KRW-BTC"}

    # stop: every decided signal is written (replays buffer them in batches of 50)
    status, stopped = await api("DELETE", "/api/v1/live")
    assert status == 200 and stopped["running"] is False and stopped["ended"] == "stopped"
    assert stopped["mode"] == "replay" and stopped["signals"] >= 1
    assert len(load_signals(con, "KRW-BTC", last=10_000)) == stopped["signals"]
    status, after = await api("GET", "/api/v1/live", "read")
    assert after["running"] is False and after["signals"] == stopped["signals"]
    status, moved = await api("PUT", "/api/v1/live/threshold", json={"threshold": 0.6})
    assert status == 409 and "POST /api/v1/live" in moved["hint"]

    # a stopped session frees the server for the next
    status, again = await api("POST", "/api/v1/live", json={**SLOW, "market": "KRW-ETH"})
    assert status == 200 and again["market"] == "KRW-ETH" and again["started"] != started["started"]


async def test_a_replay_that_plays_out_says_so_and_stores_every_signal(
    api: Api, ws: Workstation, con
) -> None:  # type: ignore[no-untyped-def]
    body = {**SLOW, "replay_delay": 0, "replay_candles": 120}
    status, started = await api("POST", "/api/v1/ops/live_start", json=body)
    assert status == 200 and started["running"] is True
    assert ws._live is not None and ws._live.task is not None
    await ws._live.task  # the replay plays its candles and ends
    status, ended = await api("POST", "/api/v1/ops/live_status", "read", json={})
    assert ended["running"] is False and ended["mode"] == "replay"
    assert ended["candles_seen"] == 120 and ended["signals"] == 120
    assert "ended" in ended["ended"] and "120 candles" in ended["ended"]
    stored = load_signals(con, "KRW-BTC", last=10_000)
    played = load_candles(con, "KRW-BTC", "1").tail(120)
    assert list(stored["ts"]) == list(played["ts"])
    assert set(stored["mode"]) == {"replay"}


async def test_the_stored_data_routes_answer_what_the_store_holds(
    api: Api, ws: Workstation, con
) -> None:  # type: ignore[no-untyped-def]
    status, markets = await api("GET", "/api/v1/markets", "read")
    assert status == 200
    btc = shared_candles("KRW-BTC_1m.csv", STORED)
    assert [(m["market"], m["unit"], m["candles"]) for m in markets] == [
        ("KRW-BTC", "1", STORED),
        ("KRW-ETH", "1", 300),
    ]
    assert pd.Timestamp(markets[0]["first"]) == btc["ts"].iloc[0]
    assert pd.Timestamp(markets[0]["last"]) == btc["ts"].iloc[-1]

    status, page = await api("GET", "/api/v1/candles?market=KRW-BTC&unit=1&last=100", "read")
    assert status == 200 and page["more"] is True and len(page["candles"]) == 100
    assert [pd.Timestamp(c["ts"]) for c in page["candles"]] == list(btc["ts"].tail(100))
    assert [c["close"] for c in page["candles"]] == list(btc["close"].tail(100))
    assert {c["value"] for c in page["candles"]} == {None}  # unknown in the shared files
    start, end = btc["ts"].iloc[10].isoformat(), btc["ts"].iloc[20].isoformat()
    status, span = await api(
        "GET",
        "/api/v1/candles",
        "read",
        params={"market": "KRW-BTC", "from": start, "to": end, "last": "5000"},
    )
    assert status == 200 and span["more"] is False
    assert [pd.Timestamp(c["ts"]) for c in span["candles"]] == list(btc["ts"].iloc[10:20])
    status, big = await api("GET", "/api/v1/candles?market=KRW-BTC&last=10001", "read")
    assert status == 422 and "last" in big["error"]

    status, data = await api("GET", "/api/v1/data/status", "read")
    assert status == 200 and [(s["market"], s["rows"]) for s in data] == [
        ("KRW-BTC", STORED),
        ("KRW-ETH", 300),
    ]

    status, none = await api("GET", "/api/v1/signals", "read")
    assert status == 200 and none == []
    status, _started = await api(
        "POST", "/api/v1/live", json={**SLOW, "replay_delay": 0, "replay_candles": 60}
    )
    assert status == 200
    assert ws._live is not None and ws._live.task is not None
    await ws._live.task
    stored = load_signals(con, "KRW-BTC", last=10_000)
    status, newest = await api("GET", "/api/v1/signals?market=KRW-BTC&last=10", "read")
    assert status == 200 and len(newest) == 10
    assert [pd.Timestamp(s["ts"]) for s in newest] == list(stored["ts"].iloc[::-1].head(10))
    assert all(s["mode"] == "replay" and s["market"] == "KRW-BTC" for s in newest)
    assert {s["unit"] for s in newest} == {"1"} and set(stored["unit"]) == {"1"}
    status, by_unit = await api("GET", "/api/v1/signals?unit=1&last=1000", "read")
    assert status == 200 and len(by_unit) == min(len(stored), 1000)
    status, other_unit = await api("GET", "/api/v1/signals?unit=60", "read")
    assert status == 200 and other_unit == []
    status, bad_unit = await api("GET", "/api/v1/signals?unit=7", "read")
    assert status in (400, 422) and "unit" in bad_unit["error"].lower()
    holds = int((stored["action"] == "hold").sum())
    status, only = await api("GET", "/api/v1/signals?action=hold&last=1000", "read")
    assert status == 200 and len(only) == holds and {s["action"] for s in only} <= {"hold"}
    status, other = await api("GET", "/api/v1/signals?market=KRW-ETH", "read")
    assert status == 200 and other == []

    status, doc = await api("GET", "/api/v1/openapi.json", "read")
    for path in (
        "/api/v1/markets",
        "/api/v1/candles",
        "/api/v1/signals",
        "/api/v1/live",
        "/api/v1/events",
    ):
        assert path in doc["paths"], path
    assert {"from", "to", "last"} <= {
        p["name"] for p in doc["paths"]["/api/v1/candles"]["get"]["parameters"]
    }
    assert "101" in doc["paths"]["/api/v1/events"]["get"]["responses"]


def test_a_one_shot_workstation_refuses_to_start_a_session(ws: Workstation) -> None:
    with pytest.raises(ServiceError) as refused:
        ws.live_start(LiveStartRequest(market="KRW-BTC", unit="1", offline=True))
    assert "one-shot" in str(refused.value)
    assert "upquant serve --market" in (refused.value.hint or "") and "upquant tui" in (
        refused.value.hint or ""
    )
    assert ws.live_status(LiveStatusRequest()).running is False


async def test_a_watchlist_session_decides_every_market_and_trades_on_paper(
    api: Api, ws: Workstation, con
) -> None:  # type: ignore[no-untyped-def]
    """POST /api/v1/live with a watchlist and a strategy spec: one session over every market
    (replayed, a pass per minute), each market's decision and paper position in the status,
    every signal stored with the spec's hash, and the replay's paper book stored."""
    upsert_candles(con, shared_candles("KRW-ETH_1m.csv", STORED, market="KRW-ETH"))
    spec = {"name": "rsi-vote", "form": "voting", "rules": [
        {"rule": "sma-cross", "fast": 5, "slow": 20}, {"rule": "rsi", "period": 14}]}
    body = {"markets": ["KRW-BTC", "KRW-ETH"], "unit": "1", "offline": True,
            "replay_delay": 0.0, "replay_candles": 200, "strategy_spec": spec}
    status, started = await api("POST", "/api/v1/live", json=body)
    assert status == 200, started
    assert [m["market"] for m in started["markets"]] == ["KRW-BTC", "KRW-ETH"]
    assert started["strategy"].startswith("rsi-vote ")
    assert started["rule"] == "sma-cross(5,20) + rsi(14)"  # the spec's rules, not the default
    for _ in range(200):
        status, now = await api("GET", "/api/v1/live", "read")
        if not now["running"]:
            break
        await asyncio.sleep(0.05)
    assert now["running"] is False and "ended" in now["ended"]
    by_market = {m["market"]: m for m in now["markets"]}
    assert by_market["KRW-BTC"]["last_price"] == pytest.approx(
        float(load_candles(con, "KRW-BTC", "1")["close"].iloc[-1]))
    assert all(m["action"] in ("buy", "sell", "hold") and m["position"] is not None
               for m in now["markets"]), now["markets"]
    assert now["paper"]["account"] == "replay" and now["paper"]["equity"] > 0
    stored = con.execute(
        "SELECT market, count(*), count(DISTINCT strategy), min(strategy) FROM signals"
        " GROUP BY market ORDER BY market").fetchall()
    digest = con.execute("SELECT hash FROM strategy_specs WHERE name = 'rsi-vote'").fetchall()
    assert len(digest) == 1
    assert [(m, n, k, h) for m, n, k, h in stored] == [
        ("KRW-BTC", 200, 1, digest[0][0]), ("KRW-ETH", 200, 1, digest[0][0])]
    status, book = await api("GET", "/api/v1/paper?account=replay", "read")
    assert status == 200 and book["equity"] == pytest.approx(now["paper"]["equity"])

    status, bad = await api("POST", "/api/v1/live", json={**body, "strategy_spec": {"form": "vote"}})
    assert status == 422 and "form" in bad["error"]
    status, none = await api("POST", "/api/v1/live", json={"unit": "1"})
    assert status == 422 and "markets" in bad["error"] + none["error"]

