"""Live candles of many markets over one Upbit WebSocket, kept continuous in the store.

One connection carries `candle.<unit>m` for every market, each market at its own unit (a type
per unit in one subscription; plus trade and ticker for a watchlist). Repeated frames of a forming candle replace it; a candle closes when a frame of a
later bucket arrives or, on a quiet market, by the clock once its bucket has ended `grace`
seconds ago. Every candle update is written to DuckDB in batches (latest state per candle,
one upsert per flush). After any drop the feed reconnects with exponential backoff and
jitter, and backfills the buckets it missed over REST, so the stored series has no holes.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.data.backfill import fetch_markets
from engine.upbit.client import RateLimiter, floor_bucket, make_client
from engine.upbit.errors import UpbitError, UpbitRefused
from engine.upbit.markets import CANDLE_FIELDS, check_unit, unit_minutes
from engine.upbit.websocket import PING_INTERVAL_S, stream
from store.candles import CANDLE_COLUMNS, last_ts_by_market, upsert_candles

CLOSE_GRACE_S = 3.0  # a quiet market's candle closes this long after its bucket ends
FLUSH_INTERVAL_S = 0.25
# The periodic candle write waits (at most this long) while a candle's decision is due or
# running: its upsert holds the GIL for ~8 ms, and a pass that overlaps it waits that long.
HOLD_MAX_S = 2.0
HOLD_POLL_S = 0.005
WATCH_TYPES = ("trade", "ticker")
# Error frames that a new connection would only repeat: the subscription itself is wrong.
FATAL_REFUSALS = {"NO_TICKET", "NO_TYPE", "NO_CODES", "INVALID_PARAM", "WRONG_FORMAT"}

Callback = Callable[..., Awaitable[object] | object]


@dataclass
class FeedStats:
    """Counters of a running feed; `latencies` are seconds from frame to stored (recent)."""

    frames: int = 0
    candle_frames: int = 0
    trades: int = 0
    tickers: int = 0
    malformed: int = 0
    closed_by_next: int = 0
    closed_by_clock: int = 0
    late: int = 0  # frames of a bucket that had already ended: stored, not announced
    flushes: int = 0
    rows_written: int = 0
    connects: int = 0
    drops: int = 0
    backfills: int = 0
    backfilled: int = 0  # new candles stored by REST backfill
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))

    def latency(self, q: float) -> float:
        """The q-quantile (0..1) of recent frame-to-stored latencies, NaN before any."""
        return (
            float(np.quantile(np.fromiter(self.latencies, float), q)) if self.latencies else np.nan
        )


class CandleWriter:
    """Coalesces candle updates (the latest per market/unit/ts) and upserts them in one batch
    every `interval` seconds, or at once when `max_rows` candles are waiting."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        stats: FeedStats,
        *,
        interval: float = FLUSH_INTERVAL_S,
        max_rows: int = 5000,
        clock: Callable[[], float] = time.time,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self.con = con
        self.hold = hold  # True: a decision is due or running, the periodic write waits
        self.stats = stats
        self.interval = interval
        self.max_rows = max_rows
        self._clock = clock
        self._rows: dict[tuple[str, str, pd.Timestamp], dict[str, Any]] = {}
        self._origins: list[float] = []
        self._writing = threading.Lock()  # one write at a time, in the order taken
        self._cursor: duckdb.DuckDBPyConnection | None = None  # the off-loop writes'

    def put(self, row: dict[str, Any], origin: float) -> None:
        """Queue one candle state; `origin` is when its frame was made or received (clock)."""
        self._rows[(row["market"], row["unit"], row["ts"])] = row
        self._origins.append(origin)
        if len(self._rows) >= self.max_rows:
            self.flush()

    def flush(self) -> int:
        """Write what is queued in one upsert; returns how many candles were written.

        When the write fails the candles stay queued (newer updates still win) and the error
        is raised; the next flush tries again. Waits for a write in flight (`run`'s, off the
        loop) first, so an older state never lands over a newer one.
        """
        with self._writing:
            batch = self._take()
            if batch is None:
                return 0
            try:
                upsert_candles(self.con, batch[2])
            except Exception:
                self._restore(batch)
                raise
            return self._done(batch)

    def _take(self) -> tuple[dict[Any, dict[str, Any]], list[float], pd.DataFrame] | None:
        if not self._rows:
            return None
        rows, origins = self._rows, self._origins
        self._rows, self._origins = {}, []
        return rows, origins, pd.DataFrame(list(rows.values()), columns=CANDLE_COLUMNS)

    def _restore(self, batch: tuple[dict[Any, dict[str, Any]], list[float], pd.DataFrame]) -> None:
        rows, origins, _ = batch
        self._rows = {**rows, **self._rows}
        self._origins = origins + self._origins

    def _done(self, batch: tuple[dict[Any, dict[str, Any]], list[float], pd.DataFrame]) -> int:
        _, origins, frame = batch
        self.stats.latencies.extend((self._clock() - np.asarray(origins, dtype=float)).tolist())
        self.stats.flushes += 1
        self.stats.rows_written += len(frame)
        return len(frame)

    async def flush_off_loop(self) -> int:
        """`flush` with the upsert on a worker thread (its own cursor), so a closing candle's
        decision never waits behind a batch of candle writes on the event loop. The batch is
        taken and settled on the loop; the write lock is held from taking to writing, so a
        `flush` meanwhile waits and writes after it, in order."""
        self._writing.acquire()
        try:
            batch = self._take()
        except BaseException:
            self._writing.release()
            raise
        if batch is None:
            self._writing.release()
            return 0
        if self._cursor is None:
            self._cursor = self.con.cursor()
        cursor = self._cursor

        def write() -> None:
            try:
                upsert_candles(cursor, batch[2])
            finally:
                self._writing.release()

        try:
            await asyncio.shield(asyncio.to_thread(write))
        except BaseException:
            self._restore(batch)
            raise
        return self._done(batch)

    def discard_before(self, until: pd.Timestamp) -> None:
        """Forget the queued states of candles before `until` (REST has their final values)."""
        self._rows = {key: row for key, row in self._rows.items() if key[2] >= until}

    async def run(self, on_error: Callable[[Exception], object] | None = None) -> None:
        """Flush every `interval` seconds until cancelled; failures go to `on_error`. A flush
        waits while `hold()` says a decision is due or running (HOLD_MAX_S at most): decisions
        first, the candles a moment later."""
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            held = 0.0
            while self.hold is not None and held < HOLD_MAX_S and self.hold():
                await asyncio.sleep(HOLD_POLL_S)
                held += HOLD_POLL_S
            try:
                await self.flush_off_loop()
                failing = False
            except duckdb.Error as exc:
                if on_error is not None and not failing:
                    on_error(exc)
                failing = True


class LiveFeed:
    """Streams candles of `markets` (and trades/tickers of `watch`) into the store and to
    callbacks, forever, through drops; see the module docstring.

    Callbacks (sync or async, called in order from one task so a slow one never stalls the
    socket): `on_update(candle)` for every update of a forming candle, `on_closed(candle)`
    once per closed candle, `on_trade(frame)`, `on_ticker(frame)`, `on_backfill(market, n)`
    after REST stored `n` new candles of `market`, `on_status(text, level)`. Candles are
    canonical dicts (market, unit, ts, open, high, low, close, volume, value).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        markets: Sequence[str],
        unit: str = "1",
        *,
        units: Mapping[str, str] | None = None,
        watch: Sequence[str] = (),
        watch_types: Sequence[str] = WATCH_TYPES,
        grace: float = CLOSE_GRACE_S,
        on_update: Callback | None = None,
        on_closed: Callback | None = None,
        on_trade: Callback | None = None,
        on_ticker: Callback | None = None,
        on_backfill: Callback | None = None,
        on_status: Callback | None = None,
        busy: Callable[[], bool] | None = None,
        store: bool = True,
        flush_interval: float = FLUSH_INTERVAL_S,
        backfill: bool = True,
        backfill_limit: timedelta = timedelta(days=1),
        max_backoff: float = 30.0,
        ping_interval: float | None = None,
        ws_url: str | None = None,
        rest_url: str | None = None,
        limiter: RateLimiter | None = None,
        origin: Callable[[Mapping[str, Any]], float] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not markets and not watch:
            raise ValueError("a live feed needs at least one market or watched market")
        self.con = con
        self.markets = list(dict.fromkeys(markets))
        self.unit = _minute_unit(unit)
        # each market's unit (`units` names those that differ from `unit`): one subscription
        # carries a `candle.<unit>m` type per unit, each with its markets
        self.units = {m: _minute_unit((units or {}).get(m, unit)) for m in self.markets}
        self._widths = {m: unit_minutes(u) * 60.0 for m, u in self.units.items()}
        self.watch = list(dict.fromkeys(watch))
        self.watch_types = tuple(watch_types)
        self.grace = grace
        self.width = unit_minutes(self.unit) * 60.0  # the unit's; each market's in _widths
        self.store = store
        self.backfill = backfill
        self.backfill_limit = pd.Timedelta(backfill_limit)
        self.max_backoff = max_backoff
        self.ping_interval = ping_interval
        self.ws_url = ws_url
        self.rest_url = rest_url
        self.limiter = limiter
        self.stats = FeedStats()
        # decisions first: the periodic write waits while a close is due, its callbacks run,
        # or `busy()` (the engine deciding a pass it was handed) says so
        self.busy = busy
        self._closing = 0  # closed candles whose on_closed callback has not returned yet
        self.writer = CandleWriter(
            con, self.stats, interval=flush_interval, clock=clock, hold=self._deciding
        )
        self.forming: dict[str, dict[str, Any]] = {}
        self.last_closed: dict[str, pd.Timestamp] = {}
        self.last_seen: dict[str, pd.Timestamp] = {}  # newest candle ts seen per market
        self.tickers: dict[str, dict[str, Any]] = {}
        self.trades: dict[str, dict[str, Any]] = {}
        self.connected = False
        self._callbacks = {
            "update": on_update,
            "closed": on_closed,
            "trade": on_trade,
            "ticker": on_ticker,
            "backfill": on_backfill,
            "status": on_status,
        }
        self._origin = origin
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._events: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
        self._stamps: dict[str, pd.Timestamp] = {}
        self._resume_from: dict[str, pd.Timestamp] = {}
        self._backfill_until: float | None = None  # the clock when the connection opened
        self._backfill_task: asyncio.Task[None] | None = None
        self._malformed_this_connection = 0

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Stream until cancelled (or a subscription Upbit refuses for good: UpbitRefused)."""
        if self.backfill:
            floor = pd.Timestamp(self._clock(), unit="s", tz="UTC") - self.backfill_limit
            for unit, markets in self.by_unit().items():
                stored = last_ts_by_market(self.con, markets, unit)
                self._resume_from.update({m: ts for m, ts in stored.items() if ts >= floor})
        helpers = [
            asyncio.create_task(self._deliver_events()),
            asyncio.create_task(self._close_by_clock()),
        ]
        if self.store:
            helpers.append(asyncio.create_task(self.writer.run(self._write_failed)))
        attempt = 0
        groups = self.by_unit()
        candle_types = {f"candle.{unit}m": markets for unit, markets in groups.items()}
        first = next(iter(candle_types), None)
        extra: dict[str, list[str]] = {
            kind: codes for kind, codes in candle_types.items() if kind != first
        }
        for kind in self.watch_types if self.watch else ():
            extra[kind] = sorted({*extra.get(kind, []), *self.watch})
        try:
            while True:
                try:
                    async with aclosing(
                        stream(
                            candle_types[first] if first else [],
                            (first,) if first else (),
                            extra=extra or None,
                            ws_url=self.ws_url,
                            ping_interval=self.ping_interval or PING_INTERVAL_S,
                            on_open=self._opened,
                            on_malformed=self._malformed,
                        )
                    ) as frames:
                        async for frame in frames:
                            attempt = 0
                            self.on_frame(frame)
                    raise UpbitError("the Upbit WebSocket ended the stream")
                except UpbitRefused as exc:
                    if exc.name in FATAL_REFUSALS:
                        raise
                    delay = self._dropped(exc, attempt)
                except (UpbitError, OSError, TimeoutError) as exc:
                    delay = self._dropped(exc, attempt)
                attempt += 1
                await self._sleep(delay)
        finally:
            self.connected = False
            tasks = [*helpers, *([self._backfill_task] if self._backfill_task else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.store:
                self.writer.flush()  # also when cancelled: every candle seen is stored

    def _opened(self) -> None:
        self.connected = True
        self.stats.connects += 1
        self._malformed_this_connection = 0
        opened = self._clock()
        now = pd.Timestamp(opened, unit="s", tz="UTC")
        # Candles of buckets that ended while the socket was down come from REST, complete.
        for market, candle in list(self.forming.items()):
            if candle["ts"] < floor_bucket(now, self.units[market]):
                del self.forming[market]
        parts = [f"{len(markets)} markets {unit}m" for unit, markets in self.by_unit().items()]
        if self.watch:
            parts.append(f"{'/'.join(self.watch_types)} of {len(self.watch)} watched")
        self._emit("status", f"Upbit live: streaming {', '.join(parts)}", "info")
        if self.backfill and self.markets:
            self._backfill_until = opened
            if self._backfill_task is None or self._backfill_task.done():
                self._backfill_task = asyncio.create_task(self._backfill())

    def _dropped(self, exc: Exception, attempt: int) -> float:
        self.connected = False
        self.stats.drops += 1
        if self.store:
            try:
                self.writer.flush()
            except duckdb.Error as write_error:
                self._write_failed(write_error)
        for market, ts in self.last_seen.items():
            self._resume_from[market] = max(ts, self._resume_from.get(market, ts))
        delay = min(self.max_backoff, 2.0**attempt) * (0.5 + self._jitter() / 2)
        self._emit(
            "status", f"Upbit stream dropped ({exc}); reconnecting in {delay:.1f}s", "warning"
        )
        return delay

    def _write_failed(self, exc: Exception) -> None:
        self._emit("status", f"storing live candles failed, retrying: {exc}", "error")

    def _malformed(self, exc: Exception) -> None:
        self.stats.malformed += 1
        self._malformed_this_connection += 1
        if self._malformed_this_connection == 1:
            self._emit("status", f"skipped a malformed frame: {exc}", "warning")

    # ------------------------------------------------------------------ frames

    def on_frame(self, frame: Mapping[str, Any]) -> None:
        """Take one decoded frame (candle, trade or ticker)."""
        self.stats.frames += 1
        kind = frame.get("type")
        if kind == "trade":
            self.stats.trades += 1
            self.trades[str(frame.get("code"))] = dict(frame)
            self._emit("trade", frame)
        elif kind == "ticker":
            self.stats.tickers += 1
            self.tickers[str(frame.get("code"))] = dict(frame)
            self._emit("ticker", frame)
        elif isinstance(kind, str) and kind.startswith("candle."):
            self._on_candle(frame)

    def _on_candle(self, frame: Mapping[str, Any]) -> None:
        received = self._clock()
        try:
            stamp = frame["candle_date_time_utc"]
            ts = self._stamps.get(stamp)
            if ts is None:
                if len(self._stamps) > 10_000:
                    self._stamps.clear()
                ts = self._stamps[stamp] = pd.Timestamp(stamp, tz="UTC").as_unit("ns")
            market = str(frame["code"])
            unit = self.units.get(market)
            if unit is None or frame["type"] != f"candle.{unit}m":
                self._malformed(
                    UpbitError(
                        f"a {frame['type']} frame of {market}, not subscribed: {dict(frame)}"
                    )
                )
                return
            row: dict[str, Any] = {"market": market, "unit": unit, "ts": ts}
            for column, name in CANDLE_FIELDS.items():
                row[column] = float(frame[name])
        except (KeyError, TypeError, ValueError) as exc:
            self._malformed(UpbitError(f"candle frame without {exc}: {dict(frame)}"))
            return
        prices = (row["open"], row["high"], row["low"], row["close"])
        if not (min(prices) > 0 and math.isfinite(sum(prices)) and row["volume"] >= 0):
            # the store refuses such a row, and a refused row would stay queued in the writer
            # and fail every later batch with it: skip the frame here, as a malformed one
            self._malformed(UpbitError(f"candle frame with impossible numbers: {dict(frame)}"))
            return
        self.stats.candle_frames += 1
        if self.store:
            self.writer.put(row, self._origin(frame) if self._origin else received)
        seen = self.last_seen.get(market)
        if seen is None or ts > seen:
            self.last_seen[market] = ts
        forming = self.forming.get(market)
        if forming is not None and ts == forming["ts"]:
            self.forming[market] = row  # the latest frame of a forming candle wins
            self._emit("update", row)
            return
        closed = self.last_closed.get(market)
        ended = ts.value / 1e9 + self._widths[market] + self.grace <= received
        if ended or (forming is not None and ts < forming["ts"]) or (closed and ts <= closed):
            self.stats.late += 1  # stored above; its bucket was already settled
            return
        if forming is not None:
            self.stats.closed_by_next += 1
            self._close(market, forming)
        self.forming[market] = row
        self._emit("update", row)

    def _close(self, market: str, candle: dict[str, Any]) -> None:
        self.last_closed[market] = candle["ts"]
        if self._callbacks["closed"] is not None:
            self._closing += 1
        self._emit("closed", candle)

    def _deciding(self) -> bool:
        """A decision is running or due: a closed candle's callback has not returned, the
        engine is deciding (`busy`), or a forming candle's bucket has ended (its close comes
        with the next frame or the clock)."""
        if self._closing or (self.busy is not None and self.busy()):
            return True
        now = self._clock()
        return any(
            candle["ts"].value / 1e9 + self._widths[market] <= now
            for market, candle in self.forming.items()
        )

    async def _close_by_clock(self) -> None:
        """Close candles of quiet markets once their bucket ended `grace` seconds ago."""
        while True:
            await asyncio.sleep(min(0.25, self.grace / 2) if self.grace > 0 else 0.05)
            if not self.connected:
                continue  # while the socket is down the last state may be stale: REST decides
            now = self._clock()
            for market, candle in list(self.forming.items()):
                if candle["ts"].value / 1e9 + self._widths[market] + self.grace <= now:
                    del self.forming[market]
                    self.stats.closed_by_clock += 1
                    self._close(market, candle)

    # ------------------------------------------------------------------ backfill

    async def _backfill(self) -> None:
        """Fetch over REST what the socket missed: from the newest candle seen (or stored)
        per market to the bucket that was forming when the connection opened."""
        if self.limiter is None:
            self.limiter = RateLimiter()
        while self._backfill_until is not None:
            opened, self._backfill_until = self._backfill_until, None
            now = pd.Timestamp(opened, unit="s", tz="UTC")
            new = asked = 0
            problem: Exception | None = None
            for unit, markets in self.by_unit().items():
                until = floor_bucket(now, unit)  # the bucket forming when the socket opened
                since = {
                    m: max(ts, until - self.backfill_limit)
                    for m, ts in self._resume_from.items()
                    if m in markets and ts < until
                }
                if not since:
                    continue
                self._settle_queued(until)
                self.stats.backfills += 1
                client = make_client(rest=self.rest_url) if self.rest_url else None
                try:
                    report = await fetch_markets(
                        self.con,
                        list(since),
                        unit,
                        since,
                        until,
                        limiter=self.limiter,
                        client=client,
                    )
                finally:
                    if client is not None:
                        await client.close()
                self.stats.backfilled += report.new
                new, asked = new + report.new, asked + len(since)
                for series in report.series:
                    if series.done and series.error is None:
                        self._resume_from[series.market] = max(
                            self._resume_from[series.market], until
                        )
                        if series.candles:
                            self._emit("backfill", series.market, series.new)
                problem = problem or report.stopped or next((s.error for s in report.failed), None)
            if not asked:
                continue
            if problem is not None:
                self._emit("status", f"gap backfill failed: {problem}", "warning")
            else:
                self._emit(
                    "status", f"backfilled {new:,} missed candles of {asked} markets", "info"
                )

    def _settle_queued(self, until: pd.Timestamp) -> None:
        """Write the queued candle states before REST writes the final candles, so a stale
        forming state never lands on top of them; if that write fails, drop the queued states
        of buckets before `until` instead (REST brings those, final)."""
        if not self.store:
            return
        try:
            self.writer.flush()
        except duckdb.Error as exc:
            self._write_failed(exc)
            self.writer.discard_before(until)

    # ------------------------------------------------------------------ callbacks

    def _emit(self, kind: str, *args: Any) -> None:
        if self._callbacks.get(kind) is not None:
            self._events.put_nowait((kind, args))

    async def _deliver_events(self) -> None:
        while True:
            kind, args = await self._events.get()
            callback = self._callbacks[kind]
            assert callback is not None
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - a consumer's bug must not stop the feed
                if kind != "status":
                    self._emit(
                        "status", f"{kind} callback failed: {type(exc).__name__}: {exc}", "error"
                    )
            finally:
                if kind == "closed":
                    self._closing -= 1
                self._events.task_done()

    async def drain(self) -> None:
        """Wait until every callback queued so far has run."""
        await self._events.join()

    def by_unit(self) -> dict[str, list[str]]:
        """The markets of each unit, in watchlist order."""
        groups: dict[str, list[str]] = {}
        for market, unit in self.units.items():
            groups.setdefault(unit, []).append(market)
        return groups


def _minute_unit(unit: str) -> str:
    unit = check_unit(unit)
    if unit == "D":
        raise ValueError("Upbit streams minute candles only; use a unit in minutes")
    return unit
