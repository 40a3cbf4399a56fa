"""Where candles come from: the Upbit WebSocket (with reconnect), replay, or a demo market."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from engine.live import LiveEngine, StatusEvent
from engine.markets import unit_timedelta_minutes


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
    step = timedelta(minutes=unit_timedelta_minutes(unit))
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
    sleep: Callable[[float], object] = asyncio.sleep,
) -> None:
    """Stream `candle.<unit>m` frames into the engine forever, reconnecting with exponential
    backoff and jitter; after each reconnect the missed interval is backfilled over REST."""
    from engine.data import fetch_into_store
    from engine.upbit import UpbitError, candle_frame_to_row, stream

    attempt = 0
    try:
        while True:
            try:
                engine.publish(
                    StatusEvent(f"Upbit live: streaming {engine.market} candle.{engine.unit}m")
                )
                async for frame in stream([engine.market], types=(f"candle.{engine.unit}m",)):
                    if frame.get("type", "").startswith("candle"):
                        attempt = 0
                        await engine.on_frame(candle_frame_to_row(frame))
            except (TimeoutError, UpbitError, OSError) as exc:
                engine.flush()
                delay = min(max_backoff, 2.0**attempt) * (0.5 + random.random() / 2)
                attempt += 1
                engine.publish(
                    StatusEvent(
                        f"Upbit stream dropped ({exc}); reconnecting in {delay:.1f}s", "warning"
                    )
                )
                await sleep(delay)
                last = engine.history["ts"].iloc[-1] if len(engine.history) else None
                if last is not None:
                    try:
                        since = pd.Timestamp(last).to_pydatetime()
                        await fetch_into_store(engine.con, engine.market, engine.unit, since)
                        engine.prime()  # the window now includes the backfilled candles
                    except (UpbitError, OSError) as gap_exc:
                        engine.publish(StatusEvent(f"gap backfill failed: {gap_exc}", "warning"))
    finally:
        engine.flush()  # also when cancelled: buffered closed candles are stored
