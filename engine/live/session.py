"""Starting a workstation session: live from Upbit when reachable, else replay, else demo."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from engine.live.engine import LiveEngine
from engine.live.seats import load_seats
from engine.live.sources import demo_candles, replay, upbit_live
from engine.research.features import warm_up
from engine.upbit.markets import unit_minutes
from store.candles import load_candles

REPLAY_CANDLES = 2000  # default number of stored candles a replay session plays


@dataclass
class Session:
    engine: LiveEngine
    mode: str  # live, replay or demo
    banner: str  # what the user must know about where the data comes from
    runner: Coroutine[Any, Any, Any]


async def probe_upbit(market: str, unit: str, timeout: float = 3.0) -> str | None:
    """None when Upbit answers for `market`, else why not, as the banner says it: unreachable
    (network, timeout) or answering with an error (e.g. a market it does not list)."""
    from engine.upbit.client import fetch_candles
    from engine.upbit.errors import UpbitError, UpbitUnreachable

    now = datetime.now(UTC)
    try:
        await asyncio.wait_for(
            fetch_candles(
                market, unit, now - timedelta(minutes=unit_minutes(unit) * 3), now
            ),
            timeout,
        )
    except TimeoutError:
        return f"Upbit unreachable (no answer within {timeout:.0f}s)"
    except (UpbitUnreachable, OSError) as exc:
        return f"Upbit unreachable ({exc})"
    except UpbitError as exc:
        return f"Upbit answered with an error ({exc})"
    return None


async def backfill_window(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, window: int
) -> pd.DataFrame:
    """The newest `window` closed candles (the forming bucket excluded), fetched into the store.

    A candle exists only where something traded, so `window` buckets may hold fewer candles:
    the fetch reaches back 1, 2, 4 then 8 windows until the window is full (the store's
    coverage makes each wider fetch ask only for what it does not hold yet). A market that
    thin leaves the window short, and the engine says so on its first candle.
    """
    from engine.data.backfill import fetch_into_store
    from engine.upbit.client import floor_bucket, unit_width

    forming = floor_bucket(datetime.now(UTC), unit)
    width = unit_width(unit)
    closed = pd.DataFrame()
    for span in (1, 2, 4, 8):
        await fetch_into_store(con, market, unit, (forming - width * window * span).to_pydatetime())
        closed = load_candles(con, market, unit, end=forming.to_pydatetime(), last=window)
        if len(closed) >= window:
            break
    return closed


async def open_session(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    *,
    threshold: float = 0.5,
    offline: bool = False,
    replay_delay: float = 0.25,
    probe_timeout: float = 3.0,
    replay_candles: int = REPLAY_CANDLES,
) -> Session:
    """Build the engine for `market`/`unit` and the coroutine that feeds it."""
    await asyncio.to_thread(warm_up)  # numba JIT now, not on the first live candle
    # artifact hashing and model loading stay off the event loop (the TUI keeps drawing)
    seats = await asyncio.to_thread(load_seats, con.cursor(), market, unit)
    model, model_reason = seats.champion, seats.champion_reason
    if seats.shadows:
        model_reason += f" · {len(seats.shadows)} in shadow"
    reason = (
        "OFFLINE (--offline): Upbit not contacted"
        if offline
        else await probe_upbit(market, unit, probe_timeout)
    )
    engine = LiveEngine(
        con,
        market,
        unit,
        model=model,
        threshold=threshold,
        no_model_reason=model_reason,
        shadows=list(seats.shadows),
    )
    if reason is None:
        from engine.upbit.errors import UpbitError

        try:
            engine.prime(await backfill_window(con, market, unit, engine.window))
        except (UpbitError, OSError) as exc:  # what it stored stays: the replay plays it
            reason = f"Upbit backfill failed ({exc})"
        else:
            return Session(
                engine,
                "live",
                f"LIVE · Upbit · {market} {unit}m · {model_reason}",
                upbit_live(engine),
            )
    stored = load_candles(con, market, unit, last=engine.window + replay_candles)
    if len(stored) > engine.window:
        engine.mode, engine.signal_batch = "replay", 50
        engine.prime(stored.iloc[: engine.window])
        banner = (
            f"{reason} · REPLAY of {len(stored) - engine.window} stored"
            f" {market} {unit}m candles · {model_reason}"
        )
        return Session(
            engine, "replay", banner, replay(engine, stored.iloc[engine.window :], replay_delay)
        )
    engine.mode, engine.persist_signals = "demo", False
    demo = demo_candles(engine.window + replay_candles, market, unit)
    engine.prime(demo.iloc[: engine.window])
    banner = (
        f"{reason} · no stored {market} {unit}m candles · DEMO market (synthetic) · {model_reason}"
    )
    return Session(engine, "demo", banner, replay(engine, demo.iloc[engine.window :], replay_delay))
