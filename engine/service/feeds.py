"""Workstation operations on the live candle feeds a server records: start, status, stop.

A feed is an `engine.data.feed.LiveFeed` (one Upbit WebSocket for its markets, candles
written in batches, drops reconnected and backfilled over REST) running as a task on the
server's event loop and writing through the server's store connection, as the live session
does (engine/service/live.py): the operations are sync methods the app calls on its worker
threads, so `feed_start` and `feed_stop` hand their coroutine to that loop and wait for it.
This is what `upquant data stream` does while a server owns the store: it starts a feed
here, follows its status lines (`feed_status` with `after`, the last message it printed)
and stops it when done. A server may record several feeds at once; each has an id, numbered
from 1 for the server's lifetime.

The feed uses the server's environment: its Upbit URLs are the server's
(UPQUANT_UPBIT_WS_URL, UPQUANT_UPBIT_REST_URL), named in its status (`upbit`). Its status
texts go out on the Workstation's events hub as `status` events and its closed candles as
`candle` events (`closed: true`), each with the feed's id (`feed`) so a face can tell them
from the live session's; the status text there starts with `feed N: `. A feed that ends by
itself (a subscription Upbit refuses for good, a store failure) stays listed, `running:
false` with why (`ended`, `error`), until it is stopped. Stopping cancels the feed and writes
what it buffered; the server's shutdown stops every feed the same way (`stop_feeds_async`),
and closing the Workstation writes what any feed still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from engine.service.core import NotFound, Request, Response, ServiceError, operation
from engine.service.events import candle_fields
from engine.service.live import LiveOps, LoopWords

if TYPE_CHECKING:
    from engine.data.feed import LiveFeed

log = logging.getLogger(__name__)


START_TIMEOUT_S = 120.0  # resolving --all-krw asks Upbit for its market list
STOP_TIMEOUT_S = 60.0
MESSAGES_KEPT = 500  # status lines a feed keeps for followers that poll
PROBLEMS_KEPT = 20
FEED_WORDS = LoopWords(
    kept="a feed",
    operation="a feed operation",
    awaitable="Workstation.start_feed / stop_feed_async",
    answering="the feed",
    hint="a feed runs inside a server: start one with `upquant serve`, then `upquant data stream`"
    " (or POST /api/v1/feeds); without a server `upquant data stream` runs in process",
)


def _markets(values: list[str]) -> list[str]:
    from engine.upbit.markets import check_market

    return list(dict.fromkeys(check_market(value) for value in values))


class FeedStartRequest(Request):
    markets: list[str] = Field(
        default_factory=list, description="Markets whose candles to record, e.g. KRW-BTC."
    )
    unit: str = Field("1", description="Candle unit in minutes: 1, 3, 5, 10, 15, 30, 60, 240.")
    watch: list[str] = Field(
        default_factory=list, description="Also stream trades and tickers of these markets."
    )
    all_krw: bool = Field(False, description="Every KRW market Upbit lists (market/all).")

    @field_validator("markets", "watch")
    @classmethod
    def _check_markets(cls, value: list[str]) -> list[str]:
        return _markets(value)

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        from engine.upbit.markets import check_unit

        unit = check_unit(value)
        if unit == "D":
            raise ValueError("Upbit streams minute candles only; use a unit in minutes")
        return unit


class FeedStatusRequest(Request):
    feed: int | None = Field(None, ge=1, description="One feed's id; none: every feed.")
    after: int = Field(
        0, ge=0, description="Only status messages after this one (its seq): what is new."
    )


class FeedStopRequest(Request):
    feed: int = Field(ge=1, description="The feed's id.")


class FeedCounts(Response):
    """What a feed counted (engine.data.feed.FeedStats), as `upquant data stream` prints."""

    frames: int = Field(description="WebSocket frames received.")
    candles_closed: int = Field(description="Candles closed (by the next bucket or the clock).")
    candles_written: int = Field(description="Candle states written to the store.")
    connects: int
    drops: int
    backfilled: int = Field(description="Missed candles stored by REST backfill.")
    malformed: int = Field(description="Frames skipped as malformed.")


class FeedMessage(Response):
    seq: int = Field(description="Numbered from 1 per feed; pass the last seen as `after`.")
    at: datetime
    text: str
    level: str = Field(description="info, warning or error.")


class FeedStatus(Response):
    """One feed the server records (`running: false` once it ended, with why)."""

    id: int
    markets: list[str]
    unit: str
    watch: list[str]
    upbit: str = Field(description="The WebSocket URL it streams from (the server's).")
    started: datetime
    running: bool
    connected: bool
    ended: str | None = Field(default=None, description="Why it ended (None while it runs).")
    error: str | None = Field(default=None, description="The failure that ended it, if one did.")
    hint: str | None = None
    stats: FeedCounts
    problems: list[str] = Field(description="Its last warnings and errors, oldest first.")
    messages: list[FeedMessage] = Field(
        description="Its status messages after `after` (the newest ones it keeps)."
    )


class Feeds(Response):
    feeds: list[FeedStatus]


@dataclass
class _Feed:
    """A feed the Workstation runs, and what it said."""

    id: int
    feed: LiveFeed
    upbit: str
    started: datetime
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[None] | None = None
    running: bool = True
    ended: str | None = None
    error: str | None = None
    hint: str | None = None
    seq: int = 0
    messages: deque[FeedMessage] = field(default_factory=lambda: deque(maxlen=MESSAGES_KEPT))
    problems: deque[str] = field(default_factory=lambda: deque(maxlen=PROBLEMS_KEPT))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str, level: str) -> None:
        with self.lock:
            self.seq += 1
            self.messages.append(
                FeedMessage(seq=self.seq, at=datetime.now(UTC), text=text, level=level)
            )
            if level != "info":
                self.problems.append(text)

    def status(self, after: int = 0) -> FeedStatus:
        stats = self.feed.stats
        with self.lock:
            messages = [m for m in self.messages if m.seq > after]
            problems = list(self.problems)
        return FeedStatus(
            id=self.id,
            markets=list(self.feed.markets),
            unit=self.feed.unit,
            watch=list(self.feed.watch),
            upbit=self.upbit,
            started=self.started,
            running=self.running,
            connected=self.feed.connected,
            ended=self.ended,
            error=self.error,
            hint=self.hint,
            stats=FeedCounts(
                frames=stats.frames,
                candles_closed=stats.closed_by_next + stats.closed_by_clock,
                candles_written=stats.rows_written,
                connects=stats.connects,
                drops=stats.drops,
                backfilled=stats.backfilled,
                malformed=stats.malformed,
            ),
            problems=problems,
            messages=messages,
        )


class FeedOps(LiveOps):
    _feeds: dict[int, _Feed] | None = None
    _feed_ids = 0
    _feeds_lock = threading.Lock()

    def _feed_table(self) -> dict[int, _Feed]:
        with self._feeds_lock:
            if self._feeds is None:
                self._feeds = {}
            return self._feeds

    def _feed(self, feed_id: int) -> _Feed:
        running = self._feed_table().get(feed_id)
        if running is None:
            raise NotFound(
                f"no feed {feed_id} on this server (stopped, or never started)",
                "list the feeds: GET /api/v1/feeds (the feed_status operation)",
            )
        return running

    # --- running a feed (on the loop) -----------------------------------------------------------
    async def start_feed(self, request: FeedStartRequest) -> FeedStatus:
        """Start a feed in the running loop (on this Workstation's store); its status."""
        from engine.data.backfill import krw_markets
        from engine.data.feed import LiveFeed
        from engine.upbit.client import ws_url
        from engine.upbit.errors import UpbitError, redact

        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self.attach_loop(loop)
        markets = list(request.markets)
        if request.all_krw:
            try:
                listed = await krw_markets()
            except (UpbitError, OSError) as exc:
                raise ServiceError(
                    f"could not list Upbit's KRW markets: {exc}",
                    "check the server's network and its UPQUANT_UPBIT_REST_URL, or name the"
                    " markets",
                ) from None
            markets = list(dict.fromkeys([*markets, *listed]))
        if not markets and not request.watch:
            raise ServiceError(
                "no market to stream", "name markets (KRW-BTC KRW-ETH) or pass all_krw"
            )
        with self._feeds_lock:
            self._feed_ids += 1
            feed_id = self._feed_ids
        hub = self.events
        holder: list[_Feed] = []

        def status(text: str, level: str) -> None:
            running = holder[0]
            running.say(text, level)
            hub.publish(
                {
                    "type": "status",
                    "text": f"feed {feed_id}: {text}",
                    "level": level,
                    "connected": None,  # the live session's connection is another matter
                    "feed": feed_id,
                }
            )

        def closed(candle: dict[str, Any]) -> None:
            if hub.subscribers:  # nobody listening: no frame to build
                hub.publish(
                    {
                        "type": "candle",
                        "market": candle["market"],
                        "unit": candle["unit"],
                        "closed": True,
                        "candle": candle_fields(candle),
                        "feed": feed_id,
                    }
                )

        feed = LiveFeed(
            self.con(),
            markets,
            request.unit,
            watch=request.watch,
            on_status=status,
            on_closed=closed,
        )
        running = _Feed(feed_id, feed, redact(ws_url()), datetime.now(UTC), loop)
        holder.append(running)
        running.task = loop.create_task(self._drive_feed(running), name=f"upquant-feed-{feed_id}")
        self._feed_table()[feed_id] = running
        log.info("feed %d started: %d markets %sm", feed_id, len(markets), request.unit)
        return running.status()

    async def _drive_feed(self, running: _Feed) -> None:
        """Run the feed; when it ends by itself (a refused subscription, a failure) say why."""
        try:
            await running.feed.run()
            running.ended = "the Upbit stream ended"
        except asyncio.CancelledError:
            running.ended = "stopped"
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends the feed: said, kept listed
            running.ended = f"failed: {type(exc).__name__}: {exc}"
            running.error, running.hint = str(exc), getattr(exc, "hint", None)
            log.warning("feed %d failed: %s", running.id, exc)
            running.say(f"the feed failed: {exc}", "error")
            self.events.publish(
                {
                    "type": "status",
                    "text": f"feed {running.id} failed: {exc}",
                    "level": "error",
                    "connected": None,
                    "feed": running.id,
                }
            )
        finally:
            running.running = False

    async def stop_feed_async(self, feed_id: int) -> FeedStatus:
        """Stop feed `feed_id` (cancelled, what it buffered written) and forget it; its final
        status."""
        running = self._feed(feed_id)
        task = running.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running.running = False
        running.ended = running.ended or "stopped"
        self._feed_table().pop(feed_id, None)
        return running.status()

    async def stop_feeds_async(self) -> None:
        """The server stops: every feed stopped, what it buffered written."""
        for feed_id in list(self._feed_table()):
            try:
                await self.stop_feed_async(feed_id)
            except Exception:
                log.exception("stopping feed %d failed", feed_id)

    def close(self) -> None:
        """What a feed still holds is written before the store closes (its loop is gone by
        now when the server stopped without `stop_feeds_async`)."""
        for running in list(self._feed_table().values()):
            running.running = False
            try:
                running.feed.writer.flush()
            except Exception:
                log.exception("writing what feed %d buffered failed", running.id)
        self._feed_table().clear()
        super().close()

    # --- the operations ------------------------------------------------------------------------
    @operation("write")
    def feed_start(self, request: FeedStartRequest) -> FeedStatus:
        """Start recording live candles of markets into the store on the server (one Upbit
        WebSocket, the server's UPQUANT_UPBIT_WS_URL); the feed's id and status."""
        return self._on_loop(lambda: self.start_feed(request), START_TIMEOUT_S, FEED_WORDS)

    @operation("read")
    def feed_status(self, request: FeedStatusRequest) -> Feeds:
        """The server's feeds (or one): markets, unit, counts, last problems, and the status
        messages after `after`."""
        if request.feed is not None:
            return Feeds(feeds=[self._feed(request.feed).status(request.after)])
        table = self._feed_table()
        return Feeds(feeds=[table[i].status(request.after) for i in sorted(table)])

    @operation("write")
    def feed_stop(self, request: FeedStopRequest) -> FeedStatus:
        """Stop a feed: what it buffered is written; its final counts (it is gone after)."""
        self._feed(request.feed)  # NotFound before the loop is asked
        return self._on_loop(lambda: self.stop_feed_async(request.feed), STOP_TIMEOUT_S, FEED_WORDS)
