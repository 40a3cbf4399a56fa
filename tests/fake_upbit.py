"""A faithful fake Upbit for tests: quotation REST and the public WebSocket on 127.0.0.1.

It follows UPBIT.md in ../shared (beside the repository): candles newest first, `to`
exclusive, `count` 1..200 read as a window of `count` buckets (so no-trade gaps give short or
empty pages), Upbit's error JSON, `Remaining-Req` headers, 429 over 10 requests a second per
group and 418 on continued abuse, binary WebSocket frames with SNAPSHOT then REALTIME. Tests
drive it through plain attributes and methods (`fail_next` for 429/418/5xx,
`malformed_next`, `slow_next`, `latency`, `block`, `push_candle`, `push_trade`,
`push_ticker`, `push_raw` for malformed frames, `play`, `drop_connections`, `drop_after` to
drop sockets mid-stream) and read back what it served from `requests`, `statuses`, `log`,
`candles_served` and `frames_sent`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd
from aiohttp import WSMsgType, web

T = TypeVar("T")

CANDLE_COLUMNS = ["market", "unit", "ts", "open", "high", "low", "close", "volume", "value"]
MINUTE_UNITS = ("1", "3", "5", "10", "15", "30", "60", "240")
UNITS = (*MINUTE_UNITS, "D")
WS_TYPES = ("ticker", "trade", "orderbook", "candle.1s", *(f"candle.{u}m" for u in MINUTE_UNITS))
MAX_COUNT = 200
_NS_PER_MIN = 60 * 10**9
_KST = timedelta(hours=9)

DEFAULT_MARKETS = {
    "KRW-BTC": ("비트코인", "Bitcoin"),
    "KRW-ETH": ("이더리움", "Ethereum"),
    "KRW-XRP": ("엑스알피(리플)", "XRP"),
    "KRW-SOL": ("솔라나", "Solana"),
    "BTC-ETH": ("이더리움", "Ethereum"),
}

MISSING_PARAM = "Missing request parameter error. Check the required parameters!"
INVALID_PARAM = "Invalid parameter. Check the given value!"


def unit_ns(unit: str) -> int:
    return 1440 * _NS_PER_MIN if unit == "D" else int(unit) * _NS_PER_MIN


def _fmt(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _fmt_kst(ns: int) -> str:
    return (datetime.fromtimestamp(ns // 10**9, UTC) + _KST).strftime("%Y-%m-%dT%H:%M:%S")


def _ns(ts: Any) -> int:
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.as_unit("ns").value)


def parse_to(text: str) -> int:
    """Upbit's `to`: ISO 8601 with Z or an offset, or without a zone (then UTC); ns since epoch."""
    raw = text.strip()
    if "T" not in raw and " " in raw:
        raw = raw.replace(" ", "T", 1)
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    moment = datetime.fromisoformat(raw)  # ValueError for anything else, e.g. an unencoded '+'
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _ns(moment)


# --------------------------------------------------------------------------- candle data


def load_csv_candles(path: Path, market: str, unit: str = "1") -> pd.DataFrame:
    """A `timestamp,open,high,low,close,volume[,value]` file (UTC) as canonical candles."""
    raw = pd.read_csv(path)
    frame = pd.DataFrame(
        {
            "market": market,
            "unit": unit,
            "ts": pd.to_datetime(raw["timestamp"], utc=True).dt.as_unit("ns"),
            "open": raw["open"].astype("float64"),
            "high": raw["high"].astype("float64"),
            "low": raw["low"].astype("float64"),
            "close": raw["close"].astype("float64"),
            "volume": raw["volume"].astype("float64"),
        }
    )
    frame["value"] = (
        raw["value"].astype("float64") if "value" in raw else frame["close"] * frame["volume"]
    )
    return frame.sort_values("ts", ignore_index=True)


def resample_candles(candles: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Aggregate canonical candles of one market into `unit` buckets (UTC-aligned, as Upbit)."""
    buckets = candles["ts"].dt.floor("D" if unit == "D" else f"{int(unit)}min")
    grouped = candles.groupby([candles["market"], buckets], sort=True)
    out = grouped.agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
        value=("value", "sum"),
    ).reset_index()
    out.insert(1, "unit", unit)
    return out[CANDLE_COLUMNS]


def generate_candles(
    market: str,
    unit: str,
    start: datetime | str,
    periods: int,
    *,
    seed: int = 0,
    price: float = 100_000_000.0,
    gap_prob: float = 0.0,
) -> pd.DataFrame:
    """Deterministic random-walk candles; `gap_prob` drops buckets as if nothing traded."""
    rng = np.random.default_rng(seed)
    step = pd.Timedelta(unit_ns(unit), "ns")
    ts = (
        pd.Timestamp(start, tz="UTC") if pd.Timestamp(start).tzinfo is None else pd.Timestamp(start)
    )
    stamps = pd.date_range(ts, periods=periods, freq=step).as_unit("ns")
    close = price * np.exp(np.cumsum(rng.normal(0.0, 0.001, periods)))
    open_ = np.concatenate([[price], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.0005, periods)) * close
    volume = rng.gamma(2.0, 0.5, periods)
    frame = pd.DataFrame(
        {
            "market": market,
            "unit": unit,
            "ts": stamps,
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": volume,
            "value": close * volume,
        }
    )
    if gap_prob > 0:
        frame = frame[rng.random(periods) >= gap_prob].reset_index(drop=True)
    return frame


# --------------------------------------------------------------------------- frames


def candle_frame(
    market: str,
    candle: Mapping[str, Any] | pd.Series,
    unit: str = "1",
    *,
    stream_type: str | None = None,
) -> dict[str, Any]:
    """A WebSocket `candle.Nm` frame from a canonical candle (ts, open, high, low, close, ...)."""
    key = _ns(candle["ts"])
    frame: dict[str, Any] = {
        "type": f"candle.{unit}m",
        "code": market,
        "candle_date_time_utc": _fmt(key),
        "candle_date_time_kst": _fmt_kst(key),
        "opening_price": float(candle["open"]),
        "high_price": float(candle["high"]),
        "low_price": float(candle["low"]),
        "trade_price": float(candle["close"]),
        "candle_acc_trade_volume": float(candle["volume"]),
        "candle_acc_trade_price": float(candle["value"]),
        "timestamp": int(candle.get("timestamp", key // 10**6 + unit_ns(unit) // 10**6 - 1)),
    }
    if stream_type:
        frame["stream_type"] = stream_type
    return frame


def forming_frames(
    market: str, candle: Mapping[str, Any] | pd.Series, steps: int = 3, unit: str = "1"
) -> list[dict[str, Any]]:
    """`steps` frames of one candle as it forms, same candle_date_time_utc; the last is `candle`."""
    frames = []
    for i in range(1, steps + 1):
        share = i / steps
        partial = {
            "ts": candle["ts"],
            "open": candle["open"],
            "high": candle["open"] + (candle["high"] - candle["open"]) * share,
            "low": candle["open"] - (candle["open"] - candle["low"]) * share,
            "close": candle["close"]
            if i == steps
            else candle["open"] + (candle["close"] - candle["open"]) * share,
            "volume": candle["volume"] * share,
            "value": candle["value"] * share,
        }
        frames.append(candle_frame(market, partial, unit))
    return frames


def trade_frame(
    market: str,
    price: float,
    volume: float,
    *,
    ask_bid: str = "BID",
    trade_ts: datetime | pd.Timestamp | None = None,
    sequential_id: int = 0,
    stream_type: str | None = None,
) -> dict[str, Any]:
    moment = pd.Timestamp(trade_ts if trade_ts is not None else datetime.now(UTC))
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    ms = int(moment.as_unit("ns").value // 10**6)
    frame: dict[str, Any] = {
        "type": "trade",
        "code": market,
        "timestamp": ms,
        "trade_date": moment.strftime("%Y-%m-%d"),
        "trade_time": moment.strftime("%H:%M:%S"),
        "trade_timestamp": ms,
        "trade_price": float(price),
        "trade_volume": float(volume),
        "ask_bid": ask_bid,
        "sequential_id": sequential_id,
    }
    if stream_type:
        frame["stream_type"] = stream_type
    return frame


def ticker_frame(market: str, price: float, **fields: Any) -> dict[str, Any]:
    """A WebSocket `ticker` frame (the fields upquant reads, plus any given)."""
    ms = int(time.time() * 1000)
    frame: dict[str, Any] = {
        "type": "ticker",
        "code": market,
        "trade_price": float(price),
        "change": "EVEN",
        "signed_change_rate": 0.0,
        "acc_trade_price_24h": 0.0,
        "acc_trade_volume_24h": 0.0,
        "timestamp": ms,
        "trade_timestamp": ms,
    }
    frame.update(fields)
    return frame


# --------------------------------------------------------------------------- server state

# One candle as stored: open, high, low, close, volume, value, timestamp (ms of the last trade).
_Row = tuple[float, float, float, float, float, float, int]


class _Series:
    """Candles of one (market, unit), keyed by open time in ns."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self._keys: np.ndarray | None = None

    def upsert(self, key: int, row: _Row) -> None:
        self.rows[key] = row
        self._keys = None

    def sorted_keys(self) -> np.ndarray:
        if self._keys is None:
            self._keys = np.array(sorted(self.rows), dtype=np.int64)
        return self._keys


@dataclass(eq=False)  # identity hash: connections live in a set
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    subs: dict[str, tuple[set[str], bool, bool]] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class _Fault:
    status: int
    message: str
    malformed: bool = False


class FakeUpbit:
    """Upbit quotation REST + public WebSocket, in memory, on 127.0.0.1:<random port>.

    `candles`: canonical candle frames (market, unit, ts, open, high, low, close, volume,
    value); minute units and days missing from the data are aggregated from 1-minute candles.
    `rate_limit`: requests per second per group (None disables limiting); `penalty_after`
    429s within 10 s block every request with 418 for `block_seconds`, doubling each time.
    `count_is_window`: False (Upbit's reading, the default) returns the last `count` candles
    that exist before `to`, reaching back over buckets without trades; True reads `count` as
    the last `count` buckets before `to` instead (gaps shorten pages), for clients that must
    work either way.
    `now`: the clock for candle requests without `to` (default: the wall clock, so stored
    history from the past answers such requests with an empty list, as Upbit would).
    """

    def __init__(
        self,
        candles: pd.DataFrame | Iterable[pd.DataFrame] | None = None,
        *,
        markets: Mapping[str, tuple[str, str]] | None = None,
        rate_limit: int | None = 10,
        penalty_after: int = 20,
        block_seconds: float = 30.0,
        ws_connect_limit: int | None = 5,
        count_is_window: bool = False,
        now: datetime | None = None,
    ) -> None:
        self.markets: dict[str, tuple[str, str]] = dict(
            DEFAULT_MARKETS if markets is None else markets
        )
        self.rate_limit = rate_limit
        self.penalty_after = penalty_after
        self.block_seconds = block_seconds
        self.ws_connect_limit = ws_connect_limit
        self.count_is_window = count_is_window
        self.now = now  # the clock for requests without `to`; None means the wall clock
        self.latency = 0.0  # seconds added to every REST response
        self.refuse_ws = False  # answer WebSocket upgrades with 503, as during an outage
        self.ws_snapshots = True  # send the stored latest candle as SNAPSHOT on subscribe

        self.requests: Counter[str] = Counter()  # path -> requests received
        self.candles_served: Counter[tuple[str, str]] = Counter()  # (market, unit) -> rows
        self.frames_sent: Counter[str] = Counter()  # WebSocket frame type -> frames sent
        self.ws_drops = 0  # connections dropped by drop_connections / drop_after
        self.statuses: Counter[int] = Counter()  # status -> responses served
        self.log: list[tuple[str, dict[str, str], int]] = []  # (path, query, status)
        self.ws_connects = 0
        self.subscriptions: list[list[dict[str, Any]]] = []  # every subscription message
        self.pings_received = 0

        self._series: dict[tuple[str, str], _Series] = {}
        self._derived: dict[tuple[str, str], _Series] = {}
        self._last_trade: dict[str, dict[str, Any]] = {}
        self._sequence = itertools.count(1)
        self._faults: deque[_Fault | None] = deque()  # None: serve that request normally
        self._delays: deque[float] = deque()
        self._drop_after: tuple[int, bool] | None = None
        self._hits: dict[str, deque[float]] = {}
        self._rejections: deque[float] = deque()
        self._blocked_until = 0.0
        self._blocks = 0
        self._conns: set[_Conn] = set()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        if candles is not None:
            self.add_candles(candles)

    # ------------------------------------------------------------------ data and controls

    def add_candles(self, candles: pd.DataFrame | Iterable[pd.DataFrame]) -> None:
        """Store canonical candles (upsert by market, unit, ts); markets become known."""
        frames = [candles] if isinstance(candles, pd.DataFrame) else list(candles)
        for frame in frames:
            for (market, unit), part in frame.groupby(["market", "unit"], sort=False):
                market, unit = str(market), str(unit)
                series = self._series.setdefault((market, unit), _Series())
                keys = part["ts"].dt.tz_convert("UTC").dt.as_unit("ns").astype("int64").to_numpy()
                stamps = (
                    part["timestamp"].astype("int64").to_numpy()
                    if "timestamp" in part
                    else keys // 10**6 + unit_ns(unit) // 10**6 - 1
                )
                cols = [
                    part[c].astype("float64").to_numpy()
                    for c in ("open", "high", "low", "close", "volume", "value")
                ]
                for i, key in enumerate(keys):
                    o, h, low, c, v, val = (float(col[i]) for col in cols)
                    series.rows[int(key)] = (o, h, low, c, v, val, int(stamps[i]))
                series._keys = None
                self.markets.setdefault(market, (market, market))
                self._drop_derived(market)

    def candles(self, market: str, unit: str = "1") -> pd.DataFrame:
        """What the fake holds for (market, unit), canonical, ascending."""
        series = self._lookup(market, unit)
        keys = series.sorted_keys() if series else np.array([], dtype=np.int64)
        rows = [series.rows[int(k)] for k in keys] if series else []
        frame = pd.DataFrame(
            rows, columns=["open", "high", "low", "close", "volume", "value", "timestamp"]
        )
        frame.insert(0, "ts", pd.to_datetime(keys, utc=True).as_unit("ns"))
        frame.insert(0, "unit", unit)
        frame.insert(0, "market", market)
        return frame[CANDLE_COLUMNS]

    def fail_next(
        self, n: int = 1, status: int = 500, message: str | None = None, *, after: int = 0
    ) -> None:
        """The next `n` REST requests (after `after` served normally) get `status` with
        Upbit's error JSON."""
        text = message or {
            429: "Too many API requests.",
            418: f"Blocked for {self.block_seconds:.0f} s for exceeding the rate limit.",
        }.get(status, "Internal server error")
        self._faults.extend(None for _ in range(after))
        self._faults.extend(_Fault(status, text) for _ in range(n))

    def slow_next(self, n: int = 1, seconds: float = 1.0) -> None:
        """The next `n` REST requests are answered `seconds` late (on top of `latency`)."""
        self._delays.extend(seconds for _ in range(n))

    def drop_after(self, frames: int, *, abrupt: bool = True) -> None:
        """Drop every WebSocket once `frames` more frames have been delivered (mid-stream)."""
        self._drop_after = (frames, abrupt)

    def malformed_next(self, n: int = 1) -> None:
        """The next `n` REST requests get 200 with a truncated JSON body."""
        self._faults.extend(_Fault(200, "", malformed=True) for _ in range(n))

    def block(self, seconds: float) -> None:
        """Answer every REST request with 418 for `seconds`, as after rate-limit abuse."""
        self._blocked_until = time.monotonic() + seconds

    def reset_counters(self) -> None:
        self.requests.clear()
        self.candles_served.clear()
        self.frames_sent.clear()
        self.statuses.clear()
        self.log.clear()

    @property
    def rate_limited(self) -> int:
        return self.statuses[429]

    @property
    def ws_connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------------ lifecycle

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket/v1"

    def env(self) -> dict[str, str]:
        """The upquant settings that point the app at this fake."""
        return {"UPQUANT_UPBIT_REST_URL": self.rest_url, "UPQUANT_UPBIT_WS_URL": self.ws_url}

    async def start(self) -> Self:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/websocket/v1", self._ws_handler)
        app.router.add_get("/v1/market/all", self._market_all)
        app.router.add_get("/v1/candles/days", self._candles_days)
        app.router.add_get("/v1/candles/minutes/{unit}", self._candles_minutes)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        return self

    async def stop(self) -> None:
        await self.drop_connections(abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextmanager
    def run_in_thread(self) -> Iterator[FakeUpbit]:
        """Serve from a background thread with its own event loop (for synchronous tests).

        Call coroutine methods (push_candle, play, drop_connections, ...) through `run_sync`.
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-upbit", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                loop.close()

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run one of this fake's coroutines on its loop from another thread."""
        assert self._loop is not None, "the fake is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------------ REST

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/websocket/v1":
            return await handler(request)
        group = (
            "candle"
            if request.path.startswith("/v1/candles")
            else "market"
            if request.path.startswith("/v1/market")
            else "default"
        )
        self.requests[request.path] += 1
        delay = self.latency + (self._delays.popleft() if self._delays else 0.0)
        if delay:
            await asyncio.sleep(delay)
        now = time.monotonic()
        response: web.StreamResponse
        fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            if fault.malformed:
                response = web.Response(
                    text='[{"market": "KRW-BTC", "candle_date_ti', content_type="application/json"
                )
            else:
                response = _error(fault.status, fault.message)
            remaining = 0 if fault.status == 429 else self._remaining(group, now)
        elif now < self._blocked_until:
            left = int(self._blocked_until - now) + 1
            response, remaining = (
                _error(418, f"Blocked for {left} s for exceeding the rate limit."),
                0,
            )
        elif self.rate_limit is not None and self._remaining(group, now) <= 0:
            response, remaining = _error(429, "Too many API requests."), 0
            self._rejections.append(now)
            while self._rejections and self._rejections[0] <= now - 10.0:
                self._rejections.popleft()
            if len(self._rejections) >= self.penalty_after:
                self._blocked_until = now + self.block_seconds * 2**self._blocks
                self._blocks += 1
                self._rejections.clear()
        else:
            self._hits.setdefault(group, deque()).append(now)
            remaining = self._remaining(group, now)
            response = await handler(request)
        response.headers["Remaining-Req"] = f"group={group}; min=600; sec={max(remaining, 0)}"
        self.statuses[response.status] += 1
        self.log.append((request.path, dict(request.query), response.status))
        return response

    def _remaining(self, group: str, now: float) -> int:
        hits = self._hits.setdefault(group, deque())
        while hits and hits[0] <= now - 1.0:
            hits.popleft()
        limit = self.rate_limit if self.rate_limit is not None else 10
        return limit - len(hits)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, "Not Found")

    async def _market_all(self, request: web.Request) -> web.Response:
        details = request.query.get("is_details", "false").lower() == "true"
        out = []
        for market, (korean, english) in sorted(self.markets.items()):
            item: dict[str, Any] = {
                "market": market,
                "korean_name": korean,
                "english_name": english,
            }
            if details:
                item["market_event"] = {
                    "warning": False,
                    "caution": {
                        "PRICE_FLUCTUATIONS": False,
                        "TRADING_VOLUME_SOARING": False,
                        "DEPOSIT_AMOUNT_SOARING": False,
                        "GLOBAL_PRICE_DIFFERENCES": False,
                        "CONCENTRATION_OF_SMALL_ACCOUNTS": False,
                    },
                }
            out.append(item)
        return web.json_response(out)

    async def _candles_minutes(self, request: web.Request) -> web.Response:
        unit = request.match_info["unit"]
        if unit not in MINUTE_UNITS:
            return _error(400, INVALID_PARAM)
        return self._candles(request, unit)

    async def _candles_days(self, request: web.Request) -> web.Response:
        return self._candles(request, "D")

    def _candles(self, request: web.Request, unit: str) -> web.Response:
        query = request.query
        market = query.get("market")
        if not market:
            return _error(400, MISSING_PARAM)
        try:
            count = int(query.get("count", "1"))
            to = parse_to(query["to"]) if "to" in query else _ns(self.now or datetime.now(UTC))
        except ValueError:
            return _error(400, INVALID_PARAM)
        if not 1 <= count <= MAX_COUNT:
            return _error(400, INVALID_PARAM)
        if market not in self.markets:
            return _error(404, "Code not found")
        series = self._lookup(market, unit)
        if series is None:
            return web.json_response([])
        keys = series.sorted_keys()
        hi = int(np.searchsorted(keys, to, side="left"))
        if self.count_is_window:
            newest = (to - 1) // unit_ns(unit) * unit_ns(unit)
            lo = int(np.searchsorted(keys, newest - (count - 1) * unit_ns(unit), side="left"))
        else:
            lo = max(0, hi - count)
        out = []
        for i in range(hi - 1, lo - 1, -1):
            key = int(keys[i])
            o, h, low, c, v, val, stamp = series.rows[key]
            row: dict[str, Any] = {
                "market": market,
                "candle_date_time_utc": _fmt(key),
                "candle_date_time_kst": _fmt_kst(key),
                "opening_price": o,
                "high_price": h,
                "low_price": low,
                "trade_price": c,
                "timestamp": stamp,
                "candle_acc_trade_price": val,
                "candle_acc_trade_volume": v,
            }
            if unit == "D":
                prev = series.rows[int(keys[i - 1])][3] if i > 0 else o
                row.update(
                    prev_closing_price=prev, change_price=c - prev, change_rate=(c - prev) / prev
                )
            else:
                row["unit"] = int(unit)
            out.append(row)
        self.candles_served[(market, unit)] += len(out)
        return web.json_response(out)

    def _lookup(self, market: str, unit: str) -> _Series | None:
        series = self._series.get((market, unit))
        if series is not None or unit == "1":
            return series
        base = self._series.get((market, "1"))
        if base is None:
            return None
        derived = self._derived.get((market, unit))
        if derived is None:
            derived = _Series()
            width = unit_ns(unit)
            for key in base.sorted_keys():
                o, h, low, c, v, val, stamp = base.rows[int(key)]
                bucket = int(key) // width * width
                prev = derived.rows.get(bucket)
                if prev is None:
                    derived.rows[bucket] = (o, h, low, c, v, val, stamp)
                else:
                    derived.rows[bucket] = (
                        prev[0],
                        max(prev[1], h),
                        min(prev[2], low),
                        c,
                        prev[4] + v,
                        prev[5] + val,
                        max(prev[6], stamp),
                    )
            self._derived[(market, unit)] = derived
        return derived

    def _drop_derived(self, market: str) -> None:
        for key in [k for k in self._derived if k[0] == market]:
            del self._derived[key]

    # ------------------------------------------------------------------ WebSocket

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        if self.refuse_ws:
            return _error(503, "Service Unavailable")
        if self.ws_connect_limit is not None:
            hits = self._hits.setdefault("websocket", deque())
            while hits and hits[0] <= now - 1.0:
                hits.popleft()
            if len(hits) >= self.ws_connect_limit:
                return _error(429, "Too many connection requests.")
            hits.append(now)
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = _Conn(ws, request)
        self._conns.add(conn)
        self.ws_connects += 1
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    self.pings_received += 1
                    await ws.pong(msg.data)
                elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    text = (
                        msg.data
                        if msg.type == WSMsgType.TEXT
                        else msg.data.decode("utf-8", "replace")
                    )
                    if text.strip() == "PING":
                        await self._send(conn, {"status": "UP"})
                    elif not await self._subscribe(conn, text):
                        await ws.close()
                        break
        finally:
            self._conns.discard(conn)
        return ws

    async def _subscribe(self, conn: _Conn, text: str) -> bool:
        try:
            request = json.loads(text)
        except ValueError:
            return await self._ws_error(conn, "WRONG_FORMAT", "Request must be a JSON array.")
        if not isinstance(request, list) or not all(isinstance(part, dict) for part in request):
            return await self._ws_error(
                conn, "WRONG_FORMAT", "Request must be a JSON array of objects."
            )
        self.subscriptions.append(request)
        if not any("ticket" in part for part in request):
            return await self._ws_error(conn, "NO_TICKET", "The request has no ticket field.")
        subs: dict[str, tuple[set[str], bool, bool]] = {}
        for part in request:
            if "type" not in part:
                continue
            kind = part["type"]
            if kind not in WS_TYPES:
                return await self._ws_error(conn, "INVALID_PARAM", f"Unsupported type: {kind}")
            codes = part.get("codes")
            if not codes or not isinstance(codes, list):
                return await self._ws_error(conn, "NO_CODES", "The type field has no codes.")
            subs[kind] = (
                {str(c) for c in codes},
                bool(part.get("is_only_snapshot")),
                bool(part.get("is_only_realtime")),
            )
        if not subs:
            return await self._ws_error(conn, "NO_TYPE", "The request has no type field.")
        conn.subs = subs  # a new subscription replaces the old one
        conn.seen.clear()
        for kind, (codes, _, only_realtime) in subs.items():
            if only_realtime or not self.ws_snapshots:
                continue
            for code in sorted(codes):
                snapshot = self._snapshot(kind, code)
                if snapshot is not None:
                    await self._deliver(conn, snapshot)
        return True

    def _snapshot(self, kind: str, code: str) -> dict[str, Any] | None:
        if kind == "trade":
            return self._last_trade.get(code)
        unit = kind[7:-1]
        if unit not in MINUTE_UNITS:
            return None  # ticker, orderbook and 1 s candles: only what a test pushes
        series = self._lookup(code, unit)
        if series is None or not series.rows:
            return None
        key = int(series.sorted_keys()[-1])
        o, h, low, c, v, val, stamp = series.rows[key]
        candle = {
            "ts": pd.Timestamp(key, tz="UTC"),
            "open": o,
            "high": h,
            "low": low,
            "close": c,
            "volume": v,
            "value": val,
            "timestamp": stamp,
        }
        return candle_frame(code, candle, unit)

    async def _ws_error(self, conn: _Conn, name: str, message: str) -> bool:
        await self._send(conn, {"error": {"name": name, "message": message}})
        return False

    async def _send(self, conn: _Conn, frame: dict[str, Any]) -> None:
        try:
            await conn.ws.send_bytes(json.dumps(frame, ensure_ascii=False).encode("utf-8"))
        except (ConnectionError, RuntimeError):
            self._conns.discard(conn)

    async def _deliver(self, conn: _Conn, frame: dict[str, Any]) -> bool:
        kind, code = frame["type"], frame["code"]
        sub = conn.subs.get(kind)
        if sub is None or code not in sub[0]:
            return False
        first = (kind, code) not in conn.seen
        _, only_snapshot, only_realtime = sub
        if (only_snapshot and not first) or (
            only_realtime and first and frame.get("stream_type") == "SNAPSHOT"
        ):
            return False
        conn.seen.add((kind, code))
        out = dict(frame)
        out.setdefault("stream_type", "SNAPSHOT" if first and not only_realtime else "REALTIME")
        await self._send(conn, out)
        self.frames_sent[kind] += 1
        return True

    async def push_frame(self, frame: Mapping[str, Any]) -> int:
        """Send one candle/trade frame to every subscriber; candles also land in the REST data.

        Without `stream_type`, a connection's first frame per (type, code) is SNAPSHOT.
        Returns how many connections got it.
        """
        frame = dict(frame)
        kind, code = frame["type"], frame["code"]
        if kind.startswith("candle.") and kind[7:-1] in MINUTE_UNITS:
            unit = kind[7:-1]
            key = parse_to(frame["candle_date_time_utc"])
            series = self._series.setdefault((code, unit), _Series())
            series.upsert(
                key,
                (
                    float(frame["opening_price"]),
                    float(frame["high_price"]),
                    float(frame["low_price"]),
                    float(frame["trade_price"]),
                    float(frame["candle_acc_trade_volume"]),
                    float(frame["candle_acc_trade_price"]),
                    int(frame["timestamp"]),
                ),
            )
            self._drop_derived(code)
        elif kind == "trade":
            self._last_trade[code] = {k: v for k, v in frame.items() if k != "stream_type"}
        delivered = 0
        for conn in list(self._conns):
            delivered += await self._deliver(conn, frame)
        if self._drop_after is not None and delivered:
            left, abrupt = self._drop_after
            self._drop_after = (left - delivered, abrupt) if left > delivered else None
            if left <= delivered:
                await self.drop_connections(abrupt=abrupt)
        return delivered

    async def push_raw(self, data: bytes) -> int:
        """Send `data` as a binary frame to every subscribed connection (e.g. malformed JSON)."""
        conns = [conn for conn in self._conns if conn.subs]
        for conn in conns:
            try:
                await conn.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                self._conns.discard(conn)
        return len(conns)

    async def push_ticker(self, market: str, price: float, **fields: Any) -> int:
        """Push a `ticker` frame for `market` at `price` (extra Upbit ticker fields allowed)."""
        return await self.push_frame(ticker_frame(market, price, **fields))

    async def push_candle(
        self, market: str, candle: Mapping[str, Any] | pd.Series, *, unit: str = "1"
    ) -> int:
        """Push a canonical candle (dict or DataFrame row) as a `candle.{unit}m` frame."""
        return await self.push_frame(candle_frame(market, candle, unit))

    async def push_trade(
        self,
        market: str,
        price: float,
        volume: float,
        *,
        ask_bid: str = "BID",
        trade_ts: datetime | pd.Timestamp | None = None,
    ) -> int:
        frame = trade_frame(
            market,
            price,
            volume,
            ask_bid=ask_bid,
            trade_ts=trade_ts,
            sequential_id=next(self._sequence),
        )
        return await self.push_frame(frame)

    async def play(self, frames: Sequence[Mapping[str, Any]], interval: float = 0.0) -> int:
        """Push scripted frames in order, `interval` seconds apart; returns deliveries."""
        delivered = 0
        for i, frame in enumerate(frames):
            if i and interval:
                await asyncio.sleep(interval)
            delivered += await self.push_frame(frame)
        return delivered

    async def wait_subscribed(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until `n` connections hold a subscription (push only after this)."""
        deadline = time.monotonic() + timeout
        while sum(1 for c in self._conns if c.subs) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} WebSocket subscribers after {timeout} s")
            await asyncio.sleep(0.005)

    async def drop_connections(self, *, abrupt: bool = True) -> int:
        """Drop every WebSocket: abruptly (TCP reset, no close frame) or with close code 1001."""
        conns = list(self._conns)
        self.ws_drops += len(conns)
        for conn in conns:
            if abrupt and conn.request.transport is not None:
                conn.request.transport.abort()
            else:
                await conn.ws.close(code=1001, message=b"going away")
            self._conns.discard(conn)
        return len(conns)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"name": status, "message": message}}, status=status)
