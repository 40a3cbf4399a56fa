"""The live feed (engine/data/feed.py) against the fake Upbit: many markets on one WebSocket,
forming and closed candles (next bucket or clock + grace), batched store writes, drops with
backoff and jitter, REST backfill of what a drop missed, and upbit_live driving the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

import engine.data.feed as feed_module
from engine.data.feed import LiveFeed
from engine.live.engine import LiveEngine
from engine.live.sources import upbit_live
from engine.upbit.errors import UpbitRefused
from store.candles import CANDLE_COLUMNS, load_candles, upsert_candles
from tests.conftest import current_minute, next_minute
from tests.fake_upbit import FakeUpbit, candle_frame, forming_frames, generate_candles

T0 = pd.Timestamp("2025-09-01 12:00", tz="UTC")
VALUES = ["open", "high", "low", "close", "volume", "value"]


class Clock:
    """A wall clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, moment: pd.Timestamp) -> None:
        self.now = moment.value / 1e9

    def __call__(self) -> float:
        return self.now

    def set(self, moment: pd.Timestamp) -> None:
        self.now = moment.value / 1e9


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def candles_of(market: str, start: pd.Timestamp, n: int, seed: int = 0) -> pd.DataFrame:
    return generate_candles(market, "1", start, n, seed=seed)


def stored(con: Any, market: str) -> pd.DataFrame:
    frame = load_candles(con, market, "1")
    frame["ts"] = frame["ts"].dt.as_unit("ns")
    return frame[CANDLE_COLUMNS]


async def test_many_markets_one_connection_forming_closed_and_batched_writes(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    markets = [f"KRW-C{i:02d}" for i in range(30)]
    writes: list[int] = []
    real_upsert = feed_module.upsert_candles

    def counting_upsert(connection: Any, frame: pd.DataFrame) -> int:
        writes.append(len(frame))
        return real_upsert(connection, frame)

    monkeypatch.setattr(feed_module, "upsert_candles", counting_upsert)
    clock = Clock(T0 + pd.Timedelta(seconds=5))
    closed: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    trades: list[dict[str, Any]] = []
    tickers: list[dict[str, Any]] = []
    data = {m: candles_of(m, T0, 2, seed=i) for i, m in enumerate(markets)}
    async with FakeUpbit() as fake:
        feed = LiveFeed(
            con,
            markets,
            "1",
            watch=["KRW-C00", "KRW-C01"],
            on_closed=closed.append,
            on_update=updates.append,
            on_trade=trades.append,
            on_ticker=tickers.append,
            clock=clock,
            ws_url=fake.ws_url,
            ping_interval=0.05,
            backfill=False,
        )
        task = asyncio.create_task(feed.run())
        await fake.wait_subscribed()
        for market in markets:
            await fake.play(forming_frames(market, data[market].iloc[0], steps=3))
        clock.set(T0 + pd.Timedelta(seconds=61))
        for market in markets:
            await fake.push_candle(market, data[market].iloc[1])
        await fake.push_trade("KRW-C00", 1000.0, 0.5)
        await fake.push_ticker("KRW-C01", 2000.0)
        await fake.push_trade("KRW-C29", 1000.0, 0.5)  # not on the watchlist: not sent
        await until(lambda: len(closed) == len(markets) and len(trades) == 1 and len(tickers) == 1)
        await asyncio.sleep(0.3)  # one flush interval
        await until(lambda: feed.stats.rows_written >= 2 * len(markets))
        assert fake.pings_received >= 1
        await stop(task)
    assert fake.ws_connects == 1
    subscription = {part.get("type"): part.get("codes") for part in fake.subscriptions[-1]}
    assert subscription["candle.1m"] == markets
    assert subscription["trade"] == subscription["ticker"] == ["KRW-C00", "KRW-C01"]
    assert feed.stats.closed_by_next == len(markets) and feed.stats.closed_by_clock == 0
    assert len(updates) == 4 * len(markets)  # three forming frames and the next candle
    for candle in closed:  # the latest frame of the forming candle won
        want = data[candle["market"]].iloc[0]
        assert candle["ts"] == T0 and [candle[c] for c in VALUES] == [want[c] for c in VALUES]
    for market in markets:
        got = stored(con, market)
        pd.testing.assert_frame_equal(got[VALUES], data[market][VALUES], check_dtype=False)
    assert feed.tickers["KRW-C01"]["trade_price"] == 2000.0
    # 120 candle frames went into a handful of batched upserts, not one per frame.
    assert sum(writes) == feed.stats.rows_written and len(writes) <= 6


async def test_quiet_market_closes_by_the_clock_and_late_frames_only_update_the_store(
    con,
) -> None:
    clock = Clock(T0 + pd.Timedelta(seconds=10))
    closed: list[dict[str, Any]] = []
    first, second = candles_of("KRW-BTC", T0, 2).to_dict("records")
    async with FakeUpbit() as fake:
        feed = LiveFeed(
            con,
            ["KRW-BTC"],
            on_closed=closed.append,
            clock=clock,
            ws_url=fake.ws_url,
            grace=3.0,
            backfill=False,
        )
        task = asyncio.create_task(feed.run())
        await fake.wait_subscribed()
        await fake.push_candle("KRW-BTC", first)
        await until(lambda: "KRW-BTC" in feed.forming)
        clock.set(T0 + pd.Timedelta(seconds=62.9))  # bucket ended, grace not yet over
        await asyncio.sleep(0.4)
        assert closed == []
        clock.set(T0 + pd.Timedelta(seconds=63.1))
        await until(lambda: len(closed) == 1)
        assert closed[0]["ts"] == T0 and feed.stats.closed_by_clock == 1
        late = {**first, "close": first["close"] * 1.001, "high": first["high"] * 1.001}
        await fake.push_candle("KRW-BTC", late)
        await until(lambda: feed.stats.late == 1)
        await asyncio.sleep(0.3)
        assert len(closed) == 1  # not announced twice
        await fake.push_candle("KRW-BTC", second)  # a quiet market: the next candle much later
        await until(lambda: feed.forming.get("KRW-BTC", {}).get("ts") == second["ts"])
        await stop(task)
    got = stored(con, "KRW-BTC")
    assert got["close"].tolist() == [late["close"], second["close"]]


async def test_drop_reconnects_and_backfills_the_missed_candles(con) -> None:
    markets = ["KRW-BTC", "KRW-ETH"]
    history = pd.concat(
        candles_of(m, T0 - pd.Timedelta(minutes=30), 36, seed=i) for i, m in enumerate(markets)
    )
    before = history[history["ts"] < T0]
    upsert_candles(con, before[before["ts"] < T0 - pd.Timedelta(minutes=10)])  # stored earlier
    live = history[history["ts"] >= T0]
    clock = Clock(T0 + pd.Timedelta(seconds=5))
    backfilled: list[tuple[str, int]] = []
    statuses: list[str] = []
    gate = asyncio.Event()

    async def reconnect_when_told(delay: float) -> None:
        await gate.wait()

    async with FakeUpbit(before) as fake:
        # the subscribe snapshot (the newest stored candle, final) lands before or after the
        # start's backfill fetch: a race that changes only how many candles count as new
        # (9 or 10), so none in this test
        fake.ws_snapshots = False
        feed = LiveFeed(
            con,
            markets,
            clock=clock,
            ws_url=fake.ws_url,
            rest_url=fake.rest_url,
            on_backfill=lambda market, n: backfilled.append((market, n)),
            on_status=lambda text, level: statuses.append(text),
            sleep=reconnect_when_told,
        )
        task = asyncio.create_task(feed.run())
        # On start: the 10 minutes between the stored series and now come over REST.
        await until(lambda: sorted(backfilled) == [("KRW-BTC", 10), ("KRW-ETH", 10)])
        for minute in range(2):  # T0 forms, T0 + 1 min closes it and forms
            clock.set(T0 + pd.Timedelta(minutes=minute, seconds=1))  # within the grace
            for market in markets:
                rows = live[(live["market"] == market)].iloc[minute]
                await fake.play(forming_frames(market, rows, steps=2))
        await until(lambda: feed.stats.closed_by_next == 2)
        assert await fake.drop_connections() == 1
        await until(lambda: feed.stats.drops == 1)
        # While the socket is down T0+1 .. T0+5 close at Upbit; REST has them, final.
        fake.add_candles(live[live["ts"] < T0 + pd.Timedelta(minutes=6)])
        clock.set(T0 + pd.Timedelta(minutes=6, seconds=10))
        backfilled.clear()
        gate.set()
        await until(lambda: feed.stats.connects == 2)
        await until(lambda: sorted(backfilled) == [("KRW-BTC", 4), ("KRW-ETH", 4)])
        await stop(task)
    assert feed.stats.drops == 1 and fake.ws_connects == 2
    assert any("Upbit stream dropped" in text for text in statuses)
    end = T0 + pd.Timedelta(minutes=6)
    for market in markets:
        want = fake.candles(market)
        want = want[want["ts"] < end].reset_index(drop=True)
        got = stored(con, market)
        assert len(want) == 36 and (got["ts"].diff().dropna() == pd.Timedelta(minutes=1)).all()
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)


def test_a_failed_write_keeps_the_queue_and_a_backfill_drops_its_stale_states(
    con, tmp_path
) -> None:
    """Live states stay queued through a failing write; when the write before a backfill
    fails, the queued states of the buckets REST brings final are dropped, the rest kept."""
    import duckdb

    from engine.data.feed import CandleWriter, FeedStats

    rows = candles_of("KRW-BTC", T0, 3)[CANDLE_COLUMNS].to_dict("records")
    broken = duckdb.connect(str(tmp_path / "gone.duckdb"))
    broken.close()
    writer = CandleWriter(broken, FeedStats())
    for row in rows:
        writer.put(row, 0.0)
    with pytest.raises(duckdb.Error):
        writer.flush()
    writer.discard_before(rows[2]["ts"])  # REST brings T0 and T0+1, final
    writer.con = con
    assert writer.flush() == 1
    assert list(stored(con, "KRW-BTC")["ts"]) == [rows[2]["ts"]]


async def test_reconnect_backoff_grows_exponentially_with_jitter_and_resets(con) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 7:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    async with FakeUpbit(ws_connect_limit=None) as fake:
        fake.refuse_ws = True  # an outage: every upgrade gets 503
        feed = LiveFeed(
            con,
            ["KRW-BTC"],
            ws_url=fake.ws_url,
            max_backoff=20.0,
            sleep=record,
            jitter=lambda: 0.5,
            backfill=False,
        )
        with pytest.raises(asyncio.CancelledError):
            await feed.run()
    assert delays == [0.75, 1.5, 3.0, 6.0, 12.0, 15.0, 15.0]
    assert feed.stats.drops == 7 and feed.stats.connects == 0

    # A connection that delivers frames resets the backoff.
    delays.clear()

    async def serve_then_drop(fake: FakeUpbit) -> None:
        await fake.wait_subscribed()
        await fake.push_candle("KRW-BTC", candles_of("KRW-BTC", T0, 1).iloc[0])
        await until(lambda: feed.stats.candle_frames == 1)
        fake.refuse_ws = True
        await fake.drop_connections()

    async def recover(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 3:
            fake.refuse_ws = False
            asyncio.get_running_loop().create_task(serve_then_drop(fake))
        if len(delays) == 5:
            raise asyncio.CancelledError

    async with FakeUpbit(ws_connect_limit=None) as fake:
        fake.refuse_ws = True
        feed = LiveFeed(
            con, ["KRW-BTC"], ws_url=fake.ws_url, sleep=recover, jitter=lambda: 0.5, backfill=False
        )
        with pytest.raises(asyncio.CancelledError):
            await feed.run()
    assert delays == [0.75, 1.5, 3.0, 0.75, 1.5]
    assert feed.stats.connects == 1

    jittered: list[float] = []

    async def collect(delay: float) -> None:
        jittered.append(delay)
        if len(jittered) == 40:
            raise asyncio.CancelledError

    async with FakeUpbit(ws_connect_limit=None) as fake:
        fake.refuse_ws = True
        feed = LiveFeed(con, ["KRW-BTC"], ws_url=fake.ws_url, max_backoff=1.0, sleep=collect)
        with pytest.raises(asyncio.CancelledError):
            await feed.run()
    assert all(0.5 <= d <= 1.0 for d in jittered) and len(set(jittered)) > 30


async def test_malformed_frames_are_skipped_and_refused_subscriptions_stop(con) -> None:
    statuses: list[str] = []
    async with FakeUpbit() as fake:
        feed = LiveFeed(
            con,
            ["KRW-BTC"],
            ws_url=fake.ws_url,
            on_status=lambda text, level: statuses.append(text),
            backfill=False,
        )
        task = asyncio.create_task(feed.run())
        await fake.wait_subscribed()
        assert await fake.push_raw(b'{"type": "candle.1m", "code": "KRW-') == 1
        await fake.push_frame(candle_frame("KRW-BTC", candles_of("KRW-BTC", T0, 1).iloc[0]))
        await until(lambda: feed.stats.candle_frames == 1)
        # numbers the store refuses: skipped here, so they never block the writer's queue
        for field, value in (("trade_price", 0.0), ("high_price", 1e400)):
            bad = candle_frame("KRW-BTC", candles_of("KRW-BTC", T0, 1).iloc[0])
            bad[field] = value
            await fake.push_frame(bad)
        await until(lambda: feed.stats.malformed == 3)
        await stop(task)
    assert feed.stats.malformed == 3 and feed.stats.candle_frames == 1 and feed.stats.drops == 0
    assert any("malformed" in text for text in statuses)

    async with FakeUpbit() as fake:
        feed = LiveFeed(
            con, [], watch=["KRW-BTC"], watch_types=("bogus",), ws_url=fake.ws_url, backfill=False
        )
        with pytest.raises(UpbitRefused, match="INVALID_PARAM"):
            await asyncio.wait_for(feed.run(), 10)


async def test_upbit_live_drives_the_engine_from_the_feed(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = next_minute()
    data = candles_of("KRW-BTC", bucket, 3).to_dict("records")
    async with FakeUpbit() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        engine = LiveEngine(con, "KRW-BTC", "1", no_model_reason="no champion")
        task = asyncio.create_task(upbit_live(engine))
        await fake.wait_subscribed()
        for row in data:
            await fake.play(forming_frames("KRW-BTC", row, steps=2))
        await until(lambda: len(engine.signals) == 2)
        await stop(task)
    assert [s.ts for s in engine.signals] == [data[0]["ts"], data[1]["ts"]]
    assert "no champion" in engine.signals[0].reason
    assert list(engine.history["ts"]) == [data[0]["ts"], data[1]["ts"]]
    assert len(load_candles(con, "KRW-BTC", "1")) == 3  # the forming candle too


async def test_a_session_goes_live_when_upbit_answers_and_the_banner_follows_the_socket(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.live.engine import StatusEvent
    from engine.live.session import open_session
    from engine.research.features import warm_up

    warm_up()  # compiled before the clock is read: the session opens within the minute
    bucket = current_minute(margin=20)
    history = candles_of("KRW-BTC", bucket - pd.Timedelta(minutes=600), 600)
    async with FakeUpbit(history) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        session = await open_session(con, "KRW-BTC", "1", probe_timeout=5)
        assert session.mode == "live" and session.banner.startswith("LIVE · Upbit · KRW-BTC 1m")
        engine = session.engine
        # the trailing window came from REST: the stored closed candles up to now
        assert len(engine.history) == engine.window
        assert engine.history["ts"].iloc[-1] == history["ts"].iloc[-1]
        states: list[bool] = []
        engine.subscribe(
            lambda e: (
                states.append(e.connected)
                if isinstance(e, StatusEvent) and e.connected is not None
                else None
            )
        )
        task = asyncio.create_task(session.runner)
        await fake.wait_subscribed()
        await until(lambda: states[-1:] == [True])
        for row in candles_of("KRW-BTC", bucket, 2, seed=5).to_dict("records"):
            await fake.play(forming_frames("KRW-BTC", row, steps=2))
        await until(lambda: len(engine.signals) == 1)
        await fake.drop_connections()
        await until(lambda: False in states)  # the drop is announced as disconnected
        await until(lambda: states[-1] is True, timeout=15)  # and the reconnect as connected
        await stop(task)
    assert engine.signals[0].ts == bucket and engine.signals[0].market == "KRW-BTC"


async def test_a_live_session_fills_its_window_with_closed_candles_across_gaps(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No-trade minutes leave window + 1 buckets short of candles: the session reaches
    further back; the forming candle REST also serves is not part of the window."""
    from engine.live.session import open_session
    from engine.research.features import warm_up

    warm_up()
    bucket = current_minute(margin=20)  # the session must see the same forming bucket
    history = candles_of("KRW-BTC", bucket - pd.Timedelta(minutes=700), 701)  # the last forms
    quiet = history["ts"].between(
        bucket - pd.Timedelta(minutes=200), bucket - pd.Timedelta(minutes=141)
    )
    history = history[~quiet].reset_index(drop=True)  # 60 minutes nothing traded
    async with FakeUpbit(history) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        session = await open_session(con, "KRW-BTC", "1", probe_timeout=5)
        session.runner.close()
    engine = session.engine
    closed = history[history["ts"] < bucket].tail(engine.window)
    assert closed["ts"].iloc[0] < bucket - pd.Timedelta(minutes=engine.window)  # beyond one span
    assert list(engine.history["ts"]) == list(closed["ts"])
    assert engine.history["ts"].is_unique and engine.history["ts"].iloc[
        -1
    ] == bucket - pd.Timedelta(minutes=1)


async def test_a_session_whose_backfill_is_refused_replays_instead_of_failing(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upbit answers the probe, then blocks the backfill (418): replay what is stored."""
    from engine.live.session import open_session

    upsert_candles(con, candles_of("KRW-BTC", T0, 700))
    bucket = pd.Timestamp.now(tz="UTC").floor("min")
    async with FakeUpbit(candles_of("KRW-BTC", bucket - pd.Timedelta(minutes=600), 600)) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        fake.fail_next(1, 418, after=1)  # the probe passes, the first backfill page is refused
        session = await open_session(con, "KRW-BTC", "1", replay_delay=0, probe_timeout=5)
        session.runner.close()
    assert session.mode == "replay"
    assert session.banner.startswith("Upbit backfill failed (") and "REPLAY of" in session.banner
    assert "418" in session.banner or "Blocked" in session.banner
    assert len(load_candles(con, "KRW-BTC", "1")) == 700  # nothing stored was lost


async def test_a_session_replays_stored_candles_when_upbit_is_unreachable(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from engine.live.session import open_session

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("UPQUANT_UPBIT_REST_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("UPQUANT_UPBIT_WS_URL", f"ws://127.0.0.1:{port}/websocket/v1")
    upsert_candles(con, candles_of("KRW-BTC", T0, 700))
    session = await open_session(con, "KRW-BTC", "1", replay_delay=0, probe_timeout=5)
    assert session.mode == "replay"
    assert session.banner.startswith("Upbit unreachable (") and "REPLAY of" in session.banner
    played = await session.runner
    assert played == 700 - session.engine.window == len(session.engine.signals)


async def test_a_market_upbit_does_not_list_is_not_called_unreachable(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.live.session import open_session

    async with FakeUpbit(candles_of("KRW-BTC", T0, 10)) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        session = await open_session(con, "KRW-NOPE", "1", replay_delay=0, probe_timeout=5)
        session.runner.close()
    assert session.mode == "demo"
    assert session.banner.startswith("Upbit answered with an error (")
    assert "does not know market 'KRW-NOPE'" in session.banner


async def test_markets_at_their_own_units_share_one_connection(con) -> None:
    """KRW-AAA at 1 minute and KRW-BBB at 60 minutes: one subscription with a candle type per
    unit, each candle stored and closed at its own width (the hour's by the clock only after
    the hour ended), a frame of a type the market was not subscribed at skipped."""
    clock = Clock(T0 + pd.Timedelta(seconds=5))
    closed: list[dict[str, Any]] = []
    minute = generate_candles("KRW-AAA", "1", T0, 2, seed=1)
    hour = generate_candles("KRW-BBB", "60", T0, 1, seed=2)
    async with FakeUpbit() as fake:
        feed = LiveFeed(
            con,
            ["KRW-AAA", "KRW-BBB"],
            "1",
            units={"KRW-BBB": "60"},
            on_closed=closed.append,
            clock=clock,
            grace=0.5,
            ws_url=fake.ws_url,
            backfill=False,
        )
        task = asyncio.create_task(feed.run())
        await fake.wait_subscribed()
        await fake.push_candle("KRW-AAA", minute.iloc[0])
        await fake.push_candle("KRW-BBB", hour.iloc[0], unit="60")
        await until(lambda: set(feed.forming) == {"KRW-AAA", "KRW-BBB"})
        feed.on_frame(candle_frame("KRW-BBB", minute.iloc[0], "1"))
        clock.set(T0 + pd.Timedelta(seconds=61))
        await fake.push_candle("KRW-AAA", minute.iloc[1])  # closes the first minute
        await until(lambda: len(closed) == 1)
        clock.set(T0 + pd.Timedelta(minutes=30))
        await until(lambda: len(closed) == 2)  # the quiet second minute, by the clock
        await asyncio.sleep(0.3)  # the clock's closing ran again: half an hour is not an hour
        assert [c["market"] for c in closed] == ["KRW-AAA", "KRW-AAA"]
        clock.set(T0 + pd.Timedelta(minutes=60, seconds=1))
        await until(lambda: len(closed) == 3)  # the hour
        await stop(task)
    subscription = {part.get("type"): part.get("codes") for part in fake.subscriptions[-1]}
    assert subscription["candle.1m"] == ["KRW-AAA"]
    assert subscription["candle.60m"] == ["KRW-BBB"]
    by_market = {c["market"]: c for c in closed if c["ts"] == T0}
    assert by_market["KRW-BBB"]["unit"] == "60" and by_market["KRW-AAA"]["unit"] == "1"
    assert by_market["KRW-BBB"]["close"] == hour.iloc[0]["close"]
    assert feed.stats.malformed == 1  # the 1-minute frame of the 60-minute market
    assert len(load_candles(con, "KRW-BBB", "60")) == 1
    assert load_candles(con, "KRW-BBB", "1").empty
    assert len(load_candles(con, "KRW-AAA", "1")) == 2


async def test_the_periodic_write_waits_while_a_decision_is_due_or_running(
    con, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions first: while a closed candle's callback runs (or the engine says it is busy,
    or a forming candle's bucket has ended) the writer's periodic upsert waits, then writes;
    never longer than HOLD_MAX_S."""
    monkeypatch.setattr(feed_module, "HOLD_MAX_S", 0.5)
    clock = Clock(T0 + pd.Timedelta(seconds=5))
    release = asyncio.Event()
    deciding: list[bool] = []

    async def decide(candle: dict[str, Any]) -> None:
        deciding.append(feed.writer.hold())
        await release.wait()

    busy = [False]
    feed = LiveFeed(
        con, ["KRW-AAA"], "1", on_closed=decide, clock=clock, flush_interval=0.02,
        busy=lambda: busy[0], backfill=False,
    )  # fmt: skip
    candles = candles_of("KRW-AAA", T0, 2)
    tasks = [asyncio.create_task(feed._deliver_events()), asyncio.create_task(feed.writer.run())]
    feed.on_frame(candle_frame("KRW-AAA", candles.iloc[0], "1"))
    await until(lambda: feed.stats.rows_written == 1)  # nothing due: written at once
    clock.set(T0 + pd.Timedelta(seconds=61))  # the bucket ended: its close is due
    assert feed.writer.hold()
    feed.on_frame(candle_frame("KRW-AAA", candles.iloc[1], "1"))  # closes the first
    await until(lambda: deciding == [True])
    await asyncio.sleep(0.2)  # ten intervals: the next candle's state waits
    assert feed.stats.rows_written == 1
    release.set()
    await until(lambda: feed.stats.rows_written == 2)
    busy[0] = True  # the engine deciding a pass it was handed: held, at most HOLD_MAX_S
    feed.on_frame(candle_frame("KRW-AAA", {**candles.iloc[1], "close": 1.0}, "1"))
    await asyncio.sleep(0.2)
    assert feed.stats.rows_written == 2
    await until(lambda: feed.stats.rows_written == 3, timeout=2.0)
    await asyncio.gather(*(stop(t) for t in tasks))
