"""Resumable REST backfill of many markets into the store: plan each series' missing ranges,
fetch them in pages under one rate limiter, and report progress per series."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from engine.upbit.markets import check_market, check_unit, unit_minutes
from store.candles import (
    coverage,
    missing_ranges,
    store_fetched,
)

if TYPE_CHECKING:  # the Upbit SDK loads only when a fetch runs
    from upbit import AsyncUpbit

    from engine.upbit.client import RateLimiter


@dataclass
class SeriesFetch:
    """Backfill progress of one market/unit."""

    market: str
    unit: str
    start: pd.Timestamp
    end: pd.Timestamp
    chunks_total: int = 0
    chunks_done: int = 0
    candles: int = 0
    new: int = 0
    error: Exception | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.chunks_done >= self.chunks_total


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
            "stopped": None if self.stopped is None else str(self.stopped),
        }


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

    Each page is stored together with the time range it covers for good (the
    candle_coverage table), in one transaction; a later run with the same arguments asks
    only for the ranges not covered yet (all of them with `refetch`), so a run killed at any
    point continues where it stopped, without duplicates and without holes. All markets share
    one rate limiter. `since` may differ per market (a mapping). A market Upbit does not
    know fails alone (its SeriesFetch.error); a 418 block or an unreachable Upbit stops the
    run (`stopped`). Naive datetimes are read as UTC.
    """
    from engine.upbit.client import (
        DEFAULT_CONCURRENCY,
        PAGE_SIZE,
        Chunk,
        RateLimiter,
        ceil_bucket,
        fetch_chunks,
        plan_chunks,
    )
    from engine.upbit.errors import UpbitBlocked, UpbitUnreachable

    unit = check_unit(unit)
    now = pd.Timestamp.now(tz="UTC")
    end = ceil_bucket(until if until is not None else now, unit)
    pacer = limiter or RateLimiter()
    report = FetchReport(unit, [])
    pages = PAGE_SIZE * unit_minutes(unit) * 60 * 10**9  # ns one request spans
    plans: list[tuple[SeriesFetch, list[tuple[pd.Timestamp, pd.Timestamp]]]] = []
    for market in dict.fromkeys(markets):
        check_market(market)
        first = since[market] if isinstance(since, Mapping) else since
        start = ceil_bucket(first, unit)
        series = SeriesFetch(market, unit, start, end)
        todo = (
            [(start, end)] if refetch else missing_ranges(coverage(con, market, unit), start, end)
        )
        series.chunks_total = sum(-(-(hi - lo).value // pages) for lo, hi in todo)
        report.series.append(series)
        plans.append((series, todo[::-1]))  # newest first
    by_market = {s.market: s for s, _ in plans}

    def pending() -> Iterator[Chunk]:  # lazily: a long backfill is many thousand pages
        for series, todo in plans:
            for lo, hi in todo:
                for chunk in plan_chunks(series.market, unit, lo, hi):
                    if series.error is not None:
                        break
                    yield chunk

    def progress() -> None:
        report.requests = pacer.requests - base_requests
        report.rate_limited = pacer.rate_limited - base_limited
        if on_progress is not None:
            result = on_progress(report)
            if inspect.isawaitable(result):
                raise TypeError("on_progress must be synchronous")

    def store(chunk: Chunk, page: pd.DataFrame, covered: Any) -> None:
        series = by_market[chunk.market]
        series.new += store_fetched(con, page, chunk.market, unit, covered)
        series.candles += len(page)
        series.chunks_done += 1
        progress()

    def failed(chunk: Chunk, exc: Exception) -> None:
        by_market[chunk.market].error = exc
        progress()

    base_requests, base_limited = pacer.requests, pacer.rate_limited
    progress()
    try:
        await fetch_chunks(
            pending(),
            store,
            client=client,
            limiter=pacer,
            concurrency=concurrency or DEFAULT_CONCURRENCY,
            on_failed=failed,
        )
    except (UpbitBlocked, UpbitUnreachable) as exc:
        report.stopped = exc
    finally:
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
