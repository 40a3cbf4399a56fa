"""The live engine over a watchlist: many markets, each at its own unit, decided in passes.

Each market is a lane (`engine.live.engine.LiveEngine`: its window, seated models, threshold,
strategy state). When candles close (the feed closes each market's candle by the one rule in
engine/data/feed.py), `submit` queues them and one pass (`engine.live.engine.decide_pass`)
decides every market whose candle closed since the last pass began: their newest feature
rows, ONE inference call per model over all its markets' rows, the strategy per market, the
signals in one write. Candles that close while a pass runs wait for the next one, so a slow
pass never stalls the feed and never decides a market twice in one pass (a market with two
candles waiting gets them in two passes, in order).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import pandas as pd

from engine.live.engine import (
    EngineEvent,
    Inference,
    LiveEngine,
    StatusEvent,
    _write_predictions,
    _write_signals,
    decide_pass,
)
from engine.live.inference import LoadedModel
from engine.live.seats import Seat
from engine.trading.paper import Fill, PaperBroker
from engine.trading.spec import StrategySpec
from engine.trading.strategies import Signal, SmaCross


@dataclass(frozen=True)
class MarketState:
    """What the watchlist shows of one market: its newest candle and decision."""

    market: str
    unit: str
    last_ts: pd.Timestamp | None
    last_price: float | None
    action: str | None
    confidence: float | None
    source: str | None  # the model's ref, or the rule's name
    reason: str | None
    model: str | None  # the champion seated (None: the rule decides)
    threshold: float
    position: float | None = None  # units held on paper (None: no paper broker)
    position_value: float | None = None  # KRW, marked to the last close
    unrealised_pnl: float | None = None


class MarketsEngine:
    """Lanes sharing a store connection, an inference service and passes; `unit` is the
    lanes' unit unless `add_market` gives one its own."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        unit: str,
        *,
        mode: str = "live",
        inference: Inference | None = None,
        inference_timeout: float = 1.0,
        persist_signals: bool = True,
        signal_batch: int = 1,
        rule: SmaCross | None = None,
        strategy: StrategySpec | None = None,
        broker: PaperBroker | None = None,
        account: str | None = None,
    ) -> None:
        self.con, self.unit, self.mode = con, unit, mode
        self.strategy = strategy  # every lane's (None: the default with the lane's threshold)
        self.broker = broker  # the paper broker the signals trade on (None: no paper trading)
        self.account = account  # the book's account in the store (None: kept in memory)
        self.book_every = 1  # passes between saves of the book (live: every pass)
        self.fills: list[Fill] | None = None  # a list: every paper fill is kept there too
        self._unsaved = 0
        self.inference = inference
        self.inference_timeout = inference_timeout
        self.persist_signals = persist_signals
        self.signal_batch = signal_batch
        self.rule = rule or SmaCross()
        self.lanes: dict[str, LiveEngine] = {}
        self.listeners: list[Callable[[EngineEvent], None]] = []
        self.passes = 0  # passes run
        self._queued: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of_lane(cls, lane: LiveEngine) -> MarketsEngine:
        """An engine whose one lane is `lane`, built on its own (its settings kept)."""
        engine = cls(lane.con, lane.unit, mode=lane.mode, inference=lane.inference)
        engine.lanes[lane.market] = lane
        return engine

    # --- lanes -------------------------------------------------------------------------------
    def add_market(
        self,
        market: str,
        model: LoadedModel | None = None,
        *,
        threshold: float | None = None,
        shadows: Iterable[Seat] = (),
        no_model_reason: str = "no model",
        unit: str | None = None,
    ) -> LiveEngine:
        """Watch `market` at `unit` (the engine's when None): a lane with its champion (None:
        the rule decides, saying `no_model_reason`), shadows and threshold (the strategy's
        when None)."""
        if market in self.lanes:
            raise ValueError(f"{market} is already watched")
        strategy = self.strategy
        if strategy is not None and threshold is not None:
            strategy = replace(strategy, threshold=threshold)
        if threshold is None:
            threshold = strategy.threshold if strategy is not None else 0.5
        lane = LiveEngine(
            self.con,
            market,
            unit or self.unit,
            model=model,
            threshold=threshold,
            rule=self.rule,
            mode=self.mode,
            persist_signals=self.persist_signals,
            no_model_reason=no_model_reason,
            inference_timeout=self.inference_timeout,
            signal_batch=self.signal_batch,
            shadows=list(shadows),
            inference=self.inference,
            strategy=strategy,
        )
        for listener in self.listeners:
            lane.subscribe(listener)
        self.lanes[market] = lane
        return lane

    def prime(self, market: str, candles: pd.DataFrame | None = None) -> None:
        self.lanes[market].prime(candles)

    def subscribe(self, listener: Callable[[EngineEvent], None]) -> Callable[[], None]:
        """Add a listener of every lane's events (and of lanes added later)."""
        self.listeners.append(listener)
        for lane in self.lanes.values():
            lane.subscribe(listener)

        def remove() -> None:
            self.listeners.remove(listener)
            for lane in self.lanes.values():
                if listener in lane.listeners:
                    lane.listeners.remove(listener)

        return remove

    def publish(self, event: EngineEvent) -> None:
        """Tell every listener of any lane (and the engine's own) once: a status of the feed
        all markets share."""
        seen: dict[int, Callable[[EngineEvent], None]] = {}
        for listener in [
            *self.listeners,
            *(l for lane in self.lanes.values() for l in lane.listeners),
        ]:
            seen.setdefault(id(listener), listener)
        for listener in seen.values():
            listener(event)

    @property
    def units(self) -> dict[str, str]:
        """Each watched market's unit."""
        return {market: lane.unit for market, lane in self.lanes.items()}

    @property
    def window(self) -> int:
        """The longest window of any lane (what a backfill must bring)."""
        return max((lane.window for lane in self.lanes.values()), default=0)

    # --- passes ------------------------------------------------------------------------------
    async def on_closed_many(self, candles: Iterable[dict[str, Any]]) -> list[Signal]:
        """Decide the closed `candles` (of watched markets; others are ignored) in as few
        passes as the markets allow: one candle per market per pass, in order."""
        rounds: list[list[tuple[LiveEngine, dict[str, Any]]]] = []
        depth: dict[str, int] = {}
        for candle in candles:
            lane = self.lanes.get(candle["market"])
            if lane is None:
                continue
            at = depth.get(lane.market, 0)
            depth[lane.market] = at + 1
            if at == len(rounds):
                rounds.append([])
            rounds[at].append((lane, candle))
        signals: list[Signal] = []
        for items in rounds:
            self.passes += 1
            decided = await decide_pass(items)
            if self.broker is not None and decided:
                self._trade(items, decided)
            signals.extend(decided)
        return signals

    def _trade(self, items: list[tuple[LiveEngine, dict[str, Any]]], signals: list[Signal]) -> None:
        """The paper broker after a pass: each decided market's candle fills what was
        ordered at the previous close (at this open) and marks the position (at this
        close), then this close's signal orders for the next open; the book saved."""
        assert self.broker is not None
        candles = {lane.market: candle for lane, candle in items}
        for signal in signals:
            candle = candles[signal.market]
            lane = self.lanes[signal.market]
            filled = self.broker.on_candle(
                signal.market, signal.ts, float(candle["open"]), float(candle["close"])
            )
            if self.fills is not None:
                self.fills.extend(filled)
            cap = lane.strategy.max_position if lane.strategy is not None else None
            self.broker.order(signal.market, signal.ts, signal.action, cap)
        self._unsaved += 1
        if self._unsaved >= self.book_every:
            self.save_book()

    def save_book(self) -> None:
        """Store the paper book's changes (when it has an account)."""
        if self.broker is not None and self.account is not None and self._unsaved:
            from engine.trading.paper_book import save_book

            save_book(self.con, self.account, self.broker)
        self._unsaved = 0

    def submit(self, candle: dict[str, Any]) -> None:
        """The feed's `on_closed` (sync): queue the candle for the next pass. Candles
        submitted before that pass starts are decided together."""
        self._queued.append(candle)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="upquant-pass")

    async def _run(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await self.on_closed_many(batch)
            except Exception as exc:  # noqa: BLE001 - said, and the next candles still pass
                # (a failed signal write keeps its signals buffered: the next write has them)
                self.publish(StatusEvent(f"a pass failed: {type(exc).__name__}: {exc}", "error"))

    @property
    def busy(self) -> bool:
        """Candles are queued or a pass runs (the feed's periodic write waits meanwhile)."""
        return bool(self._queued) or (self._task is not None and not self._task.done())

    async def drain(self) -> None:
        """Wait until every submitted candle is decided."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def flush(self) -> None:
        """Write every lane's buffered signals and predictions (one statement each)."""
        lanes = list(self.lanes.values())
        if lanes:
            _write_signals(lanes)
            _write_predictions(lanes)
        self.save_book()

    # --- what the faces show -----------------------------------------------------------------
    def _position(self, market: str) -> dict[str, float | None]:
        if self.broker is None:
            return {}
        held = self.broker.positions.get(market)
        if held is None:
            return {"position": 0.0, "position_value": 0.0, "unrealised_pnl": 0.0}
        return {
            "position": held.units,
            "position_value": held.value,
            "unrealised_pnl": held.unrealised_pnl,
        }

    def states(self) -> list[MarketState]:
        out = []
        for market, lane in self.lanes.items():
            last = lane.signals[-1] if lane.signals else None
            price = float(lane.buffer.array("close")[-1]) if len(lane.buffer) else None
            out.append(
                MarketState(
                    market=market,
                    unit=lane.unit,
                    last_ts=lane.buffer.last_ts,
                    last_price=price,
                    action=last.action if last else None,
                    confidence=last.confidence if last else None,
                    source=last.source if last else None,
                    reason=last.reason if last else None,
                    model=lane.model.record.ref if lane.model is not None else None,
                    threshold=lane.threshold,
                    **self._position(market),
                )
            )
        return out
