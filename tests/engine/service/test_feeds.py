"""The feed operations over real HTTP on 127.0.0.1 (aiohttp's test server, the server's own
app, a Workstation on a tmp store) against the fake Upbit on 127.0.0.1: a feed started
(201), its closed candles stored through the server's connection and sent on the events
stream with its status texts, its status and messages followed by `after`, stopped with its
final counts and gone; bad requests refused without touching a running feed; the server's
shutdown stopping every feed with what it buffered written; a one-shot Workstation refusing
to keep one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.data.feed import FLUSH_INTERVAL_S
from engine.server.app import create_app
from engine.service import ServiceError, Workstation
from engine.service.feeds import FeedStartRequest
from store.candles import load_candles
from store.tokens import create_token
from tests.conftest import next_minute
from tests.fake_upbit import FakeUpbit, generate_candles

WAIT_S = 20.0  # a hang fails the test instead of stalling it


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    def headers(self, scope: str = "write") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    async def __call__(
        self, method: str, path: str, scope: str = "write", **kwargs: Any
    ) -> tuple[int, Any]:
        async with self.client.request(
            method, path, headers=self.headers(scope), **kwargs
        ) as response:
            text = await response.text()
            assert "Traceback" not in text
            return response.status, await response.json()


async def until(predicate: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeUpbit]:
    async with FakeUpbit() as upbit:
        for name, value in upbit.env().items():  # the server's environment names its Upbit
            monkeypatch.setenv(name, value)
        yield upbit


@pytest.fixture
async def served(con, fake: FakeUpbit) -> AsyncIterator[tuple[Api, Workstation]]:  # type: ignore[no-untyped-def]
    ws = Workstation(con)
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    client = TestClient(TestServer(create_app(ws), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, tokens), ws
    finally:
        await ws.stop_feeds_async()
        await client.close()


async def test_a_feed_records_closed_candles_says_so_and_is_gone_once_stopped(
    served: tuple[Api, Workstation], fake: FakeUpbit, con
) -> None:  # type: ignore[no-untyped-def]
    api, _ws = served
    bucket = next_minute()
    rows = generate_candles("KRW-BTC", "1", bucket, 3).to_dict("records")
    sock = await api.client.ws_connect("/api/v1/events", headers=api.headers("read"))
    assert (await sock.receive_json(timeout=WAIT_S))["type"] == "hello"

    status, refused = await api("POST", "/api/v1/feeds", "read", json={"markets": ["KRW-BTC"]})
    assert status == 403 and "write" in refused["hint"]
    status, started = await api("POST", "/api/v1/feeds", json={"markets": ["KRW-BTC"]})
    assert status == 201, started
    feed = started["id"]
    assert started["running"] is True and started["markets"] == ["KRW-BTC"]
    assert started["unit"] == "1" and started["upbit"] == fake.ws_url
    await fake.wait_subscribed(timeout=WAIT_S)
    for row in rows:
        await fake.push_candle("KRW-BTC", row)

    async def closed_and_written() -> bool:
        _, answer = await api("GET", f"/api/v1/feeds/{feed}", "read")
        return bool(answer["stats"]["candles_closed"] == 2 and answer["stats"]["candles_written"])

    await until(closed_and_written, "two closed candles, written")
    status, listed = await api("GET", "/api/v1/feeds", "read")
    assert status == 200 and [f["id"] for f in listed["feeds"]] == [feed]
    (shown,) = listed["feeds"]
    assert shown["connected"] is True and shown["stats"]["connects"] == 1
    texts = [m["text"] for m in shown["messages"]]
    assert "Upbit live: streaming 1 markets 1m" in texts
    last = shown["messages"][-1]["seq"]
    status, newer = await api("GET", f"/api/v1/feeds/{feed}?after={last}", "read")
    assert status == 200 and newer["messages"] == []

    # the events stream carried its status text and both closed candles, marked as its own
    frames: list[dict[str, Any]] = []
    while sum(f["type"] == "candle" for f in frames) < 2:
        frames.append(await sock.receive_json(timeout=WAIT_S))
    await sock.close()
    said = [f for f in frames if f["type"] == "status"]
    assert said and said[0]["text"] == f"feed {feed}: Upbit live: streaming 1 markets 1m"
    assert said[0]["feed"] == feed and said[0]["connected"] is None
    candles = [f for f in frames if f["type"] == "candle"]
    assert all(f["closed"] and f["feed"] == feed and f["market"] == "KRW-BTC" for f in candles)
    assert [pd.Timestamp(f["candle"]["ts"]) for f in candles] == [r["ts"] for r in rows[:2]]
    assert [f["candle"]["close"] for f in candles] == [r["close"] for r in rows[:2]]

    status, stopped = await api("DELETE", f"/api/v1/feeds/{feed}")
    assert status == 200 and stopped["running"] is False and stopped["ended"] == "stopped"
    assert stopped["stats"]["frames"] == 3 and stopped["stats"]["candles_closed"] == 2
    stored = load_candles(con, "KRW-BTC", "1")
    assert list(stored["ts"]) == [r["ts"] for r in rows]
    assert list(stored["close"]) == [r["close"] for r in rows]
    status, gone = await api("GET", f"/api/v1/feeds/{feed}", "read")
    assert status == 404 and "no feed" in gone["error"] and "GET /api/v1/feeds" in gone["hint"]
    status, _again = await api("DELETE", f"/api/v1/feeds/{feed}")
    assert status == 404
    assert (await api("GET", "/api/v1/feeds", "read"))[1] == {"feeds": []}


async def test_bad_requests_are_refused_and_a_running_feed_keeps_running(
    served: tuple[Api, Workstation], fake: FakeUpbit
) -> None:
    api, _ws = served
    status, started = await api("POST", "/api/v1/feeds", json={"markets": ["KRW-ETH"]})
    assert status == 201, started
    await fake.wait_subscribed(timeout=WAIT_S)
    for body, words in [
        ({"markets": ["btc"]}, "not an Upbit market code"),
        ({"markets": ["KRW-BTC"], "watch": ["KRW_ETH"]}, "not an Upbit market code"),
        ({"markets": ["KRW-BTC"], "unit": "D"}, "minute candles only"),
        ({"markets": ["KRW-BTC"], "unit": "7"}, "not supported"),
        ({"markets": ["KRW-BTC"], "since": "2025-09-01"}, "since"),
    ]:
        status, refused = await api("POST", "/api/v1/feeds", json=body)
        assert status == 422 and words in refused["error"], (body, refused)
    status, refused = await api("POST", "/api/v1/feeds", json={})
    assert status == 400 and refused["error"] == "no market to stream" and refused["hint"]
    status, listed = await api("GET", "/api/v1/feeds", "read")
    assert [(f["id"], f["running"]) for f in listed["feeds"]] == [(started["id"], True)]
    assert fake.ws_connects == 1  # nothing refused reached Upbit, nothing was restarted


async def test_all_krw_asks_the_servers_upbit_for_its_markets(
    served: tuple[Api, Workstation], fake: FakeUpbit
) -> None:
    api, _ws = served
    status, started = await api("POST", "/api/v1/feeds", json={"all_krw": True})
    assert status == 201, started
    assert started["markets"] == ["KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-XRP"]
    status, stopped = await api("DELETE", f"/api/v1/feeds/{started['id']}")
    assert status == 200 and stopped["markets"] == started["markets"]


async def test_server_shutdown_stops_every_feed_with_its_candles_written(
    served: tuple[Api, Workstation], fake: FakeUpbit, con
) -> None:  # type: ignore[no-untyped-def]
    api, ws = served
    bucket = next_minute()
    rows = {
        market: generate_candles(market, "1", bucket, 1, seed=i).to_dict("records")[0]
        for i, market in enumerate(["KRW-BTC", "KRW-ETH"])
    }
    for market in rows:
        status, started = await api("POST", "/api/v1/feeds", json={"markets": [market]})
        assert status == 201, started
    await fake.wait_subscribed(2, timeout=WAIT_S)
    running = list(ws._feed_table().values())
    for item in running:  # written only when the feed stops: nothing flushes on a timer now
        item.feed.writer.interval = 3600.0
    # the writers' current 0.25 s sleeps end before this one (timers fire in deadline order)
    await asyncio.sleep(2 * FLUSH_INTERVAL_S)
    for market, row in rows.items():
        await fake.push_candle(market, row)

    async def seen() -> bool:
        return all(item.feed.stats.candle_frames == 1 for item in running)

    await until(seen, "both forming candles")
    assert load_candles(con, "KRW-BTC", "1").empty
    await ws.stop_feeds_async()  # what `upquant serve` awaits on its way out
    assert ws._feed_table() == {} and all(not item.running for item in running)
    for market, row in rows.items():
        stored = load_candles(con, market, "1")
        assert list(stored["ts"]) == [row["ts"]] and list(stored["close"]) == [row["close"]]


def test_a_one_shot_workstation_cannot_keep_a_feed(con) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ServiceError, match="cannot keep a feed") as refused:
        Workstation(con).feed_start(FeedStartRequest(markets=["KRW-BTC"]))
    assert "upquant serve" in str(refused.value.hint)
