"""Upbit quotation client: candle backfill over REST and the public WebSocket stream.

Built on the official SDK (`upbit-sdk`, import `upbit`). Base URLs come from
UPQUANT_UPBIT_REST_URL and UPQUANT_UPBIT_WS_URL, so tests point them at tests/fake_upbit.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, cast

import httpx
import pandas as pd
import upbit
import websockets
from upbit import AsyncUpbit

from engine.markets import check_unit
from store.candles import CANDLE_COLUMNS

DEFAULT_REST_URL = "https://api.upbit.com"
DEFAULT_WS_URL = "wss://api.upbit.com/websocket/v1"
PAGE_SIZE = 200  # Upbit's maximum `count`
PING_INTERVAL_S = 20.0  # Upbit closes idle sockets after ~60 s (observed)

_WS_PATH = "/websocket/v1"
_REMAINING_SEC = re.compile(r"\bsec=(\d+)")
_MAX_RATE_LIMITED = 6  # 429s in a row before giving up (backoff 1+2+4+8+8+8 s)
_MAX_TRANSIENT = 3  # retries for network errors, 5xx and malformed bodies
_PRICE_FIELDS = {
    "open": "opening_price",
    "high": "high_price",
    "low": "low_price",
    "close": "trade_price",
    "volume": "candle_acc_trade_volume",
    "value": "candle_acc_trade_price",
}

PageCallback = Callable[[pd.DataFrame], Awaitable[object] | object]


class UpbitError(Exception):
    """An Upbit call failed; the message says what, for which market, and what to do."""

    def __init__(self, message: str, *, market: str | None = None, status: int | None = None):
        super().__init__(message)
        self.market = market
        self.status = status


class UpbitUnreachable(UpbitError):
    """Upbit could not be reached at all (refused, DNS, timeout, socket dropped): use replay."""


def rest_url() -> str:
    return (os.environ.get("UPQUANT_UPBIT_REST_URL") or DEFAULT_REST_URL).rstrip("/")


def ws_url() -> str:
    return (os.environ.get("UPQUANT_UPBIT_WS_URL") or DEFAULT_WS_URL).rstrip("/")


def _configured_ws_url() -> str:
    return ws_url()  # stream() has a parameter of the same name


def make_client(
    *, rest: str | None = None, ws: str | None = None, max_retries: int = 0, timeout: float = 15.0
) -> AsyncUpbit:
    """An SDK client on our configured URLs; retries are ours (fetch_candles), not the SDK's."""
    ws_base = (ws or ws_url()).rstrip("/")
    # The SDK appends /websocket/v1 itself.
    ws_base = ws_base.removesuffix(_WS_PATH)
    return AsyncUpbit(
        base_url=rest or rest_url(),
        websocket_base_url=ws_base,
        max_retries=max_retries,
        timeout=httpx.Timeout(timeout, connect=5.0),
    )


# --------------------------------------------------------------------------- REST


class _Pacer:
    """Keeps one caller inside Upbit's per-second budget, read from `Remaining-Req`."""

    def __init__(self) -> None:
        self._answered: deque[float] = deque()  # monotonic times of responses in the last second
        self._resume_at = 0.0

    async def wait(self) -> None:
        delay = self._resume_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def observe(self, headers: Mapping[str, str]) -> None:
        now = time.monotonic()
        self._answered.append(now)
        while self._answered[0] <= now - 1.0:
            self._answered.popleft()
        match = _REMAINING_SEC.search(headers.get("Remaining-Req", ""))
        if match and int(match.group(1)) <= 0:
            # Budget spent: wait until both a sliding window (oldest answer + 1 s) and a
            # fixed per-second window (next wall-clock second) have room again.
            wall = time.time()
            delay = max(self._answered[0] + 1.0 - now, math.floor(wall) + 1.0 - wall) + 0.02
            self._resume_at = max(self._resume_at, now + delay)

    def back_off(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)


def _error_message(exc: upbit.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("name"))
    return str(body or exc.message)


async def _call(
    request: Callable[[], Awaitable[Any]], pacer: _Pacer, *, what: str, market: str | None = None
) -> Any:
    """One REST call with pacing and retries; every failure ends as an UpbitError."""
    rate_limited = transient = 0
    while True:
        await pacer.wait()
        try:
            raw = await request()
            pacer.observe(raw.headers)
            return await raw.parse()
        except upbit.RateLimitError as exc:
            pacer.observe(exc.response.headers)
            rate_limited += 1
            if rate_limited > _MAX_RATE_LIMITED:
                raise UpbitError(
                    f"{what}: Upbit kept answering 429 (too many requests) after"
                    f" {_MAX_RATE_LIMITED} backoffs; another program on this IP may be using"
                    " the candle budget",
                    market=market,
                    status=429,
                ) from exc
            pacer.back_off(min(2.0 ** (rate_limited - 1), 8.0))
            continue
        except upbit.RateLimitPenaltyError as exc:
            raise UpbitError(
                f"{what}: Upbit has blocked this IP for exceeding its rate limit (HTTP 418:"
                f" {_error_message(exc)}); wait several minutes before fetching again",
                market=market,
                status=418,
            ) from exc
        except upbit.NotFoundError as exc:
            if market is not None:
                raise UpbitError(
                    f"{what}: Upbit does not know market {market!r}"
                    f" (HTTP 404: {_error_message(exc)});"
                    " write it as QUOTE-BASE, e.g. KRW-BTC, and check it is listed",
                    market=market,
                    status=404,
                ) from exc
            raise UpbitError(f"{what}: HTTP 404 ({_error_message(exc)})", status=404) from exc
        except upbit.BadRequestError as exc:
            raise UpbitError(
                f"{what}: Upbit rejected the request (HTTP 400: {_error_message(exc)})",
                market=market,
                status=400,
            ) from exc
        except upbit.InternalServerError as exc:
            transient += 1
            if transient > _MAX_TRANSIENT:
                raise UpbitError(
                    f"{what}: Upbit answered HTTP {exc.status_code} {_MAX_TRANSIENT + 1} times;"
                    " the exchange may be in maintenance, try again later",
                    market=market,
                    status=exc.status_code,
                ) from exc
        except upbit.APIStatusError as exc:
            raise UpbitError(
                f"{what}: Upbit answered HTTP {exc.status_code} ({_error_message(exc)})",
                market=market,
                status=exc.status_code,
            ) from exc
        except upbit.APIConnectionError as exc:
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
        pacer.back_off(0.25 * 2 ** (transient - 1))


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
        for column, name in _PRICE_FIELDS.items():
            data[column] = [float(getattr(item, name)) for item in items]
    except (AttributeError, TypeError, ValueError) as exc:
        raise UpbitError(
            f"candles {market} {unit}: a row from Upbit lacks a field ({exc})"
        ) from exc
    frame = pd.DataFrame(data)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("ns")
    frame.insert(0, "unit", unit)
    frame.insert(0, "market", market)
    frame = frame.astype({c: "float64" for c in _PRICE_FIELDS})
    return frame[CANDLE_COLUMNS].sort_values("ts", ignore_index=True)


def _page_request(api: AsyncUpbit, market: str, unit: str, to: str) -> Awaitable[Any]:
    if unit == "D":
        return api.candles.with_raw_response.list_days(market=market, count=PAGE_SIZE, to=to)
    minutes = cast(Any, int(unit))  # the SDK types unit as a Literal of the valid minutes
    return api.candles.with_raw_response.list_minutes(
        minutes, market=market, count=PAGE_SIZE, to=to
    )


async def fetch_candles(
    market: str,
    unit: str,
    since: datetime,
    until: datetime | None = None,
    *,
    client: AsyncUpbit | None = None,
    on_page: PageCallback | None = None,
) -> pd.DataFrame:
    """Candles of `market`/`unit` with since <= ts < until (default now), canonical, ascending.

    Pages backwards 200 buckets at a time with `to` exclusive. Upbit returns only buckets in
    which something traded, so a short or empty page is a gap, not the end: paging stops
    only once `since` is reached. Requests are paced by `Remaining-Req`; 429 backs off and
    retries; 418 and other failures raise UpbitError (UpbitUnreachable for network errors).
    `on_page(frame)` (sync or async) gets each non-empty page as it arrives, so a killed fetch
    keeps what it stored. Naive datetimes are read as UTC.
    """
    try:
        unit = check_unit(unit)
    except ValueError as exc:
        raise UpbitError(str(exc), market=market) from exc
    start = _utc(since)
    end = _utc(until) if until is not None else pd.Timestamp.now(tz="UTC").as_unit("ns")
    if start >= end:
        return empty_candles()
    width = pd.Timedelta(days=1) if unit == "D" else pd.Timedelta(minutes=int(unit))
    api = make_client() if client is None else client.with_options(max_retries=0)
    pacer = _Pacer()
    pages: list[pd.DataFrame] = []
    to = end.ceil("s")  # `to` has whole seconds; a fractional `until` must not lose its bucket
    try:
        while to > start:
            request = partial(_page_request, api, market, unit, to.strftime("%Y-%m-%dT%H:%M:%SZ"))
            items = await _call(request, pacer, what=f"candles {market} {unit}", market=market)
            page = _page_frame(items, market, unit)
            # Every bucket in [window_start, to) was covered by this page, whether the server
            # reads `count` as a window of buckets (Upbit) or as the last `count` candles.
            window_start = (to - pd.Timedelta(1, "ns")).floor(width) - (PAGE_SIZE - 1) * width
            next_to = min(page["ts"].iloc[0], window_start) if len(page) else window_start
            kept = page[(page["ts"] >= start) & (page["ts"] < end)]
            if len(kept):
                pages.append(kept)
                if on_page is not None:
                    result = on_page(kept.reset_index(drop=True))
                    if inspect.isawaitable(result):
                        await result
            to = next_to
    finally:
        if client is None:
            await api.close()
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
            _Pacer(),
            what="market list",
        )
    finally:
        if client is None:
            await api.close()
    return [item.to_dict() for item in items]


# --------------------------------------------------------------------------- WebSocket


async def stream(
    markets: Sequence[str],
    types: Sequence[str] = ("candle.1m", "trade"),
    *,
    ws_url: str | None = None,
    ping_interval: float = PING_INTERVAL_S,
) -> AsyncIterator[dict[str, Any]]:
    """Frames from one public WebSocket subscription, as dicts, until the socket closes.

    Raises UpbitError for an `{"error": ...}` frame and UpbitUnreachable when the socket
    cannot open or is closed; it never reconnects (the live engine does). Pings keep the
    socket alive every `ping_interval` seconds. Wrap it in `contextlib.aclosing` so the
    socket closes as soon as the caller stops reading.
    """
    if not markets or not types:
        raise UpbitError("stream needs at least one market and one type")
    subscription = [
        {"ticket": f"upquant-{uuid.uuid4()}"},
        *({"type": kind, "codes": list(markets)} for kind in types),
        {"format": "DEFAULT"},
    ]
    target = ws_url or _configured_ws_url()
    options = cast(Any, {"ping_interval": ping_interval, "ping_timeout": ping_interval})
    async with make_client(ws=target) as client:
        manager = client.ws_public.connect_public(websocket_connection_options=options)
        try:
            conn = await manager.enter()
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise UpbitUnreachable(
                f"cannot open the Upbit WebSocket at {target} ({type(exc).__name__}: {exc});"
                " check the network or UPQUANT_UPBIT_WS_URL"
            ) from exc
        try:
            while True:
                try:
                    if subscription:
                        await conn.send_raw(json.dumps(subscription))
                        subscription = []
                    data = await conn.recv_bytes()
                except websockets.ConnectionClosed as exc:
                    raise UpbitUnreachable(
                        f"the Upbit WebSocket at {target} closed ({exc}); reconnect and backfill"
                    ) from exc
                frame = _decode_frame(data)
                if "error" in frame:
                    error = frame["error"] if isinstance(frame["error"], dict) else {}
                    raise UpbitError(
                        f"Upbit WebSocket refused the subscription to {list(types)} for"
                        f" {list(markets)}: {error.get('name')}: {error.get('message')}"
                    )
                yield frame
        finally:
            await conn.close()


def _decode_frame(data: bytes | str) -> dict[str, Any]:
    try:
        frame = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UpbitError(f"Upbit WebSocket sent a frame that is not UTF-8 JSON ({exc})") from exc
    if not isinstance(frame, dict):
        raise UpbitError(f"Upbit WebSocket sent {type(frame).__name__}, not an object")
    return frame


def candle_frame_to_row(frame: Mapping[str, Any]) -> dict[str, Any]:
    """A `candle.Nm` frame as a canonical candle dict (market, unit, ts, open, ..., value)."""
    kind = str(frame.get("type", ""))
    unit = kind.removeprefix("candle.").removesuffix("m")
    if not kind.startswith("candle.") or not kind.endswith("m") or not unit.isdigit():
        raise UpbitError(f"not a minute candle frame: type {kind!r}")
    try:
        row: dict[str, Any] = {
            "market": str(frame["code"]),
            "unit": unit,
            "ts": pd.Timestamp(frame["candle_date_time_utc"], tz="UTC").as_unit("ns"),
        }
        for column, name in _PRICE_FIELDS.items():
            row[column] = float(frame[name])
    except KeyError as exc:
        raise UpbitError(f"candle frame for {frame.get('code')} lacks field {exc}") from exc
    return row
