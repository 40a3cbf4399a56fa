"""Backfill pages follow the candles, not the clock (engine/data/backfill.py): Upbit answers the
`count` candles that exist before `to`, so a thin market or a series that stopped trading long
ago costs about candles / 200 requests; killed and resumed, the store holds exactly the
served series. Against the fake Upbit on 127.0.0.1 (its rate limit off: counts, not pace)."""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd
import pytest

from engine.data.backfill import EPOCH, FetchReport, fetch_markets
from engine.upbit.client import RateLimiter, fetch_page, make_client
from store.candles import CANDLE_COLUMNS, coverage, load_candles
from tests.fake_upbit import FakeUpbit, generate_candles

MINUTES = "/v1/candles/minutes/1"


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def pages(n: int) -> int:
    return -(-n // 200)


def same_series(con: Any, market: str, want: pd.DataFrame) -> None:
    """The stored series is exactly `want`: no candle lost, none doubled, same values."""
    got = load_candles(con, market, "1")[CANDLE_COLUMNS].reset_index(drop=True)
    want = want[CANDLE_COLUMNS].reset_index(drop=True)
    assert len(got) == len(want) and got["ts"].is_unique
    assert (got["ts"].dt.as_unit("ns") == want["ts"].dt.as_unit("ns")).all()
    pd.testing.assert_frame_equal(
        got.drop(columns=["ts", "market", "unit"]),
        want.drop(columns=["ts", "market", "unit"]),
        check_dtype=False,
    )


class CountingLimiter(RateLimiter):
    """A real limiter that also counts the requests in flight at once (the most seen)."""

    def __init__(self) -> None:
        super().__init__(per_second=1000)
        self.in_flight = self.most_in_flight = 0

    async def acquire(self) -> list[float]:
        slot = await super().acquire()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return slot

    def done(self, slot: list[float], headers: Any, **kwargs: Any) -> None:
        self.in_flight -= 1
        super().done(slot, headers, **kwargs)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    async with FakeUpbit(rate_limit=None) as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


async def test_the_fake_serves_count_existing_candles_before_to_across_gaps(fake) -> None:
    # As Upbit does: a page reaches back over buckets without trades; fewer rows than asked
    # means nothing older exists.
    candles = generate_candles("KRW-BTC", "1", "2025-09-01", 100, seed=1).iloc[::10]
    fake.add_candles(candles)
    api = make_client()
    try:
        limiter = RateLimiter(per_second=100)
        page, settled = await fetch_page(api, limiter, "KRW-BTC", "1", utc("2025-09-01 01:35"), 5)
        assert list(page["ts"]) == list(candles["ts"].iloc[5:10])  # 50 minutes back, ascending
        assert settled < pd.Timestamp.now(tz="UTC")
        short, _ = await fetch_page(api, limiter, "KRW-BTC", "1", utc("2025-09-01 00:25"), 5)
        assert list(short["ts"]) == list(candles["ts"].iloc[:3])
    finally:
        await api.close()


async def test_a_thin_market_costs_pages_of_candles_not_of_buckets(con, fake) -> None:
    # A candle every 7th minute over 10 days: 2,058 candles in 14,400 buckets.
    candles = generate_candles("KRW-THIN", "1", "2025-09-01", 14_400, seed=2).iloc[3::7]
    fake.markets["KRW-THIN"] = ("thin", "thin")
    fake.add_candles(candles)
    report = await fetch_markets(
        con, ["KRW-THIN"], "1", utc("2025-09-01"), utc("2025-09-11"), limiter=RateLimiter(1000)
    )
    same_series(con, "KRW-THIN", candles)
    assert report.stopped is None and report.new == report.candles == len(candles)
    # 11 pages of candles (the last one short: nothing older); by buckets it was 72.
    assert fake.requests[MINUTES] == report.requests == pages(len(candles)) == 11
    assert report.chunks_total == report.chunks_done == report.requests and report.markets_done
    assert report.time_done == 1.0
    # The last page was short with no candle before `since`: nothing older exists at all.
    assert coverage(con, "KRW-THIN", "1") == [(EPOCH, utc("2025-09-11"))]
    fake.reset_counters()
    again = await fetch_markets(con, ["KRW-THIN"], "1", utc("2025-08-01"), utc("2025-09-11"))
    assert again.requests == 0 == fake.requests[MINUTES] and again.series[0].done


async def test_a_series_that_ended_long_ago_is_not_paged_through_empty_months(con, fake) -> None:
    # The case: 3 days of 1-minute candles that ended 14 months before now, fetched
    # from just before they start up to now (by buckets: over 3,000 requests).
    now = pd.Timestamp.now(tz="UTC").floor("min")
    last = now - pd.DateOffset(months=14)
    candles = generate_candles("KRW-OLD", "1", last - pd.Timedelta(days=3), 3 * 1440, seed=3)
    fake.markets["KRW-OLD"] = ("old", "old")
    fake.add_candles(candles)
    since = candles["ts"].iloc[0] - pd.Timedelta(hours=1)
    seen: list[FetchReport] = []
    report = await fetch_markets(
        con, ["KRW-OLD"], "1", since, limiter=RateLimiter(1000), on_progress=seen.append
    )
    same_series(con, "KRW-OLD", candles)
    # 22 pages of candles, and at most one more: the empty hour before the first candle is
    # proven by the short last page.
    assert pages(len(candles)) == 22
    assert 22 <= fake.requests[MINUTES] == report.requests <= 23
    series = report.series[0]
    assert series.done and series.chunks_total == series.chunks_done == report.requests
    # Progress: the span known complete only grows and ends at all but the forming minute.
    spans = [r.series[0].span_done for r in seen]
    assert spans == sorted(spans) and series.span - series.span_done <= pd.Timedelta(minutes=2)
    # The first page (the newest 200 candles, 14 months back) proved the empty months.
    assert seen[1].series[0].time_done > 0.99
    (start, end), *rest = coverage(con, "KRW-OLD", "1")
    assert start == EPOCH and end >= now - pd.Timedelta(minutes=1) and rest == []


async def test_a_dense_market_costs_no_more_than_by_buckets_with_requests_in_parallel(
    con, fake
) -> None:
    # One market alone (a tenth of its minutes without trades): an idle worker takes over the
    # older half of it, so several requests are in flight; that costs at most one page more
    # than the candles need, fewer than 200-bucket windows did.
    candles = generate_candles("KRW-BTC", "1", "2025-09-01", 3 * 1440, seed=4, gap_prob=0.1)
    fake.add_candles(candles)
    fake.latency = 0.01  # requests overlap
    limiter = CountingLimiter()
    report = await fetch_markets(
        con, ["KRW-BTC"], "1", utc("2025-09-01"), utc("2025-09-04"), limiter=limiter
    )
    same_series(con, "KRW-BTC", candles)
    by_buckets = pages(3 * 1440)  # 22
    assert report.requests == fake.requests[MINUTES]
    assert pages(len(candles)) <= report.requests <= pages(len(candles)) + 1 < by_buckets
    assert limiter.most_in_flight >= 2
    assert coverage(con, "KRW-BTC", "1") == [(EPOCH, utc("2025-09-04"))]


async def test_killed_mid_fetch_and_resumed_stores_exactly_the_served_series(con, fake) -> None:
    # Two markets, one thin and one dense with a day without trades; the run is cancelled
    # after 8 pages, with two pagers of the dense one in flight (a hole between them).
    dense = generate_candles("KRW-BTC", "1", "2025-09-01", 5 * 1440, seed=5, gap_prob=0.1)
    dense = dense[(dense["ts"] < utc("2025-09-03")) | (dense["ts"] >= utc("2025-09-04"))]
    thin = generate_candles("KRW-ETH", "1", "2025-09-01", 5 * 1440, seed=6).iloc[::5]
    fake.add_candles([dense, thin])
    fake.latency = 0.01
    markets, since, until = ["KRW-BTC", "KRW-ETH"], utc("2025-09-01"), utc("2025-09-06")
    killed = 8

    def kill(report: FetchReport) -> None:
        if report.chunks_done >= killed:
            task.cancel()

    task = asyncio.create_task(
        fetch_markets(con, markets, "1", since, until, limiter=RateLimiter(1000), on_progress=kill)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    first = fake.requests[MINUTES]
    held = {m: len(load_candles(con, m, "1")) for m in markets}
    assert killed <= first <= killed + 4 and 0 < held["KRW-BTC"] < len(dense)  # 4 in flight
    assert len(coverage(con, "KRW-BTC", "1")) >= 2  # holes left between the pagers

    fake.reset_counters()
    report = await fetch_markets(con, markets, "1", since, until, limiter=RateLimiter(1000))
    assert report.stopped is None and report.failed == []
    same_series(con, "KRW-BTC", dense)
    same_series(con, "KRW-ETH", thin)
    assert report.new == len(dense) + len(thin) - sum(held.values())
    # Only what was missing is asked: the whole fetch costs at most a few pages more than
    # one uninterrupted run (one per hole left).
    assert first + report.requests <= pages(len(dense)) + pages(len(thin)) + 6
    for market in markets:
        ((start, end),) = coverage(con, market, "1")
        assert start <= since and end == until
