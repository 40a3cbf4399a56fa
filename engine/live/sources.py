"""Where candles come from: the Upbit WebSocket (with reconnect), replay, or a demo market."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from engine.live.engine import CandleEvent, LiveEngine, StatusEvent
from engine.live.markets import MarketsEngine
from engine.upbit.markets import unit_minutes


async def replay(engine: LiveEngine, candles: pd.DataFrame, delay: float = 0.0) -> int:
    """Feed stored candles through the engine as closed candles, `delay` seconds apart."""
    count = 0
    try:
        for row in candles.to_dict("records"):
            await engine.on_closed(row)
            count += 1
            if delay:
                await asyncio.sleep(delay)
            elif count % 10 == 0:
                await asyncio.sleep(0)  # let the UI breathe on fast replays
    finally:
        engine.flush()  # also when cancelled: what was decided is stored
    return count


def demo_candles(
    n: int,
    market: str = "KRW-BTC",
    unit: str = "1",
    *,
    seed: int = 7,
    start: datetime | None = None,
    price: float = 1.5e8,
) -> pd.DataFrame:
    """A synthetic market (random walk with volatility clusters) for offline demos and tests."""
    rng = np.random.default_rng(seed)
    step = timedelta(minutes=unit_minutes(unit))
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    vol = 0.0008 * np.exp(np.cumsum(rng.normal(0, 0.05, n)).clip(-1.5, 1.5))
    log_ret = rng.normal(0, 1, n) * vol
    close = price * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[price], close[:-1]])
    wick = np.abs(rng.normal(0, 1, (2, n))) * vol * close * 0.5
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    volume = rng.gamma(2.0, 0.5, n) * (1 + 200 * np.abs(log_ret))
    return pd.DataFrame(
        {
            "market": market,
            "unit": unit,
            "ts": pd.date_range(start, periods=n, freq=step),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "value": volume * close,
        }
    )


async def upbit_live(
    engine: LiveEngine,
    *,
    max_backoff: float = 30.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    grace: float | None = None,
) -> None:
    """`upbit_live_markets` for one market's engine built on its own: its candles streamed
    into it forever, closed by the feed's one rule, its window reloaded after a backfill."""
    await upbit_live_markets(
        MarketsEngine.of_lane(engine), max_backoff=max_backoff, sleep=sleep, grace=grace
    )


# --- many markets: the watchlist's sources ------------------------------------------------------
async def replay_markets(engine: MarketsEngine, candles: pd.DataFrame, delay: float = 0.0) -> int:
    """Feed stored candles of many markets through `engine`, one pass per close time (every
    market whose candle closes then: a 60-minute candle closes with the 1-minute candle of
    its last minute), `delay` seconds between passes; the number of candles played."""
    count = 0
    try:
        widths = {
            unit: pd.Timedelta(minutes=unit_minutes(unit)) for unit in candles["unit"].unique()
        }
        closes = candles["ts"] + candles["unit"].map(widths)
        frame = candles.assign(_close=closes).sort_values(["_close", "market"], kind="stable")
        for _, minute in frame.drop(columns="_close").groupby(frame["_close"], sort=True):
            rows = minute.to_dict("records")
            await engine.on_closed_many(rows)
            count += len(rows)
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the faces breathe on fast replays
    finally:
        engine.flush()  # also when cancelled: what was decided is stored
    return count


async def upbit_live_markets(
    engine: MarketsEngine,
    *,
    max_backoff: float = 30.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    grace: float | None = None,
) -> None:
    """Stream every market of `engine` over one WebSocket (engine.data.feed.LiveFeed) into
    passes: each closed candle is submitted, and those closing together (a minute's end) are
    decided in one pass. After a backfill, that market's window is reloaded from the store."""
    from engine.data.feed import CLOSE_GRACE_S, LiveFeed
    from engine.upbit.client import floor_bucket
    from store.candles import load_candles

    def reprime(market: str | None = None, new: int = 0) -> None:
        if feed.store:
            feed.writer.flush()
        markets = [market] if market in engine.lanes else list(engine.lanes)
        for name in markets:
            lane = engine.lanes[name]
            forming = feed.forming.get(name)
            end = forming["ts"] if forming else floor_bucket(pd.Timestamp.now(tz="UTC"), lane.unit)
            lane.prime(load_candles(engine.con, name, lane.unit, end=end, last=lane.window))

    def update(candle: dict[str, Any]) -> None:
        lane = engine.lanes.get(candle["market"])
        if lane is not None:
            lane.publish(CandleEvent(candle, closed=False))

    feed = LiveFeed(
        engine.con,
        list(engine.lanes),
        engine.unit,
        units=engine.units,
        grace=CLOSE_GRACE_S if grace is None else grace,
        on_update=update,
        on_closed=engine.submit,
        busy=lambda: engine.busy,
        on_backfill=reprime,
        on_status=lambda text, level: engine.publish(
            StatusEvent(text, level, connected=feed.connected)
        ),
        max_backoff=max_backoff,
        sleep=sleep,
    )
    reprime()  # closed candles only, whoever primed the engine before
    try:
        await feed.run()
    finally:
        await engine.drain()
        engine.flush()
