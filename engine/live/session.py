"""Starting a workstation session: live from Upbit when reachable, else replay, else demo."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from engine.live.engine import Inference, LiveEngine
from engine.live.markets import MarketsEngine
from engine.live.seats import load_seats
from engine.live.sources import demo_candles, replay_markets, upbit_live_markets
from engine.research.features import warm_up
from engine.trading.paper import BrokerConfig, PaperBroker
from engine.trading.paper_book import load_book, reset_book
from engine.trading.spec import StrategySpec
from engine.upbit.markets import unit_minutes
from store.candles import load_candles

REPLAY_CANDLES = 2000  # default number of stored candles a replay session plays


@dataclass
class Session:
    engine: LiveEngine  # the first market's lane (the one market of a single-market session)
    mode: str  # live, replay or demo
    banner: str  # what the user must know about where the data comes from
    runner: Coroutine[Any, Any, Any]
    markets: MarketsEngine | None = None  # every market's lane


async def probe_upbit(market: str, unit: str, timeout: float = 3.0) -> str | None:
    """None when Upbit answers for `market`, else why not, as the banner says it: unreachable
    (network, timeout) or answering with an error (e.g. a market it does not list)."""
    from engine.upbit.client import fetch_candles
    from engine.upbit.errors import UpbitError, UpbitUnreachable

    now = datetime.now(UTC)
    try:
        await asyncio.wait_for(
            fetch_candles(market, unit, now - timedelta(minutes=unit_minutes(unit) * 3), now),
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


async def backfill_windows(
    con: duckdb.DuckDBPyConnection, markets: list[str], unit: str, window: int
) -> dict[str, pd.DataFrame]:
    """`backfill_window` for many markets of one unit at once: one fetch of every market's
    window, then wider ones (2, 4, 8 windows) only for the markets still short (thin ones)."""
    from engine.data.backfill import fetch_markets
    from engine.upbit.client import floor_bucket, unit_width

    forming = floor_bucket(datetime.now(UTC), unit)
    width = unit_width(unit)
    closed: dict[str, pd.DataFrame] = {}
    short = list(markets)
    for span in (1, 2, 4, 8):
        since = (forming - width * window * span).to_pydatetime()
        report = await fetch_markets(con, short, unit, since)
        if report.stopped is not None:  # unreachable, or blocked: nothing more will come
            raise report.stopped
        failed = [s.error for s in report.failed if s.error is not None]
        if failed and len(failed) == len(short):
            raise failed[0]  # every market refused
        for market in short:
            closed[market] = load_candles(
                con, market, unit, end=forming.to_pydatetime(), last=window
            )
        short = [m for m in short if len(closed[m]) < window]
        if not short:
            break
    return closed


async def open_session(
    con: duckdb.DuckDBPyConnection,
    market: str | Sequence[str],
    unit: str,
    *,
    units: Mapping[str, str] | None = None,
    threshold: float | None = None,
    offline: bool = False,
    replay_delay: float = 0.25,
    probe_timeout: float = 3.0,
    replay_candles: int = REPLAY_CANDLES,
    inference: Inference | None = None,
    strategy: StrategySpec | None = None,
    paper: BrokerConfig | None = None,
) -> Session:
    """Build the engine for `market` (or a watchlist of markets) of `unit` (`units`: the
    markets at another unit) and the coroutine that feeds it: live from Upbit when it
    answers, else a replay of the stored candles, else a demo market. `Session.engine` is the
    first market's lane, `Session.markets` all.

    `strategy` decides every market (the default: the AI threshold `threshold`, the SMA-cross
    rule when no model answers); its signals trade on paper (`paper`, the broker's settings):
    live on the stored "live" book (a restart resumes it), a replay on a fresh "replay" book,
    a demo on a book kept in memory."""
    markets = [market] if isinstance(market, str) else list(dict.fromkeys(market))
    if not markets:
        raise ValueError("a session needs at least one market")
    first = markets[0]
    unit_of = {m: (units or {}).get(m, unit) for m in markets}
    await asyncio.to_thread(warm_up)  # numba JIT now, not on the first live candle
    # artifact hashing and model loading stay off the event loop (the TUI keeps drawing)
    cursor = con.cursor()
    from engine.live.inference_service import InferenceService

    service = inference if isinstance(inference, InferenceService) else None
    seats = await asyncio.to_thread(
        lambda: {m: load_seats(cursor, m, unit_of[m], service) for m in markets}
    )
    engine = MarketsEngine(con, unit, inference=inference, strategy=strategy)
    if threshold is None:  # the strategy's, else the default spec's
        threshold = strategy.threshold if strategy is not None else 0.5
    for name in markets:
        seat = seats[name]
        said = seat.champion_reason
        if seat.shadows:
            said += f" · {len(seat.shadows)} in shadow"
        engine.add_market(
            name,
            seat.champion,
            threshold=threshold,
            shadows=seat.shadows,
            no_model_reason=said,
            unit=unit_of[name],
        )
    lane = engine.lanes[first]
    groups: dict[str, list[str]] = {}
    for name in markets:
        groups.setdefault(unit_of[name], []).append(name)
    if len(markets) == 1:
        where, models = f"{first} {unit_of[first]}m", lane.no_model_reason
    else:
        seated = sum(1 for one in engine.lanes.values() if one.model is not None)
        where = f"{len(markets)} markets ({', '.join(markets[:3])}{' ...' if len(markets) > 3 else ''}) {'/'.join(f'{u}m' for u in groups)}"
        models = f"{seated} with a champion, {len(markets) - seated} on the rule"
    reason: str | None = (
        "OFFLINE (--offline): Upbit not contacted"
        if offline
        else await probe_upbit(first, unit_of[first], probe_timeout)
    )
    if reason is None:
        from engine.upbit.errors import UpbitError

        try:
            windows: dict[str, pd.DataFrame] = {}
            for group_unit, names in groups.items():
                window = max(engine.lanes[name].window for name in names)
                windows |= await backfill_windows(con, names, group_unit, window)
        except (UpbitError, OSError) as exc:  # what it stored stays: the replay plays it
            reason = f"Upbit backfill failed ({exc})"
        else:
            for name, candles in windows.items():
                engine.prime(name, candles)
            engine.broker, engine.account = load_book(con, "live", paper), "live"
            return Session(
                lane,
                "live",
                f"LIVE · Upbit · {where} · {models}",
                upbit_live_markets(engine),
                engine,
            )
    window = engine.window
    stored = {m: load_candles(con, m, unit_of[m], last=window + replay_candles) for m in markets}
    playable = {m: frame for m, frame in stored.items() if len(frame) > window}
    if playable:
        _set_mode(engine, "replay", signal_batch=50)
        reset_book(con, "replay")
        engine.broker, engine.account, engine.book_every = PaperBroker(paper), "replay", 50
        for name, frame in playable.items():
            engine.prime(name, frame.iloc[:window])
        played = pd.concat([frame.iloc[window:] for frame in playable.values()], ignore_index=True)
        what = (
            f"{len(played)} stored"
            if len(markets) > 1
            else f"{len(played)} stored {first} {unit_of[first]}m"
        )
        left = [m for m in markets if m not in playable]
        banner = (
            f"{reason} · REPLAY of {what} candles"
            + (
                f" of {len(playable)} markets {'/'.join(f'{u}m' for u in groups)}"
                f" ({len(left)} without stored candles)"
                if len(markets) > 1
                else ""
            )
            + f" · {models}"
        )
        return Session(lane, "replay", banner, replay_markets(engine, played, replay_delay), engine)
    _set_mode(engine, "demo", persist=False)
    engine.broker = PaperBroker(paper)
    demos = []
    for k, name in enumerate(markets):
        demo = demo_candles(
            window + replay_candles, name, unit_of[name], seed=7 + k, price=_demo_price(k)
        )
        engine.prime(name, demo.iloc[:window])
        demos.append(demo.iloc[window:])
    banner = f"{reason} · no stored {where} candles · DEMO market (synthetic) · {models}"
    return Session(
        lane,
        "demo",
        banner,
        replay_markets(engine, pd.concat(demos, ignore_index=True), replay_delay),
        engine,
    )


def _set_mode(
    engine: MarketsEngine, mode: str, *, signal_batch: int = 1, persist: bool = True
) -> None:
    engine.mode, engine.signal_batch, engine.persist_signals = mode, signal_batch, persist
    for lane in engine.lanes.values():
        lane.mode, lane.signal_batch, lane.persist_signals = mode, signal_batch, persist


def _demo_price(k: int) -> float:
    """Demo markets' starting prices: KRW-BTC's level first, then a spread of levels (so the
    tick sizes differ)."""
    return 1.5e8 if k == 0 else float(10 ** (2 + k % 6) * (1 + k % 7))
