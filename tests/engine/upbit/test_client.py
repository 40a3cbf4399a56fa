"""The Upbit client (engine/upbit/client.py) against the fake Upbit server, and the fake itself.

Real HTTP and WebSocket on 127.0.0.1, the real SDK, real BTC candles from ../shared.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import pytest
import upbit
from upbit import AsyncUpbit

from engine.upbit.client import (
    DEFAULT_REST_URL,
    DEFAULT_WS_URL,
    RateLimiter,
    block_seconds,
    ceil_bucket,
    fetch_candles,
    list_markets,
    make_client,
    plan_chunks,
    rest_url,
    ws_url,
)
from engine.upbit.errors import UpbitBlocked, UpbitError, UpbitUnreachable
from engine.upbit.websocket import candle_frame_to_row, stream
from tests.fake_upbit import (
    FakeUpbit,
    candle_frame,
    forming_frames,
    load_csv_candles,
    resample_candles,
)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "upbit"
MINUTES = "/v1/candles/minutes/1"


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    """KRW-BTC 1-minute candles, 2025-09-01 .. 2025-10-04, canonical."""
    return load_csv_candles(DATA / "KRW-BTC_1m.csv", "KRW-BTC")


def cut(frame: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    return frame[(frame["ts"] >= utc(start)) & (frame["ts"] < utc(end))].reset_index(drop=True)


@pytest.fixture(scope="module")
def gappy(btc: pd.DataFrame) -> pd.DataFrame:
    """1,560 minutes across the 09-01/09-02 UTC day boundary with no-trade gaps: a 220-minute
    hole (longer than a page) and ~5% single missing minutes, the same on every run."""
    part = cut(btc, "2025-09-01 12:00", "2025-09-02 14:00")
    hole = (part["ts"] >= utc("2025-09-01 17:50")) & (part["ts"] < utc("2025-09-01 21:30"))
    dropped = np.random.default_rng(7).random(len(part)) < 0.05
    return part[~hole & ~dropped].reset_index(drop=True)


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[[FakeUpbit], AsyncUpbit]]:
    """Makes SDK clients for a fake (as the app would from the environment); closes them."""
    made: list[AsyncUpbit] = []

    def connect(fake: FakeUpbit) -> AsyncUpbit:
        made.append(make_client(rest=fake.rest_url, ws=fake.ws_url))
        return made[-1]

    yield connect
    for client in made:
        await client.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get_json(session: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    async with session.get(url, params=params) as response:
        return response.status, await response.json()


# --------------------------------------------------------------------------- the fake itself


async def test_fake_serves_upbit_fields_newest_first(btc: pd.DataFrame) -> None:
    params = {"market": "KRW-BTC", "count": "3", "to": "2025-09-01T10:00:00Z"}
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake,
        aiohttp.ClientSession() as s,
        s.get(fake.rest_url + MINUTES, params=params) as response,
    ):
        assert response.status == 200
        assert response.headers["Remaining-Req"] == "group=candle; min=600; sec=9"
        rows = await response.json()
    assert [r["candle_date_time_utc"] for r in rows] == [
        "2025-09-01T09:59:00",
        "2025-09-01T09:58:00",
        "2025-09-01T09:57:00",
    ]
    assert rows[0]["candle_date_time_kst"] == "2025-09-01T18:59:00"
    assert set(rows[0]) == {
        "market",
        "candle_date_time_utc",
        "candle_date_time_kst",
        "opening_price",
        "high_price",
        "low_price",
        "trade_price",
        "timestamp",
        "candle_acc_trade_price",
        "candle_acc_trade_volume",
        "unit",
    }
    source = btc[btc["ts"] == utc("2025-09-01 09:59")].iloc[0]
    assert rows[0]["opening_price"] == source["open"]
    assert rows[0]["candle_acc_trade_price"] == source["value"]
    assert rows[0]["unit"] == 1


async def test_fake_count_defaults_to_one_and_stops_at_200(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    url_params = {"market": "KRW-BTC", "to": "2025-09-01T10:00:00Z"}
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake,
        aiohttp.ClientSession() as s,
    ):
        url = fake.rest_url + MINUTES
        status, rows = await get_json(s, url, **url_params)
        assert (status, len(rows)) == (200, 1)
        status, rows = await get_json(s, url, **url_params, count="200")
        assert (status, len(rows)) == (200, 200)
        for bad in ("201", "0", "ten"):
            status, body = await get_json(s, url, **url_params, count=bad)
            assert status == 400
            assert body == {
                "error": {"name": 400, "message": "Invalid parameter. Check the given value!"}
            }
        client = sdk(fake)
        with pytest.raises(upbit.BadRequestError):
            await client.candles.list_minutes(1, market="KRW-BTC", count=201)
        await client.close()


async def test_fake_reads_to_as_utc_kst_or_naive_and_exclusive(btc: pd.DataFrame) -> None:
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake,
        aiohttp.ClientSession() as s,
    ):
        url = fake.rest_url + MINUTES
        answers = []
        for to in ("2025-09-01T10:00:00Z", "2025-09-01 10:00:00", "2025-09-01T19:00:00+09:00"):
            status, rows = await get_json(s, url, market="KRW-BTC", count="2", to=to)
            assert status == 200
            answers.append([r["candle_date_time_utc"] for r in rows])
        assert answers == [["2025-09-01T09:59:00", "2025-09-01T09:58:00"]] * 3
        # An unencoded '+' reaches the server as a space: Upbit rejects it.
        async with s.get(
            f"{url}?market=KRW-BTC&to=2025-09-01T19:00:00+09:00", allow_redirects=False
        ) as response:
            assert response.status == 400


async def test_fake_errors_match_upbit(btc: pd.DataFrame) -> None:
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake,
        aiohttp.ClientSession() as s,
    ):
        base = fake.rest_url
        assert await get_json(s, base + MINUTES, market="KRW-NOPE") == (
            404,
            {"error": {"name": 404, "message": "Code not found"}},
        )
        status, body = await get_json(s, base + MINUTES)
        assert status == 400 and body["error"]["message"].startswith("Missing request parameter")
        status, _ = await get_json(s, base + "/v1/candles/minutes/2", market="KRW-BTC")
        assert status == 400
        status, _ = await get_json(s, base + "/v1/nothing")
        assert status == 404
        status, markets = await get_json(s, base + "/v1/market/all", is_details="true")
        btc_info = next(m for m in markets if m["market"] == "KRW-BTC")
        assert (
            btc_info["korean_name"] == "비트코인" and btc_info["market_event"]["warning"] is False
        )


async def test_fake_limits_per_group_then_blocks_abuse(btc: pd.DataFrame) -> None:
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02"), penalty_after=5, block_seconds=60) as fake,
        aiohttp.ClientSession() as s,
    ):
        url = fake.rest_url + MINUTES
        statuses = []
        for _ in range(16):
            async with s.get(url, params={"market": "KRW-BTC"}) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert response.headers["Remaining-Req"].endswith("sec=0")
            if len(statuses) == 10:
                # Other groups have their own budget.
                assert (await get_json(s, fake.rest_url + "/v1/market/all"))[0] == 200
        assert statuses == [200] * 10 + [429] * 5 + [418]
        assert fake.rate_limited == 5 and fake.requests[MINUTES] == 16
        assert (await get_json(s, fake.rest_url + "/v1/market/all"))[0] == 418


async def test_fake_websocket_sends_binary_frames_and_rejects_missing_ticket(
    btc: pd.DataFrame,
) -> None:
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake,
        aiohttp.ClientSession() as s,
    ):
        async with s.ws_connect(fake.ws_url) as ws:
            await ws.send_str(json.dumps([{"type": "candle.1m", "codes": ["KRW-BTC"]}]))
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.BINARY
            assert json.loads(msg.data)["error"]["name"] == "NO_TICKET"
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        async with s.ws_connect(fake.ws_url) as ws:
            await ws.send_str(
                json.dumps([{"ticket": "t"}, {"type": "candle.1m", "codes": ["KRW-BTC"]}])
            )
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.BINARY
            snapshot = json.loads(msg.data)
            assert snapshot["stream_type"] == "SNAPSHOT"
            assert snapshot["candle_date_time_utc"] == "2025-09-01T23:59:00"


async def test_fake_counts_what_it_served_and_injects_faults(btc: pd.DataFrame) -> None:
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-02"), block_seconds=45) as fake,
        aiohttp.ClientSession() as s,
    ):
        url = fake.rest_url + MINUTES
        status, rows = await get_json(
            s, url, market="KRW-BTC", count="5", to="2025-09-01T10:00:00Z"
        )
        assert (status, len(rows)) == (200, 5)
        assert fake.candles_served[("KRW-BTC", "1")] == 5
        fake.fail_next(1, status=418)
        status, body = await get_json(s, url, market="KRW-BTC")
        assert (status, body["error"]["message"]) == (
            418,
            "Blocked for 45 s for exceeding the rate limit.",
        )
        fake.slow_next(1, 0.3)
        started = time.monotonic()
        assert (await get_json(s, url, market="KRW-BTC"))[0] == 200
        assert time.monotonic() - started >= 0.3
        assert fake.statuses == {200: 2, 418: 1}


async def test_fake_drops_websockets_mid_stream_and_sends_tickers(btc: pd.DataFrame) -> None:
    source = cut(btc, "2025-09-01", "2025-09-01 01:00")
    async with FakeUpbit(source) as fake:
        fake.ws_snapshots = False
        got: list[dict[str, Any]] = []

        async def read() -> None:
            async with aclosing(
                stream(
                    ["KRW-BTC"], ("candle.1m",), extra={"ticker": ["KRW-ETH"]}, ws_url=fake.ws_url
                )
            ) as frames:
                async for frame in frames:
                    got.append(frame)

        reader = asyncio.create_task(read())
        await fake.wait_subscribed()
        fake.drop_after(3)
        await fake.push_ticker("KRW-ETH", 4_000_000.0)
        for _, row in source.head(5).iterrows():
            await fake.push_candle("KRW-BTC", row)
        with pytest.raises(UpbitUnreachable, match="closed"):
            await asyncio.wait_for(reader, 5)
    assert [f["type"] for f in got] == ["ticker", "candle.1m", "candle.1m"]
    assert got[0]["trade_price"] == 4_000_000.0 and got[0]["stream_type"] == "SNAPSHOT"
    assert fake.ws_drops == 1 and fake.frames_sent == {"ticker": 1, "candle.1m": 2}


# --------------------------------------------------------------------------- fetch_candles


@pytest.mark.parametrize("count_is_window", [True, False], ids=["window", "last-n"])
async def test_fetch_pages_through_gaps_and_midnight(
    gappy: pd.DataFrame, count_is_window: bool, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    pages: list[pd.DataFrame] = []
    async with FakeUpbit(gappy, count_is_window=count_is_window) as fake:
        out = await fetch_candles(
            "KRW-BTC",
            "1",
            utc("2025-09-01 12:00"),
            utc("2025-09-02 14:00"),
            client=sdk(fake),
            on_page=pages.append,
        )
    assert len(gappy) > 1000
    pd.testing.assert_frame_equal(out, gappy)  # no row lost, none doubled, same values
    assert str(out["ts"].dtype) == "datetime64[ns, UTC]"
    assert out["ts"].is_monotonic_increasing and out["ts"].is_unique
    assert out["ts"].dt.date.nunique() == 2
    assert pd.concat(pages).sort_values("ts", ignore_index=True).equals(out)
    if count_is_window:
        # 1,560 minutes are 8 windows of 200 buckets; the empty one inside the hole included.
        assert fake.requests[MINUTES] == 8
        assert len(pages) == 7


async def test_fetch_since_inclusive_until_exclusive(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    source = cut(btc, "2025-09-01", "2025-09-02")
    async with FakeUpbit(source) as fake:
        client = sdk(fake)
        out = await fetch_candles(
            "KRW-BTC", "1", utc("2025-09-01 03:00"), utc("2025-09-01 07:00"), client=client
        )
        pd.testing.assert_frame_equal(out, cut(source, "2025-09-01 03:00", "2025-09-01 07:00"))
        # Unaligned bounds: a candle counts by its open time.
        odd = await fetch_candles(
            "KRW-BTC",
            "1",
            utc("2025-09-01 03:00:30"),
            utc("2025-09-01 07:00:00.500"),
            client=client,
        )
        assert odd["ts"].iloc[0] == utc("2025-09-01 03:01")
        assert odd["ts"].iloc[-1] == utc("2025-09-01 07:00")
        empty = await fetch_candles(
            "KRW-BTC", "1", utc("2025-09-01 07:00"), utc("2025-09-01 07:00"), client=client
        )
        assert empty.empty and list(empty.columns) == list(out.columns)


async def test_fetch_paces_by_remaining_req_without_429(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    async with FakeUpbit(cut(btc, "2025-09-01", "2025-09-02"), rate_limit=4) as fake:
        started = time.monotonic()
        out = await fetch_candles(
            "KRW-BTC",
            "1",
            utc("2025-09-01 00:00"),
            utc("2025-09-01 20:00"),
            client=sdk(fake),
        )
        elapsed = time.monotonic() - started
    assert len(out) == 1200
    assert fake.requests[MINUTES] == 6 and fake.rate_limited == 0
    assert elapsed >= 0.9  # the 5th request waited for the window to free up


async def test_fetch_backs_off_on_429_and_completes(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    source = cut(btc, "2025-09-01", "2025-09-01 10:00")
    async with FakeUpbit(source) as fake:
        fake.fail_next(1, status=429)
        out = await fetch_candles(
            "KRW-BTC",
            "1",
            utc("2025-09-01"),
            utc("2025-09-01 10:00"),
            client=sdk(fake),
        )
    pd.testing.assert_frame_equal(out, source)
    assert fake.statuses[429] == 1


async def test_fetch_retries_server_errors_and_malformed_bodies(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    source = cut(btc, "2025-09-01", "2025-09-01 10:00")
    async with FakeUpbit(source) as fake:
        fake.fail_next(1, status=502)
        fake.malformed_next(1)
        out = await fetch_candles(
            "KRW-BTC",
            "1",
            utc("2025-09-01"),
            utc("2025-09-01 10:00"),
            client=sdk(fake),
        )
    pd.testing.assert_frame_equal(out, source)
    assert fake.statuses[502] == 1


async def test_fetch_418_raises_and_keeps_stored_pages(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    stored: list[pd.DataFrame] = []
    async with FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake:

        def store(page: pd.DataFrame) -> None:
            stored.append(page)
            if len(stored) == 2:
                fake.block(60)  # the exchange blocks us mid-fetch

        with pytest.raises(UpbitBlocked) as caught:
            await fetch_candles(
                "KRW-BTC",
                "1",
                utc("2025-09-01"),
                utc("2025-09-02"),
                client=sdk(fake),
                on_page=store,
            )
    assert caught.value.status == 418 and "blocked this IP for 60 s, until" in str(caught.value)
    assert caught.value.seconds == 60 and caught.value.until is not None
    assert not isinstance(caught.value, UpbitUnreachable)
    # Pages answered before the block are kept; after the first 418 nothing more is asked
    # (at most the requests already in flight meet the block too).
    assert len(stored) >= 2 and all(len(p) == 200 for p in stored)
    assert 1 <= fake.statuses[418] <= 4
    assert fake.statuses[200] == len(stored)


def test_block_seconds_reads_the_duration_from_upbit_messages() -> None:
    assert block_seconds("Blocked for 60 s for exceeding the rate limit.") == 60
    assert block_seconds("Too many requests. Retry after 2 minutes") == 120
    assert block_seconds("요청 수 제한을 초과하여 30초 동안 차단되었습니다") == 30
    assert block_seconds("IP 차단 10분") == 600
    assert block_seconds("blocked") is None


@pytest.mark.parametrize("unit", ["1", "3", "5", "10", "15", "30", "60", "240", "D"])
def test_plan_chunks_tile_the_range_on_the_bucket_grid(unit: str) -> None:
    start, end = utc("2025-08-30 05:07:30"), utc("2025-09-30 17:00:00.5")
    chunks = plan_chunks("KRW-BTC", unit, start, end)
    width = pd.Timedelta(days=1) if unit == "D" else pd.Timedelta(minutes=int(unit))
    assert chunks[0].end == ceil_bucket(end, unit) and chunks[-1].start == ceil_bucket(start, unit)
    assert all(a.start == b.end for a, b in itertools.pairwise(chunks))  # newest first
    assert all(0 < c.count <= 200 and c.end - c.start == c.count * width for c in chunks)
    epoch = pd.Timestamp(0, tz="UTC")
    assert all((c.start - epoch) % width == pd.Timedelta(0) for c in chunks)


async def test_concurrent_fetches_share_one_limiter_without_429(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    eth = cut(btc, "2025-09-01", "2025-09-01 12:00").assign(market="KRW-ETH")
    async with FakeUpbit([cut(btc, "2025-09-01", "2025-09-01 12:00"), eth], rate_limit=5) as fake:
        client, limiter = sdk(fake), RateLimiter()
        started = time.monotonic()
        both = await asyncio.gather(
            *(
                fetch_candles(
                    m,
                    "1",
                    utc("2025-09-01"),
                    utc("2025-09-01 12:00"),
                    client=client,
                    limiter=limiter,
                )
                for m in ("KRW-BTC", "KRW-ETH")
            )
        )
        elapsed = time.monotonic() - started
    assert [len(frame) for frame in both] == [720, 720]
    assert limiter.per_second == 5  # learned from Remaining-Req
    assert fake.requests[MINUTES] == 8 and fake.rate_limited == 0
    assert elapsed >= 1.0  # 8 requests at 5 a second


async def test_limiter_yields_to_another_program_on_the_same_ip(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    async with (
        FakeUpbit(cut(btc, "2025-09-01", "2025-09-03"), penalty_after=1000) as fake,
        aiohttp.ClientSession() as session,
    ):

        async def other_program() -> None:  # 8 requests a second of the same budget
            for _ in range(10):
                await get_json(session, fake.rest_url + MINUTES, market="KRW-BTC")
                await asyncio.sleep(0.125)

        rival = asyncio.create_task(other_program())
        limiter = RateLimiter()
        out = await fetch_candles(
            "KRW-BTC", "1", utc("2025-09-01"), utc("2025-09-02"), client=sdk(fake), limiter=limiter
        )
        await rival
    assert len(out) == 1440
    # Phantom slots from Remaining-Req keep our share down; a rare 429 backs off and retries.
    assert limiter.rate_limited <= 1


async def test_fetch_retries_slow_responses_that_time_out(
    btc: pd.DataFrame,
) -> None:
    source = cut(btc, "2025-09-01", "2025-09-01 10:00")
    async with FakeUpbit(source) as fake, make_client(rest=fake.rest_url, timeout=0.3) as client:
        fake.slow_next(1, 1.0)
        out = await fetch_candles(
            "KRW-BTC", "1", utc("2025-09-01"), utc("2025-09-01 10:00"), client=client
        )
    pd.testing.assert_frame_equal(out, source)
    assert fake.requests[MINUTES] == 4  # 3 pages and the one that timed out


async def test_fetch_unknown_market_names_it(
    btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]
) -> None:
    async with FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake:
        with pytest.raises(UpbitError, match="KRW-NOPE") as caught:
            await fetch_candles(
                "KRW-NOPE",
                "1",
                utc("2025-09-01"),
                utc("2025-09-02"),
                client=sdk(fake),
            )
    assert caught.value.status == 404 and caught.value.market == "KRW-NOPE"
    with pytest.raises(UpbitError, match="unit"):
        await fetch_candles("KRW-BTC", "2", utc("2025-09-01"), utc("2025-09-02"))


async def test_fetch_unreachable_is_its_own_error() -> None:
    async with make_client(rest=f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(UpbitUnreachable, match="cannot reach Upbit"):
            await fetch_candles("KRW-BTC", "1", utc("2025-09-01"), utc("2025-09-02"), client=client)


async def test_fetch_days(btc: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    days = resample_candles(btc, "D")
    async with FakeUpbit(days) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        out = await fetch_candles("KRW-BTC", "D", utc("2025-09-01"), utc("2025-10-01"))
    assert fake.requests["/v1/candles/days"] == 1
    pd.testing.assert_frame_equal(out, cut(days, "2025-09-01", "2025-10-01"))
    assert len(out) == 30 and (out["ts"] == out["ts"].dt.floor("D")).all()


async def test_list_markets(btc: pd.DataFrame, sdk: Callable[[FakeUpbit], AsyncUpbit]) -> None:
    async with FakeUpbit(cut(btc, "2025-09-01", "2025-09-02")) as fake:
        markets = await list_markets(sdk(fake))
    btc_info = next(m for m in markets if m["market"] == "KRW-BTC")
    assert btc_info["english_name"] == "Bitcoin" and "market_event" in btc_info


def test_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPQUANT_UPBIT_REST_URL", raising=False)
    monkeypatch.delenv("UPQUANT_UPBIT_WS_URL", raising=False)
    assert (rest_url(), ws_url()) == (DEFAULT_REST_URL, DEFAULT_WS_URL)
    monkeypatch.setenv("UPQUANT_UPBIT_WS_URL", "ws://127.0.0.1:9/websocket/v1")
    # The SDK appends /websocket/v1 itself.
    client = make_client()
    assert str(client.websocket_base_url) == "ws://127.0.0.1:9"
    asyncio.run(client.close())


def test_fake_in_a_thread_serves_synchronous_callers(
    btc: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = cut(btc, "2025-09-01", "2025-09-01 05:00")
    with FakeUpbit(source).run_in_thread() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        out = asyncio.run(fetch_candles("KRW-BTC", "1", utc("2025-09-01"), utc("2025-09-01 06:00")))
        extra = {**source.iloc[-1].to_dict(), "ts": utc("2025-09-01 05:30")}
        assert fake.run_sync(fake.push_candle("KRW-BTC", extra)) == 0  # nobody subscribed
        assert fake.candles("KRW-BTC")["ts"].iloc[-1] == utc("2025-09-01 05:30")
    pd.testing.assert_frame_equal(out, source)


# --------------------------------------------------------------------------- stream


async def collect(frames: Any, n: int) -> list[dict[str, Any]]:
    out = []
    async for frame in frames:
        out.append(frame)
        if len(out) == n:
            break
    return out


async def test_stream_yields_candles_and_trades_with_forming_candle(btc: pd.DataFrame) -> None:
    source = cut(btc, "2025-09-01", "2025-09-01 10:00")
    forming = btc[btc["ts"] == utc("2025-09-01 10:00")].iloc[0]
    after = btc[btc["ts"] == utc("2025-09-01 10:01")].iloc[0]
    async with (
        FakeUpbit(source) as fake,
        aclosing(stream(["KRW-BTC"], ws_url=fake.ws_url)) as frames,
    ):
        reader = asyncio.create_task(collect(frames, 6))
        await fake.wait_subscribed()
        script = [*forming_frames("KRW-BTC", forming, steps=3), candle_frame("KRW-BTC", after)]
        await fake.play(script, interval=0.01)
        await fake.push_trade("KRW-BTC", 150_000_000.0, 0.01, ask_bid="ASK")
        got = await asyncio.wait_for(reader, 5)
    candles = [f for f in got if f["type"] == "candle.1m"]
    trades = [f for f in got if f["type"] == "trade"]
    assert [f["stream_type"] for f in candles] == ["SNAPSHOT"] + ["REALTIME"] * 4
    assert candles[0]["candle_date_time_utc"] == "2025-09-01T09:59:00"
    assert [f["candle_date_time_utc"] for f in candles[1:4]] == ["2025-09-01T10:00:00"] * 3
    rows = [candle_frame_to_row(f) for f in candles]
    latest = {r["ts"]: r for r in rows}  # latest wins while a candle forms
    assert latest[utc("2025-09-01 10:00")] == {
        "market": "KRW-BTC",
        "unit": "1",
        "ts": utc("2025-09-01 10:00"),
        **{c: float(forming[c]) for c in ("open", "high", "low", "close", "volume", "value")},
    }
    assert rows[1]["volume"] < rows[3]["volume"]
    assert len(trades) == 1
    assert trades[0]["code"] == "KRW-BTC" and trades[0]["ask_bid"] == "ASK"
    assert {"trade_price", "trade_volume", "trade_timestamp", "sequential_id", "timestamp"} <= set(
        trades[0]
    )
    assert trades[0]["stream_type"] == "SNAPSHOT"


async def test_stream_error_frame_raises() -> None:
    async with FakeUpbit() as fake:
        with pytest.raises(UpbitError, match="INVALID_PARAM"):
            async with aclosing(stream(["KRW-BTC"], ["candle.7m"], ws_url=fake.ws_url)) as frames:
                await collect(frames, 1)


@pytest.mark.parametrize("abrupt", [True, False], ids=["reset", "close-frame"])
async def test_stream_dropped_socket_is_unreachable(abrupt: bool) -> None:
    async with FakeUpbit() as fake:
        with pytest.raises(UpbitUnreachable, match="closed"):
            async with aclosing(stream(["KRW-BTC"], ws_url=fake.ws_url)) as frames:
                reader = asyncio.create_task(collect(frames, 1))
                await fake.wait_subscribed()
                assert await fake.drop_connections(abrupt=abrupt) == 1
                await asyncio.wait_for(reader, 5)


async def test_stream_refused_upgrade_is_unreachable() -> None:
    async with FakeUpbit(ws_connect_limit=1) as fake:
        fake.refuse_ws = True  # an outage: the upgrade gets 503
        with pytest.raises(UpbitUnreachable, match="503"):
            async with aclosing(stream(["KRW-BTC"], ws_url=fake.ws_url)) as frames:
                await collect(frames, 1)
        fake.refuse_ws = False
        async with aclosing(stream(["KRW-BTC"], ws_url=fake.ws_url)) as frames:
            reader = asyncio.create_task(collect(frames, 1))
            await fake.wait_subscribed()
            # A second connection within the same second is over Upbit's 5/s (here 1/s) limit.
            with pytest.raises(UpbitUnreachable, match="429"):
                async with aclosing(stream(["KRW-ETH"], ws_url=fake.ws_url)) as other:
                    await collect(other, 1)
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader


async def test_stream_unreachable() -> None:
    with pytest.raises(UpbitUnreachable, match="cannot open"):
        async with aclosing(
            stream(["KRW-BTC"], ws_url=f"ws://127.0.0.1:{closed_port()}/websocket/v1")
        ) as frames:
            await collect(frames, 1)


async def test_stream_sends_keepalive_pings() -> None:
    async with (
        FakeUpbit() as fake,
        aclosing(stream(["KRW-BTC"], ws_url=fake.ws_url, ping_interval=0.05)) as frames,
    ):
        reader = asyncio.create_task(collect(frames, 1))
        await fake.wait_subscribed()
        await asyncio.sleep(0.3)
        assert fake.pings_received >= 2
        reader.cancel()
        with suppress(asyncio.CancelledError):
            await reader


def test_candle_frame_to_row_rejects_other_frames() -> None:
    with pytest.raises(UpbitError, match="not a minute candle"):
        candle_frame_to_row({"type": "trade", "code": "KRW-BTC"})
    with pytest.raises(UpbitError, match="opening_price"):
        candle_frame_to_row(
            {"type": "candle.1m", "code": "KRW-BTC", "candle_date_time_utc": "2025-09-01T00:00:00"}
        )
