"""Resumable REST backfill of many markets into the store: page each series' missing ranges
from the newest candle back, following the candles Upbit holds rather than the clock, under
one rate limiter, and report progress per series."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import duckdb
import numpy as np
import pandas as pd

from engine.upbit.markets import check_market, check_unit
from store.candles import (
    coverage,
    missing_ranges,
    store_fetched,
)

if TYPE_CHECKING:  # the Upbit SDK loads only when a fetch runs
    from upbit import AsyncUpbit

    from engine.upbit.client import RateLimiter

Range = tuple[pd.Timestamp, pd.Timestamp]
EPOCH = pd.Timestamp(0, tz="UTC").as_unit("ns")  # a short page above `since` covers back to it
MIN_SPLIT_PAGES = 16  # an idle worker takes over half of a series only this many pages from its end


@dataclass
class SeriesFetch:
    """Backfill progress of one market/unit.

    The number of requests a series needs is known only once it is fetched (a page holds the
    200 newest candles before its end, however long they span): `chunks_total` is the
    requests done plus an estimate of those left (from the density of the last page; one
    candle per bucket before the first), exact once the series is done. `span` is the time
    to fetch (not covered before this run), `span_done` how much of it is now known complete:
    the time covered, which is what progress means when the requests left are an estimate.
    """

    market: str
    unit: str
    start: pd.Timestamp
    end: pd.Timestamp
    chunks_total: int = 0
    chunks_done: int = 0
    candles: int = 0
    new: int = 0
    error: Exception | None = None
    span: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(0))
    span_done: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(0))

    @property
    def done(self) -> bool:
        return self.error is not None or self.chunks_done >= self.chunks_total

    @property
    def time_done(self) -> float:
        """The fraction of `span` known complete (1.0 when there was nothing to fetch)."""
        return 1.0 if self.span <= pd.Timedelta(0) else min(1.0, self.span_done / self.span)


@dataclass
class FetchReport:
    """What a backfill did; `stopped` is the error that ended it early (418, unreachable)."""

    unit: str
    series: list[SeriesFetch]
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    requests: int = 0
    rate_limited: int = 0
    stopped: Exception | None = None

    @property
    def chunks_total(self) -> int:
        return sum(s.chunks_total for s in self.series)

    @property
    def chunks_done(self) -> int:
        return sum(s.chunks_done for s in self.series)

    @property
    def candles(self) -> int:
        return sum(s.candles for s in self.series)

    @property
    def new(self) -> int:
        return sum(s.new for s in self.series)

    @property
    def markets_done(self) -> int:
        return sum(s.done for s in self.series)

    @property
    def failed(self) -> list[SeriesFetch]:
        return [s for s in self.series if s.error is not None]

    @property
    def request_rate(self) -> float:
        elapsed = self.seconds or (time.monotonic() - self.started)
        return self.requests / elapsed if elapsed > 0 else 0.0

    @property
    def time_done(self) -> float:
        """The fraction of the time to fetch, over every series, known complete."""
        span = sum((s.span for s in self.series), pd.Timedelta(0))
        done = sum((min(s.span_done, s.span) for s in self.series), pd.Timedelta(0))
        return 1.0 if span <= pd.Timedelta(0) else done / span

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "markets": [
                {
                    "market": s.market,
                    "since": s.start.isoformat(),
                    "until": s.end.isoformat(),
                    "requests_planned": s.chunks_total,
                    "requests_done": s.chunks_done,
                    "time_done": round(s.time_done, 4),
                    "candles": s.candles,
                    "new": s.new,
                    "error": None if s.error is None else str(s.error),
                }
                for s in self.series
            ],
            "candles": self.candles,
            "new": self.new,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.request_rate, 2),
            "time_done": round(self.time_done, 4),
            "stopped": None if self.stopped is None else str(self.stopped),
        }


@dataclass(eq=False)
class _Cursor:
    """One pager of a series: asks the candles before `to`, steps `to` back to the oldest
    candle received, and stops at `lo`. `density` (candles per bucket of its last full page)
    estimates the pages left."""

    series: SeriesFetch
    lo: pd.Timestamp
    to: pd.Timestamp
    density: float = 1.0
    measured: bool = False
    busy: bool = False


def _merge(ranges: list[Range], new: Range) -> list[Range]:
    """Ascending disjoint `ranges` with `new` added (merged with what it overlaps or touches)."""
    lo, hi = new
    out: list[Range] = []
    for a, b in ranges:
        if b < lo or a > hi:
            out.append((a, b))
        else:
            lo, hi = min(lo, a), max(hi, b)
    out.append((lo, hi))
    return sorted(out)


def _span(ranges: list[Range]) -> pd.Timedelta:
    return sum((hi - lo for lo, hi in ranges), pd.Timedelta(0))


async def fetch_markets(
    con: duckdb.DuckDBPyConnection,
    markets: Sequence[str],
    unit: str,
    since: datetime | Mapping[str, datetime],
    until: datetime | None = None,
    *,
    limiter: RateLimiter | None = None,
    client: AsyncUpbit | None = None,
    concurrency: int | None = None,
    refetch: bool = False,
    on_progress: Callable[[FetchReport], object] | None = None,
) -> FetchReport:
    """Backfill `markets`/`unit` from Upbit REST into the store; resumable and idempotent.

    Upbit answers `count` candles that exist before `to`, reaching back over buckets without
    trades, so each missing range is paged from its end with `to` stepped to the oldest
    candle received, down to its start: a thin market or a series that stopped trading long
    ago costs about candles / 200 requests, not buckets / 200. A full page proves the span
    from its oldest candle to its `to` complete (gaps included); a short page proves that
    nothing older exists (recorded back to EPOCH when none of its candles is older than
    `since`, so an earlier `since` later asks nothing). Each page's new candles are stored
    together with that span (the candle_coverage table), in one transaction; a later run asks
    only for the ranges not covered yet (all of them with `refetch`), so a run killed at any
    point continues where it stopped, without duplicates and without holes. This relies on
    Upbit's reading of `count` (existing candles, not buckets): a server that counted buckets
    would end a series at its first gap wider than a page.

    `concurrency` requests are in flight, across series first; a worker with no series left
    to start takes over the older half of a long one (MIN_SPLIT_PAGES), so one market alone
    still fetches at the limiter's pace. All markets share one rate limiter. `since` may
    differ per market (a mapping). A market Upbit does not know fails alone (its
    SeriesFetch.error); a 418 block or an unreachable Upbit stops the run (`stopped`).
    Naive datetimes are read as UTC.
    """
    from engine.upbit.client import (
        DEFAULT_CONCURRENCY,
        PAGE_SIZE,
        RateLimiter,
        ceil_bucket,
        fetch_page,
        make_client,
        unit_width,
    )
    from engine.upbit.errors import UpbitBlocked, UpbitError, UpbitUnreachable

    unit = check_unit(unit)
    now = pd.Timestamp.now(tz="UTC")
    end = ceil_bucket(until if until is not None else now, unit)
    width = unit_width(unit)
    pacer = limiter or RateLimiter()
    report = FetchReport(unit, [])
    proven: dict[str, list[Range]] = {}  # per market: what is known complete, in the store
    cursors: list[_Cursor] = []  # series in order, each one's ranges newest first
    for market in dict.fromkeys(markets):
        check_market(market)
        first = since[market] if isinstance(since, Mapping) else since
        start = ceil_bucket(first, unit)
        series = SeriesFetch(market, unit, start, end)
        proven[market] = [] if refetch else coverage(con, market, unit)
        todo = missing_ranges(proven[market], start, end)
        series.span = _span(todo)
        cursors += [_Cursor(series, lo, hi) for lo, hi in todo[::-1]]
        report.series.append(series)

    def buckets(lo: pd.Timestamp, hi: pd.Timestamp) -> int:
        return max(0, int((hi - lo) // width))

    def left(c: _Cursor, to: pd.Timestamp | None = None) -> list[Range]:
        """The parts of [c.lo, to or c.to) not known complete, ascending."""
        return missing_ranges(proven[c.series.market], c.lo, c.to if to is None else to)

    def pages_left(c: _Cursor) -> float:
        """Pages `c` still needs after the one in flight (if busy), at its density."""
        top = c.to - math.ceil(PAGE_SIZE / c.density) * width if c.busy else c.to
        return sum(buckets(lo, hi) for lo, hi in left(c, top)) * c.density / PAGE_SIZE

    def estimate() -> None:
        """chunks_total of every series: done + in flight + the pages left, estimated."""
        ahead: dict[int, int] = {id(s): 0 for s in report.series}
        for c in cursors:
            if c.series.error is None:
                ahead[id(c.series)] += c.busy + math.ceil(pages_left(c))
        for s in report.series:
            extra = ahead[id(s)] or any(c.series is s and c.series.error is None for c in cursors)
            s.chunks_total = s.chunks_done + int(extra)

    def progress() -> None:
        estimate()
        report.requests = pacer.requests - base_requests
        report.rate_limited = pacer.rate_limited - base_limited
        if on_progress is not None:
            result = on_progress(report)
            if inspect.isawaitable(result):
                raise TypeError("on_progress must be synchronous")

    def split() -> _Cursor | None:
        """The older half of the busy cursor with the most pages left (MIN_SPLIT_PAGES)."""
        busy = [c for c in cursors if c.busy and c.measured and c.series.error is None]
        if not busy:
            return None
        c = max(busy, key=pages_left)
        pages = pages_left(c)
        if pages < MIN_SPLIT_PAGES:
            return None
        per_page = math.ceil(PAGE_SIZE / c.density) * width
        mid = c.to - (1 + math.floor(pages / 2)) * per_page
        if not c.lo < mid < c.to:
            return None
        older = _Cursor(c.series, c.lo, mid, c.density, c.measured)
        c.lo = mid
        cursors.insert(cursors.index(c) + 1, older)
        return older

    changed = asyncio.Event()

    async def take() -> _Cursor | None:
        """The next cursor to ask a page for (marked busy, `to` on its newest gap), or None
        when every series is done."""
        nonlocal changed
        while True:
            for c in list(cursors):
                if c.busy:
                    continue
                gaps = left(c) if c.series.error is None else []
                if not gaps:
                    cursors.remove(c)
                    continue
                c.to, c.busy = gaps[-1][1], True
                return c
            if not cursors:
                return None
            older = split()
            if older is not None:
                gaps = left(older)
                older.to, older.busy = gaps[-1][1], True
                return older
            await changed.wait()

    def wake() -> None:
        nonlocal changed
        changed.set()
        changed = asyncio.Event()

    def keep(c: _Cursor, page: pd.DataFrame, settled: pd.Timestamp, count: int) -> None:
        """Store a page's candles not held yet with the span it proves; step `c` back."""
        series, market = c.series, c.series.market
        full = len(page) == count
        oldest = page["ts"].iloc[0] if len(page) else None
        if full:
            lo = max(oldest, series.start)
        elif oldest is None or oldest >= series.start:
            lo = EPOCH  # every candle before `to` is on this page, and stored: none older exists
        else:
            lo = series.start  # older candles exist (on this page) but are not stored
        hi = min(c.to, settled)
        gaps = missing_ranges(proven[market], series.start, c.to)
        stamps = page["ts"]
        fresh = np.zeros(len(page), dtype=bool)
        for a, b in gaps:
            fresh |= ((stamps >= a) & (stamps < b)).to_numpy()
        covered = (lo, hi) if hi > lo else None
        series.new += store_fetched(con, page[fresh], market, unit, covered)
        series.candles += int(fresh.sum())
        series.chunks_done += 1
        if covered is not None:
            before = _span(missing_ranges(proven[market], series.start, series.end))
            proven[market] = _merge(proven[market], covered)
            after = _span(missing_ranges(proven[market], series.start, series.end))
            series.span_done += before - after
        if full and oldest is not None and oldest > c.lo:
            c.density = max(count / max(buckets(oldest, c.to), 1), 1e-6)
            c.measured = True
            c.to = oldest
        else:
            c.to = c.lo  # reached its start, or nothing older exists
        c.busy = False

    api = make_client() if client is None else client.with_options(max_retries=0)

    async def worker() -> None:
        while (c := await take()) is not None:
            gaps = left(c)
            count = min(PAGE_SIZE, buckets(gaps[-1][0], c.to))
            try:
                page, settled = await fetch_page(api, pacer, c.series.market, unit, c.to, count)
            except (UpbitBlocked, UpbitUnreachable):
                raise
            except UpbitError as exc:
                c.busy = False
                c.series.error = exc
            else:
                keep(c, page, settled, count)
            wake()
            progress()

    base_requests, base_limited = pacer.requests, pacer.rate_limited
    progress()
    tasks = [
        asyncio.create_task(worker()) for _ in range(max(1, concurrency or DEFAULT_CONCURRENCY))
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise cast(BaseException, task.exception())
    except (UpbitBlocked, UpbitUnreachable) as exc:
        report.stopped = exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if client is None:
            await api.close()
        report.seconds = time.monotonic() - report.started
        progress()
    return report


async def fetch_into_store(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    since: datetime,
    until: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Backfill one market/unit (see fetch_markets); returns new rows; raises its UpbitError.

    Each page is stored as it arrives, so an interrupted fetch keeps what it got.
    """
    seen = 0

    def advance(report: FetchReport) -> None:
        nonlocal seen
        if on_progress is not None and report.candles > seen:
            on_progress(report.candles - seen)
        seen = report.candles

    report = await fetch_markets(con, [market], unit, since, until, on_progress=advance)
    if report.stopped is not None:
        raise report.stopped
    for series in report.failed:
        raise series.error  # type: ignore[misc]
    return report.new


async def krw_markets() -> list[str]:
    """Every KRW market Upbit lists (`market/all`), sorted."""
    from engine.upbit.client import list_markets

    return sorted(m["market"] for m in await list_markets() if m["market"].startswith("KRW-"))
