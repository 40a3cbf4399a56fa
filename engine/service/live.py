"""Workstation operations on the live engine the server runs: start, status, threshold,
history, stop (one session per server for now; the multi-market engine is issue 12).

A session runs inside the server's event loop: `start_live` (a coroutine) opens it with
`engine.live.session.open_session` on the Workstation's store connection and runs its feed
(live, replay or demo) as a task there; the operations are sync methods the app calls on its
worker threads, so `live_start` and `live_stop` hand their coroutine to that loop
(`run_coroutine_threadsafe`) and wait for it. The loop is the server's: `serving` (the
server listens) or the app's startup records it, and `start_live` takes the running one. A
one-shot command has no loop and no server to keep a session alive: it is refused, with the
commands that do run one.

The running session is `ws.live_session` (an `engine.live.session.Session`): a TUI hosting
the server draws that engine directly. Every engine event goes out on the Workstation's
`EventHub` (`ws.events`, engine/service/events.py) as a contract dict, and so does every
change of the session's status (`live` events: opened, ended, threshold moved). When a
replay ends, the status says so (`running: false`, its mode kept). Stopping cancels the feed
and flushes what the engine buffered (signals of a replay are written in batches).

Every session runs its model operations (engine/service/modelops.py): outcomes resolved,
drift watched, the promotion gate, guards on the champion, new seats when an alias moves;
a drift event may start a retrain through this Workstation (`retrain`, when it can train).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field, field_validator, model_validator

from engine.params import THRESHOLD_MAX, THRESHOLD_MIN
from engine.service.base import StoreHolder
from engine.service.core import Conflict, Request, Response, ServiceError, operation
from engine.service.events import EventHub, engine_event
from engine.service.stored import Candle, candle_records

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    import duckdb

    from engine.live.engine import EngineEvent
    from engine.live.markets import MarketsEngine
    from engine.live.session import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
OPEN_TIMEOUT_S = 300.0  # opening a session may backfill its window from Upbit
STOP_TIMEOUT_S = 60.0
HISTORY_MAX = 10_000
MAX_MARKETS = 500  # Upbit lists ~200 KRW markets
NO_LOOP_HINT = (
    "a live session runs inside a server: start one with `upquant serve --market KRW-BTC`"
    " (then POST /api/v1/live), or run `upquant tui`"
)


@dataclass(frozen=True)
class LoopWords:
    """How the errors of `LiveOps._on_loop` name what runs on the server's loop."""

    kept: str  # "... a one-shot command cannot keep {kept}"
    operation: str  # "{operation} was called on the server's event loop"
    awaitable: str  # "await {awaitable} from a coroutine instead"
    answering: str  # "{answering} did not answer within N s"
    hint: str  # how to get a server


LIVE_WORDS = LoopWords(
    kept="a live session",
    operation="a live operation",
    awaitable="Workstation.start_live / stop_live_async",
    answering="the live session",
    hint=NO_LOOP_HINT,
)


def check_threshold(value: float) -> float:
    if not THRESHOLD_MIN <= value <= THRESHOLD_MAX:
        raise ValueError(
            f"threshold {value} is out of range: it must be within"
            f" [{THRESHOLD_MIN}, {THRESHOLD_MAX}]"
        )
    return value


class LiveStartRequest(Request):
    market: str | None = Field(
        default=None, description="Upbit market code, e.g. KRW-BTC (or give `markets`)."
    )
    markets: list[str] = Field(
        default_factory=list,
        max_length=MAX_MARKETS,
        description="A watchlist: every market decided in one pass per closed candle; an"
        " entry MARKET:UNIT (e.g. KRW-ETH:60) watches that market at its own unit.",
    )
    units: dict[str, str] = Field(
        default_factory=dict,
        description="The markets watched at another unit than `unit` (market -> unit;"
        " `markets` entries MARKET:UNIT fill it).",
    )
    all_krw: bool = Field(
        False,
        description="Watch every KRW market Upbit lists (offline: every stored series of the unit).",
    )
    unit: str = Field("1", description="Candle unit: 1, 3, 5, 10, 15, 30, 60, 240 or D.")
    threshold: float | None = Field(
        None,
        description=f"Confidence threshold, within [{THRESHOLD_MIN}, {THRESHOLD_MAX}]"
        " (default: the strategy spec's, else 0.5).",
    )
    strategy_spec: dict[str, Any] | None = Field(
        default=None,
        description="A strategy spec (engine.trading.spec; the default: the AI threshold with"
        " the SMA-cross rule when no model answers).",
    )
    offline: bool = Field(False, description="Never contact Upbit: replay stored candles.")
    replay_delay: float = Field(
        0.25, ge=0, le=60, description="Seconds between replayed candles (0: as fast as it can)."
    )
    replay_candles: int = Field(
        2000, ge=1, le=1_000_000, description="Stored candles a replay plays (after its window)."
    )

    @field_validator("market")
    @classmethod
    def _market(cls, value: str | None) -> str | None:
        from engine.upbit.markets import check_market

        return None if value is None else check_market(value)

    @model_validator(mode="before")
    @classmethod
    def _split_units(cls, data: Any) -> Any:
        """`markets` entries MARKET:UNIT: the market in `markets`, its unit in `units`."""
        if isinstance(data, dict) and isinstance(data.get("markets"), list):
            from engine.upbit.markets import split_watch

            unit = str(data.get("unit") or "1")
            entries = [str(entry) for entry in data["markets"]]
            markets, units = split_watch(entries, unit)
            data = {**data, "markets": markets, "units": {**(data.get("units") or {}), **units}}
        return data

    @field_validator("markets")
    @classmethod
    def _markets(cls, value: list[str]) -> list[str]:
        from engine.upbit.markets import check_market

        return list(dict.fromkeys(check_market(m) for m in value))

    @field_validator("units")
    @classmethod
    def _units(cls, value: dict[str, str]) -> dict[str, str]:
        from engine.upbit.markets import check_market, check_unit

        return {check_market(m): check_unit(u) for m, u in value.items()}

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        from engine.upbit.markets import check_unit

        return check_unit(value)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float | None) -> float | None:
        return None if value is None else check_threshold(value)

    @field_validator("strategy_spec")
    @classmethod
    def _spec(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from engine.trading.spec import StrategySpec

            StrategySpec.from_dict(value)  # SpecError (a ValueError) names the key and the fix
        return value

    @model_validator(mode="after")
    def _some_market(self) -> LiveStartRequest:
        if self.market is None and not self.markets and not self.all_krw:
            raise ValueError("name the markets: market, markets or all_krw")
        if self.market is not None and self.market not in self.markets:
            self.markets = [self.market, *self.markets]
        if not self.all_krw and (stray := set(self.units) - set(self.markets)):
            raise ValueError(
                f"units names {', '.join(sorted(stray))}, not in the watchlist: add it to markets"
            )
        return self


class LiveStatusRequest(Request):
    pass


class LiveStopRequest(Request):
    pass


class LiveThresholdRequest(Request):
    threshold: float = Field(
        description=f"Confidence threshold, within [{THRESHOLD_MIN}, {THRESHOLD_MAX}]."
    )
    market: str | None = Field(
        default=None, description="One watched market's (every market's when omitted)."
    )

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        return check_threshold(value)


class LiveHistoryRequest(Request):
    last: int = Field(500, ge=1, le=HISTORY_MAX, description="The newest N candles of the window.")
    market: str | None = Field(
        default=None, description="A watched market (the session's first when omitted)."
    )


class WatchedMarket(Response):
    """One market of the session's watchlist: its newest candle and decision, its position."""

    market: str
    unit: str
    last_ts: datetime | None = Field(description="The newest closed candle decided on.")
    last_price: float | None = Field(description="Its close.")
    action: str | None = None
    confidence: float | None = None
    source: str | None = Field(default=None, description="The model's ref, or the rule's name.")
    reason: str | None = None
    model: str | None = Field(default=None, description="The champion seated (None: the rule).")
    threshold: float
    position: float | None = Field(default=None, description="Units held on paper.")
    position_value: float | None = Field(default=None, description="KRW at the last close.")
    unrealised_pnl: float | None = None


class PaperSummary(Response):
    """The session's paper book: cash and equity in KRW."""

    account: str | None = Field(description="The stored account (None: a demo's, in memory).")
    cash: float
    equity: float
    realised_pnl: float
    unrealised_pnl: float


class LiveStatus(Response):
    """The server's live session (`running: false` when none runs; after one ended, its
    market, mode and counts stay, with why it ended)."""

    running: bool
    market: str | None = None
    unit: str | None = None
    mode: str | None = Field(default=None, description="live, replay or demo.")
    banner: str | None = Field(
        default=None, description="Where the candles come from, and the model."
    )
    threshold: float | None = None
    model_ref: str | None = Field(
        default=None, description="The champion deciding; None: the rule."
    )
    shadows: list[str] = Field(
        default_factory=list,
        description="The challengers and shadows predicting on the same candles (`ref role`).",
    )
    rule: str | None = Field(
        default=None, description="The rule strategy that decides without a model."
    )
    no_model_reason: str | None = None
    started: datetime | None = None
    candles_seen: int = Field(default=0, description="Closed candles the engine decided on.")
    signals: int = Field(default=0, description="Signals it emitted.")
    ended: str | None = Field(
        default=None, description="Why the session ended (None while it runs)."
    )
    strategy: str | None = Field(
        default=None, description="The strategy spec deciding (its name and hash)."
    )
    markets: list[WatchedMarket] = Field(
        default_factory=list, description="Every watched market (one for a single market)."
    )
    paper: PaperSummary | None = None


class LiveCandle(Candle):
    market: str
    unit: str


class LiveHistory(Response):
    """The newest candles of the engine's window (empty when no session runs)."""

    market: str | None
    unit: str | None
    candles: list[LiveCandle]


def _market_of(event: EngineEvent, default: str) -> str:
    """The market an engine event is about (a status is the session's: its first market)."""
    from engine.live.engine import CandleEvent, SignalEvent

    if isinstance(event, CandleEvent):
        return str(event.candle.get("market") or default)
    if isinstance(event, SignalEvent):
        return event.signal.market
    return default


def _paper(markets: MarketsEngine | None) -> PaperSummary | None:
    broker = None if markets is None else markets.broker
    if broker is None:
        return None
    book = broker.book()
    return PaperSummary(
        account=markets.account if markets is not None else None,
        cash=book.cash,
        equity=book.equity,
        realised_pnl=book.realised_pnl,
        unrealised_pnl=book.unrealised_pnl,
    )


@dataclass
class _Live:
    """A session the Workstation runs, and what it counted."""

    session: Session
    started: datetime
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[None] | None = None
    running: bool = True
    candles_seen: int = 0
    signals: int = 0
    ended: str | None = None


class LiveOps(StoreHolder):
    live_session: Session | None = None  # the running (or last) session, for a hosting TUI
    _live: _Live | None = None
    _hub: EventHub | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _starting = False
    _live_lock = threading.Lock()

    # --- the hub and the loop --------------------------------------------------------------
    @property
    def events(self) -> EventHub:
        """This Workstation's events (created on first use)."""
        with self._live_lock:
            if self._hub is None:
                self._hub = EventHub()
            return self._hub

    def publish_event(self, event: dict[str, Any]) -> None:
        """Publish a contract dict on the hub (from any thread)."""
        self.events.publish(event)

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run sessions (and deliver events) on `loop`, the server's."""
        self._loop = loop
        self.events.attach(loop)

    def serving(self, url: str) -> None:
        """The server listens (see SystemOps.serving): its loop is the live engine's."""
        with contextlib.suppress(RuntimeError):
            self.attach_loop(asyncio.get_running_loop())
        super().serving(url)  # type: ignore[misc]

    def _on_loop(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        timeout: float,
        words: LoopWords | None = None,
    ) -> T:
        """Run the coroutine `make()` on the server's loop from a worker thread; its answer.
        `words` name what runs there in the errors (the live session by default)."""
        words = words or LIVE_WORDS
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            raise ServiceError(
                f"no server runs this Workstation: a one-shot command cannot keep {words.kept}",
                words.hint,
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise ServiceError(
                f"{words.operation} was called on the server's event loop (it would wait on"
                " itself)",
                f"await {words.awaitable} from a coroutine instead",
            )
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise ServiceError(
                f"{words.answering} did not answer within {timeout:.0f}s", "see the server log"
            ) from None

    # --- status ------------------------------------------------------------------------------
    def _status(self) -> LiveStatus:
        live = self._live
        if live is None:
            return LiveStatus(running=False)
        engine = live.session.engine
        markets = live.session.markets
        strategy = engine.strategy
        return LiveStatus(
            strategy=None if strategy is None else f"{strategy.name} {strategy.hash[:12]}",
            markets=[]
            if markets is None
            else [WatchedMarket(**vars(state)) for state in markets.states()],
            paper=_paper(markets),
            running=live.running,
            market=engine.market,
            unit=engine.unit,
            mode=live.session.mode,
            banner=live.session.banner,
            threshold=engine.threshold,
            model_ref=engine.model.record.ref if engine.model is not None else None,
            shadows=[f"{seat.model.record.ref} {seat.role}" for seat in engine.shadows],
            rule=engine.rule_name,
            no_model_reason=None if engine.model is not None else engine.no_model_reason,
            started=live.started,
            candles_seen=live.candles_seen,
            signals=live.signals,
            ended=live.ended,
        )

    def _announce(self) -> LiveStatus:
        """Publish the session's status on the hub (a `live` event) and return it."""
        status = self._status()
        self.events.publish({"type": "live", "live": status.model_dump(mode="json")})
        return status

    # --- running a session (on the loop) ------------------------------------------------------
    async def start_live(self, request: LiveStartRequest) -> LiveStatus:
        """Open a session in the running loop and start its feed; Conflict if one runs."""
        from engine.live.session import open_session

        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self.attach_loop(loop)
        with self._live_lock:
            current = self._live
            if self._starting or (current is not None and current.running):
                what = "one being opened"
                if current is not None and current.running:
                    engine = current.session.engine
                    what = f"{engine.market} {engine.unit}m ({current.session.mode})"
                raise Conflict(
                    f"a live session already runs on this server: {what}",
                    "one session per server for now: stop it first (DELETE /api/v1/live,"
                    " or the live_stop operation)",
                )
            self._starting = True
        try:
            markets = await self._watchlist(request)
            spec = None
            if request.strategy_spec is not None:
                from engine.trading.spec import StrategySpec

                spec = StrategySpec.from_dict(request.strategy_spec)
            session = await open_session(
                self.con(),
                markets,
                request.unit,
                units=request.units,
                threshold=request.threshold,
                offline=request.offline,
                replay_delay=request.replay_delay,
                replay_candles=request.replay_candles,
                inference=getattr(self, "inference", None),
                strategy=spec,
            )
            from engine.service.modelops import manage

            await manage(session, retrain=self._retrain_words)
            live = _Live(session, datetime.now(UTC), loop)
            if session.markets is not None:
                session.markets.subscribe(self._listener(live))
            else:
                session.engine.subscribe(self._listener(live))
            self._live, self.live_session = live, session
            live.task = loop.create_task(self._drive(live), name="upquant-live")
        finally:
            self._starting = False
        log.info("live session opened: %s", session.banner)
        return self._announce()

    async def _watchlist(self, request: LiveStartRequest) -> list[str]:
        """The markets `request` names (see `watchlist_of`)."""
        if not request.all_krw:
            return list(request.markets)
        if set(request.units) - set(request.markets):
            # all_krw with units for markets it did not name: they are watched too
            request = request.model_copy(update={"markets": [*request.markets, *request.units]})
        return await self.watchlist_of(
            self.con(), request.markets, request.unit, offline=request.offline
        )

    @staticmethod
    async def watchlist_of(
        con: duckdb.DuckDBPyConnection, markets: list[str], unit: str, *, offline: bool
    ) -> list[str]:
        """`markets` and every KRW market Upbit lists, or offline (or unreachable) every
        stored KRW series of `unit`; ServiceError when there is none."""
        listed: list[str] = []
        if not offline:
            from engine.data.backfill import krw_markets
            from engine.upbit.errors import UpbitError

            try:
                listed = await asyncio.wait_for(krw_markets(), 10.0)
            except (TimeoutError, UpbitError, OSError) as exc:
                log.warning("the KRW market list is unreachable (%s): stored series instead", exc)
        if not listed:
            rows = con.execute(
                "SELECT DISTINCT market FROM candles WHERE unit = ? AND market LIKE 'KRW-%'"
                " ORDER BY market",
                [unit],
            ).fetchall()
            listed = [market for (market,) in rows]
        if not listed and not markets:
            raise ServiceError(
                f"no KRW markets to watch: Upbit's list is unreachable and no unit {unit}"
                " series is stored",
                "fetch some first (`upquant data fetch KRW-BTC`) or name the markets",
            )
        return list(dict.fromkeys([*markets, *listed]))[:MAX_MARKETS]

    def _retrain_words(self, market: str, unit: str, by: str, reason: str) -> str:
        """Start a retrain of market/unit's champion for the session's model operations
        (a drift event); what happened, in words."""
        retrain = getattr(self, "retrain", None)
        if retrain is None:
            return "no retrain: this Workstation cannot train"
        answer = retrain(market, unit, by=by, reason=reason)
        run = getattr(answer, "run", None)
        if hasattr(answer, "status_url"):
            return f"retrain started: run {run} ({answer.status_url})"
        return f"no retrain: {getattr(answer, 'message', answer)}"

    def _listener(self, live: _Live) -> Callable[[EngineEvent], None]:
        from engine.live.engine import CandleEvent, SignalEvent

        engine = live.session.engine
        hub = self.events

        def listen(event: EngineEvent) -> None:
            if isinstance(event, CandleEvent) and event.closed:
                live.candles_seen += 1
            elif isinstance(event, SignalEvent):
                live.signals += 1
            if hub.subscribers:  # nobody listening: no frame to build
                market = _market_of(event, engine.market)
                lanes = live.session.markets.lanes if live.session.markets is not None else {}
                lane = lanes.get(market, engine)
                hub.publish(engine_event(event, market, lane.unit))

        return listen

    async def _drive(self, live: _Live) -> None:
        """Run the session's feed; when it ends (a replay played out, a failure, a stop)
        flush the engine and say so."""
        session = live.session
        reason = "stopped"
        try:
            await session.runner
            reason = f"the {session.mode} ended: {live.candles_seen} candles played"
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        except Exception as exc:
            reason = f"failed: {type(exc).__name__}: {exc}"
            log.exception("the live session failed")
            self.events.publish(
                {
                    "type": "status",
                    "text": f"live session {reason}",
                    "level": "error",
                    "connected": None,
                }
            )
        finally:
            try:
                session.engine.flush()
            except Exception:
                log.exception("flushing the live engine failed")
                reason += " (its buffered signals could not be written: see the server log)"
            live.running, live.ended = False, reason
            self._announce()

    async def stop_live_async(self) -> LiveStatus:
        """Stop the session (its feed cancelled, what it buffered written); its status."""
        live = self._live
        if live is not None and live.task is not None and not live.task.done():
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
        if live is not None:
            live.session.engine.flush()
        return self._status()

    def stop_live(self) -> None:
        """The server stops: the session stopped and flushed (from any thread, also after
        the loop has ended)."""
        live = self._live
        if live is None:
            return
        task = live.task
        if task is not None and not task.done() and live.loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not live.loop:
                asyncio.run_coroutine_threadsafe(self.stop_live_async(), live.loop).result(
                    STOP_TIMEOUT_S
                )
                return
            task.cancel()
        live.running = False
        live.ended = live.ended or "stopped"
        live.session.engine.flush()

    # --- the operations ------------------------------------------------------------------------
    @operation("write")
    def live_start(self, request: LiveStartRequest) -> LiveStatus:
        """Start the server's live session (live from Upbit, else a replay of stored candles,
        else a demo market); 409 when one runs."""
        return self._on_loop(lambda: self.start_live(request), OPEN_TIMEOUT_S)

    @operation("read")
    def live_status(self, request: LiveStatusRequest) -> LiveStatus:
        """The server's live session: market, mode, threshold, model, counts (running false
        when none runs)."""
        return self._status()

    @operation("write")
    def live_stop(self, request: LiveStopRequest) -> LiveStatus:
        """Stop the live session; its buffered candles and signals are written first."""
        if self._live is None or not self._live.running:
            return self._status()
        return self._on_loop(self.stop_live_async, STOP_TIMEOUT_S)

    @operation("write")
    def live_threshold(self, request: LiveThresholdRequest) -> LiveStatus:
        """Move the session's confidence threshold (read on its next closed candle)."""
        live = self._live
        if live is None or not live.running:
            raise Conflict("no live session runs", "start one: POST /api/v1/live")
        lanes = self._lanes(live, request.market)
        for lane in lanes:
            lane.set_threshold(request.threshold)
        return self._announce()

    @staticmethod
    def _lanes(live: _Live, market: str | None) -> list[Any]:
        """The lanes of the session `market` names (every lane when None); NotFound when it
        is not watched."""
        markets = live.session.markets
        lanes = (
            dict(markets.lanes)
            if markets is not None
            else {live.session.engine.market: live.session.engine}
        )
        if market is None:
            return list(lanes.values())
        if market not in lanes:
            from engine.service.core import NotFound

            raise NotFound(
                f"{market} is not watched by the live session",
                f"watched: {', '.join(list(lanes)[:10])}{' ...' if len(lanes) > 10 else ''}",
            )
        return [lanes[market]]

    @operation("read")
    def live_history(self, request: LiveHistoryRequest) -> LiveHistory:
        """The newest candles of the live engine's window (what its features read)."""
        live = self._live
        if live is None:
            return LiveHistory(market=None, unit=None, candles=[])
        engine = self._lanes(live, request.market)[0]
        history = engine.history.tail(request.last)  # replaced whole on each candle, never edited
        candles = [
            LiveCandle(market=engine.market, unit=engine.unit, **record)
            for record in candle_records(history)
        ]
        return LiveHistory(market=engine.market, unit=engine.unit, candles=candles)
