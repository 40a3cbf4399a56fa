"""Upbit quotation client over REST: the configured URLs, the SDK client, rate limiting and
candle backfill in pages. The WebSocket stream is engine/upbit/websocket.py, the errors
engine/upbit/errors.py.

Built on the official SDK (`upbit-sdk`, import `upbit`). Base URLs come from
UPQUANT_UPBIT_REST_URL and UPQUANT_UPBIT_WS_URL, so tests point them at tests/fake_upbit.py.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import httpx
import pandas as pd
import upbit
from upbit import AsyncUpbit

from engine.upbit.errors import UpbitBlocked, UpbitError, UpbitUnreachable
from engine.upbit.markets import CANDLE_FIELDS, check_unit
from store.candles import CANDLE_COLUMNS, unit_minutes

DEFAULT_REST_URL = "https://api.upbit.com"
DEFAULT_WS_URL = "wss://api.upbit.com/websocket/v1"
PAGE_SIZE = 200  # Upbit's maximum `count`
DEFAULT_CONCURRENCY = 4  # requests in flight: keeps 10 req/s even at ~300 ms round trips
SETTLE_S = 5.0  # a bucket counts as fetched for good once it closed this long before asking

_WS_PATH = "/websocket/v1"
_REMAINING_SEC = re.compile(r"\bsec=(\d+)")
_MAX_RATE_LIMITED = 6  # 429s in a row before giving up (backoff 1+2+4+8+8+8 s)
_MAX_TRANSIENT = 3  # retries for network errors, 5xx and malformed bodies
_EPOCH = pd.Timestamp(0, tz="UTC").as_unit("ns")

PageCallback = Callable[[pd.DataFrame], Awaitable[object] | object]


def rest_url() -> str:
    return (os.environ.get("UPQUANT_UPBIT_REST_URL") or DEFAULT_REST_URL).rstrip("/")


def ws_url() -> str:
    return (os.environ.get("UPQUANT_UPBIT_WS_URL") or DEFAULT_WS_URL).rstrip("/")


def make_client(
    *, rest: str | None = None, ws: str | None = None, max_retries: int = 0, timeout: float = 15.0
) -> AsyncUpbit:
    """An SDK client on our configured URLs; retries are ours (fetch_candles), not the SDK's."""
    ws_base = (ws or ws_url()).rstrip("/")
    # The SDK appends /websocket/v1 itself.
    ws_base = ws_base.removesuffix(_WS_PATH)
    try:
        return AsyncUpbit(
            base_url=rest or rest_url(),
            websocket_base_url=ws_base,
            max_retries=max_retries,
            timeout=httpx.Timeout(timeout, connect=5.0),
        )
    except (httpx.InvalidURL, ValueError) as exc:
        raise UpbitError(
            f"the configured Upbit URLs are not valid (REST {rest or rest_url()}, WebSocket"
            f" {ws_base}): {exc}; fix UPQUANT_UPBIT_REST_URL / UPQUANT_UPBIT_WS_URL"
        ) from exc


# --------------------------------------------------------------------------- REST


class RateLimiter:
    """Paces requests of one Upbit rate-limit group; one instance is shared by every
    concurrent fetch in a process so that together they stay inside the group's budget.

    Upbit counts a request when it arrives, somewhere between our send and its answer, and
    allows `per_second` within any second. So a request occupies a slot from its start until
    `window` (1 s + `margin`) after its answer: however late a request reached the server
    (a slow network, a busy event loop), the one that reuses its slot arrives more than a
    second later. Until the first `Remaining-Req` reveals the budget (`sec` left after it)
    only one request is in flight. Answers whose `sec` shows that the server counted more
    requests than ours (another program on this IP) add phantom slots; a 429 pauses every
    caller with exponential backoff; a 418 blocks the limiter, so every caller stops with
    the same UpbitBlocked.
    """

    def __init__(
        self,
        per_second: int | None = None,
        *,
        margin: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.margin = margin
        self.requests = 0  # started
        self.rate_limited = 0  # 429s seen
        self.blocked: UpbitBlocked | None = None
        self._clock = clock
        self._slots: list[list[float]] = []  # [answered at] per slot; inf while in flight
        self._resume_at = 0.0
        self._throttled_in_row = 0
        self._lock: asyncio.Lock | None = None

    @property
    def window(self) -> float:
        return 1.0 + self.margin

    async def acquire(self) -> list[float]:
        """Wait for a slot; returns the slot to hand back to `done`."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                if self.blocked is not None:
                    raise UpbitBlocked(
                        str(self.blocked),
                        market=self.blocked.market,
                        seconds=self.blocked.seconds,
                        until=self.blocked.until,
                    )
                now = self._clock()
                if now < self._resume_at:
                    await asyncio.sleep(self._resume_at - now)
                    continue
                self._slots = [slot for slot in self._slots if slot[0] > now - self.window]
                in_flight = sum(1 for slot in self._slots if slot[0] == math.inf)
                budget = self.per_second or 1
                if len(self._slots) < budget and not (self.per_second is None and in_flight):
                    slot = [math.inf]
                    self._slots.append(slot)
                    self.requests += 1
                    return slot
                free_at = min(slot[0] for slot in self._slots) + self.window
                await asyncio.sleep(max(0.0, free_at - now) if free_at < math.inf else 0.005)

    def done(
        self,
        slot: list[float],
        headers: Mapping[str, str] | None,
        *,
        status: int = 200,
        reached: bool = True,
    ) -> None:
        """Account for the answer to the request holding `slot` (headers None: no answer;
        `reached` False: it never got to the server, e.g. the connection was refused)."""
        now = self._clock()
        slot[0] = now
        if not reached:
            self._slots = [s for s in self._slots if s is not slot]
            return
        if status == 429:
            self.rate_limited += 1
            self._throttled_in_row += 1
            pause = min(2.0 ** (self._throttled_in_row - 1), 8.0)
            self._resume_at = max(self._resume_at, now + pause)
            return
        self._throttled_in_row = 0
        match = _REMAINING_SEC.search(headers.get("Remaining-Req", "")) if headers else None
        if match is None:
            return
        left = int(match.group(1))
        ours = len(self._slots)  # at least as many as the server can count of ours
        if self.per_second is None:
            self.per_second = max(1, left + 1)
            return
        phantom = (self.per_second - left) - ours
        self._slots.extend([now] for _ in range(max(0, phantom)))

    def block(self, error: UpbitBlocked) -> None:
        self.blocked = error


_BLOCK_TIME = re.compile(
    r"(\d+(?:\.\d+)?)\s*(seconds?|secs?|s\b|초|minutes?|mins?|m\b|분|hours?|h\b|시간)",
    re.IGNORECASE,
)
_BLOCK_UNIT = {"s": 1.0, "초": 1.0, "m": 60.0, "분": 60.0, "h": 3600.0, "시": 3600.0}


def block_seconds(message: str) -> float | None:
    """How long a 418 block lasts, from Upbit's message ("... blocked for 60 seconds")."""
    match = _BLOCK_TIME.search(message)
    if match is None:
        return None
    return float(match.group(1)) * _BLOCK_UNIT[match.group(2)[0].lower()]


def _blocked_error(what: str, message: str, market: str | None) -> UpbitBlocked:
    seconds = block_seconds(message)
    if seconds is None:
        span = "for a time it did not state (blocks grow with every offence)"
        until = None
    else:
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        span = f"for {_duration(seconds)}, until {until:%Y-%m-%d %H:%M:%S} UTC"
    return UpbitBlocked(
        f"{what}: Upbit has blocked this IP {span} for exceeding its request rate limit"
        f" (HTTP 418: {message}); what was fetched is stored: run the same command again"
        " after the block and it resumes; make sure no other program uses the Upbit API"
        " from this IP",
        market=market,
        seconds=seconds,
        until=until,
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds:.0f} s ({seconds / 60:.0f} min)"
    return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"


def _error_message(exc: upbit.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("name"))
    return str(body or exc.message)


async def _call(
    request: Callable[[], Awaitable[Any]],
    limiter: RateLimiter,
    *,
    what: str,
    market: str | None = None,
) -> Any:
    """One REST call paced by `limiter`, with retries; every failure ends as an UpbitError."""
    rate_limited = transient = 0
    while True:
        slot = await limiter.acquire()
        headers: Mapping[str, str] | None = None
        status = 200
        reached = True
        try:
            raw = await request()
            headers = raw.headers
            return await raw.parse()
        except upbit.RateLimitError as exc:
            headers, status = exc.response.headers, 429
            rate_limited += 1
            if rate_limited > _MAX_RATE_LIMITED:
                raise UpbitError(
                    f"{what}: Upbit kept answering 429 (too many requests) after"
                    f" {_MAX_RATE_LIMITED} backoffs; another program on this IP may be using"
                    " the candle budget",
                    market=market,
                    status=429,
                ) from exc
            continue  # the limiter pauses every caller before the retry
        except upbit.RateLimitPenaltyError as exc:
            headers, status = exc.response.headers, 418
            error = _blocked_error(what, _error_message(exc), market)
            limiter.block(error)
            raise error from exc
        except upbit.NotFoundError as exc:
            headers, status = exc.response.headers, 404
            if market is not None:
                raise UpbitError(
                    f"{what}: Upbit does not know market {market!r}"
                    f" (HTTP 404: {_error_message(exc)});"
                    " write it as QUOTE-BASE, e.g. KRW-BTC, and check it is listed"
                    " (`upquant data fetch --all-krw` lists what is)",
                    market=market,
                    status=404,
                ) from exc
            raise UpbitError(f"{what}: HTTP 404 ({_error_message(exc)})", status=404) from exc
        except upbit.BadRequestError as exc:
            headers, status = exc.response.headers, 400
            raise UpbitError(
                f"{what}: Upbit rejected the request (HTTP 400: {_error_message(exc)})",
                market=market,
                status=400,
            ) from exc
        except upbit.InternalServerError as exc:
            headers, status = exc.response.headers, exc.status_code
            transient += 1
            if transient > _MAX_TRANSIENT:
                raise UpbitError(
                    f"{what}: Upbit answered HTTP {exc.status_code} {_MAX_TRANSIENT + 1} times;"
                    " the exchange may be in maintenance, try again later",
                    market=market,
                    status=exc.status_code,
                ) from exc
        except upbit.APIStatusError as exc:
            headers, status = exc.response.headers, exc.status_code
            raise UpbitError(
                f"{what}: Upbit answered HTTP {exc.status_code} ({_error_message(exc)})",
                market=market,
                status=exc.status_code,
            ) from exc
        except upbit.APIConnectionError as exc:
            reached = isinstance(exc, upbit.APITimeoutError)  # a timed-out one may have arrived
            transient += 1
            if transient > _MAX_TRANSIENT:
                cause = exc.__cause__ or exc
                raise UpbitUnreachable(
                    f"{what}: cannot reach Upbit at {_origin(exc)} ({type(cause).__name__}:"
                    f" {cause}); check the network or UPQUANT_UPBIT_REST_URL",
                    market=market,
                ) from exc
        except ValueError as exc:  # the body was not JSON (json.JSONDecodeError is a ValueError)
            transient += 1
            if transient > _MAX_TRANSIENT:
                raise UpbitError(
                    f"{what}: Upbit sent a malformed response {_MAX_TRANSIENT + 1} times ({exc})",
                    market=market,
                ) from exc
        finally:
            limiter.done(slot, headers, status=status, reached=reached)
        await asyncio.sleep(0.25 * 2 ** (transient - 1))


def _origin(exc: upbit.APIConnectionError) -> str:
    url = exc.request.url
    return f"{url.scheme}://{url.netloc.decode()}"


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """A UTC timestamp in ns; naive datetimes are read as UTC."""
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.as_unit("ns")


def empty_candles() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in CANDLE_COLUMNS})
    frame["market"] = frame["market"].astype("str")
    frame["unit"] = frame["unit"].astype("str")
    frame["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame


def _page_frame(items: Sequence[Any], market: str, unit: str) -> pd.DataFrame:
    """SDK candle items (newest first, numbers as str or float) as canonical candles."""
    if not isinstance(items, list):
        raise UpbitError(f"candles {market} {unit}: Upbit sent {type(items).__name__}, not a list")
    if not items:
        return empty_candles()
    try:
        data = {"ts": [item.candle_date_time_utc for item in items]}
        for column, name in CANDLE_FIELDS.items():
            data[column] = [float(getattr(item, name)) for item in items]
    except (AttributeError, TypeError, ValueError) as exc:
        raise UpbitError(
            f"candles {market} {unit}: a row from Upbit lacks a field ({exc})"
        ) from exc
    frame = pd.DataFrame(data)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("ns")
    frame.insert(0, "unit", unit)
    frame.insert(0, "market", market)
    frame = frame.astype({c: "float64" for c in CANDLE_FIELDS})
    return frame[CANDLE_COLUMNS].sort_values("ts", ignore_index=True)


def unit_width(unit: str) -> pd.Timedelta:
    return pd.Timedelta(minutes=unit_minutes(unit))


def floor_bucket(moment: datetime | pd.Timestamp, unit: str) -> pd.Timestamp:
    """The open time of the bucket holding `moment` (UTC-aligned, as Upbit's buckets)."""
    stamp, width = _utc(moment), unit_width(unit)
    return _EPOCH + (stamp - _EPOCH) // width * width


def ceil_bucket(moment: datetime | pd.Timestamp, unit: str) -> pd.Timestamp:
    """The first bucket open time at or after `moment`."""
    floor = floor_bucket(moment, unit)
    return floor if floor == _utc(moment) else floor + unit_width(unit)


@dataclass(frozen=True)
class Chunk:
    """One page request: the buckets [start, end) of a series, at most PAGE_SIZE of them."""

    market: str
    unit: str
    start: pd.Timestamp
    end: pd.Timestamp

    @property
    def count(self) -> int:
        return int((self.end - self.start) // unit_width(self.unit))


def plan_chunks(market: str, unit: str, start: pd.Timestamp, end: pd.Timestamp) -> list[Chunk]:
    """Pages covering the candles with start <= ts < end, newest first, on the bucket grid.

    Each page asks with `to` = its end (exclusive) and `count` = its number of buckets, so a
    page is complete whether the server reads `count` as a window of buckets (Upbit: gaps
    give short pages) or as the last `count` candles (then older extra rows are dropped).
    """
    first, stop = ceil_bucket(start, unit), ceil_bucket(end, unit)
    width = unit_width(unit)
    chunks = []
    while stop > first:
        begin = max(first, stop - PAGE_SIZE * width)
        chunks.append(Chunk(market, unit, begin, stop))
        stop = begin
    return chunks


def _page_request(api: AsyncUpbit, chunk: Chunk) -> Awaitable[Any]:
    to = chunk.end.strftime("%Y-%m-%dT%H:%M:%SZ")
    if chunk.unit == "D":
        return api.candles.with_raw_response.list_days(
            market=chunk.market, count=chunk.count, to=to
        )
    minutes = cast(Any, int(chunk.unit))  # the SDK types unit as a Literal of the valid minutes
    return api.candles.with_raw_response.list_minutes(
        minutes, market=chunk.market, count=chunk.count, to=to
    )


async def fetch_chunk(
    api: AsyncUpbit, limiter: RateLimiter, chunk: Chunk
) -> tuple[pd.DataFrame, tuple[pd.Timestamp, pd.Timestamp] | None]:
    """One page: its candles inside [chunk.start, chunk.end), ascending, and the range it
    covers for good (None when none): buckets that had closed SETTLE_S before the request;
    the forming candle is returned but not counted as covered."""
    asked = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=SETTLE_S)
    items = await _call(
        partial(_page_request, api, chunk),
        limiter,
        what=f"candles {chunk.market} {chunk.unit}",
        market=chunk.market,
    )
    page = _page_frame(items, chunk.market, chunk.unit)
    page = page[(page["ts"] >= chunk.start) & (page["ts"] < chunk.end)].reset_index(drop=True)
    settled = min(chunk.end, floor_bucket(asked, chunk.unit))
    return page, ((chunk.start, settled) if settled > chunk.start else None)


async def fetch_page(
    api: AsyncUpbit, limiter: RateLimiter, market: str, unit: str, to: pd.Timestamp, count: int
) -> tuple[pd.DataFrame, pd.Timestamp]:
    """One page as Upbit serves it: the `count` newest candles that exist before `to`
    (reaching back over buckets without trades), ascending, and `settled`: the end of the
    buckets that had closed SETTLE_S before the request (the newer ones may still change).

    `to` must be on the bucket grid; `count` is at most PAGE_SIZE. Fewer than `count` rows
    means the series has no older candles.
    """
    asked = pd.Timestamp.now(tz="UTC") - pd.Timedelta(seconds=SETTLE_S)
    chunk = Chunk(market, unit, to - count * unit_width(unit), to)
    items = await _call(
        partial(_page_request, api, chunk), limiter, what=f"candles {market} {unit}", market=market
    )
    page = _page_frame(items, market, unit)
    return page[page["ts"] < to].reset_index(drop=True), floor_bucket(asked, unit)


ChunkCallback = Callable[
    [Chunk, pd.DataFrame, tuple[pd.Timestamp, pd.Timestamp] | None], Awaitable[object] | object
]


async def fetch_chunks(
    chunks: Iterable[Chunk],
    on_chunk: ChunkCallback,
    *,
    client: AsyncUpbit | None = None,
    limiter: RateLimiter | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_failed: Callable[[Chunk, UpbitError], object] | None = None,
) -> None:
    """Fetch `chunks` with `concurrency` requests in flight, paced by one shared limiter.

    `on_chunk(chunk, candles, covered)` (sync or async) runs for every page as it arrives,
    in completion order. `chunks` is read lazily, so the caller may skip the rest of a series
    that failed. A failed chunk goes to `on_failed` when given (404, 400, exhausted retries);
    without it, and always for UpbitBlocked and UpbitUnreachable, the first error stops every
    worker and is raised.
    """
    api = make_client() if client is None else client.with_options(max_retries=0)
    pacer = limiter or RateLimiter()
    queue = iter(chunks)

    async def worker() -> None:
        for chunk in queue:
            try:
                page, covered = await fetch_chunk(api, pacer, chunk)
            except (UpbitBlocked, UpbitUnreachable):
                raise
            except UpbitError as exc:
                if on_failed is None:
                    raise
                on_failed(chunk, exc)
                continue
            result = on_chunk(chunk, page, covered)
            if inspect.isawaitable(result):
                await result

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise cast(BaseException, task.exception())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if client is None:
            await api.close()


async def fetch_candles(
    market: str,
    unit: str,
    since: datetime,
    until: datetime | None = None,
    *,
    client: AsyncUpbit | None = None,
    on_page: PageCallback | None = None,
    limiter: RateLimiter | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> pd.DataFrame:
    """Candles of `market`/`unit` with since <= ts < until (default now), canonical, ascending.

    Pages backwards 200 buckets at a time with `to` exclusive (see plan_chunks). Upbit returns
    only buckets in which something traded, so a short or empty page is a gap, not the end:
    every page down to `since` is asked. Requests are paced by `limiter` (a fresh one when
    not given; share one across markets); 429 backs off and retries; 418 raises UpbitBlocked,
    other failures UpbitError (UpbitUnreachable for network errors). `on_page(frame)` (sync
    or async) gets each non-empty page as it arrives, so a killed fetch keeps what it stored.
    Naive datetimes are read as UTC.
    """
    try:
        unit = check_unit(unit)
    except ValueError as exc:
        raise UpbitError(str(exc), market=market) from exc
    start = _utc(since)
    end = _utc(until) if until is not None else pd.Timestamp.now(tz="UTC").as_unit("ns")
    pages: list[pd.DataFrame] = []

    async def keep(chunk: Chunk, page: pd.DataFrame, covered: object) -> None:
        if len(page):
            pages.append(page)
            if on_page is not None:
                result = on_page(page)
                if inspect.isawaitable(result):
                    await result

    await fetch_chunks(
        plan_chunks(market, unit, start, end),
        keep,
        client=client,
        limiter=limiter,
        concurrency=concurrency,
    )
    if not pages:
        return empty_candles()
    out = pd.concat(pages, ignore_index=True)
    return out.drop_duplicates("ts", keep="last").sort_values("ts", ignore_index=True)


async def list_markets(client: AsyncUpbit | None = None) -> list[dict[str, Any]]:
    """All Upbit markets (`/v1/market/all?is_details=true`): market, korean_name, english_name,
    market_event."""
    api = make_client() if client is None else client.with_options(max_retries=0)
    try:
        items = await _call(
            lambda: api.trading_pairs.with_raw_response.list(is_details=True),
            RateLimiter(),
            what="market list",
        )
    finally:
        if client is None:
            await api.close()
    return [item.to_dict() for item in items]
