"""The live engine: closed candles in, features (same code as training), prediction, signal out.

Sources (engine/live/sources.py) hand the engine closed candles only: a replay or demo plays
stored candles, each one closed; live, the feed (engine/data/feed.py) is the one rule that
closes a candle (the next bucket's frame, or the clock CLOSE_GRACE_S after its bucket ends)
and publishes the forming candle's updates. On each closed candle the engine predicts with
the champion, applies the confidence threshold, and falls back to the rule strategy whenever
there is no model or it fails. Every signal is stored and published.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import InferenceError, LoadedModel, predict_one
from engine.params import THRESHOLD_MAX, THRESHOLD_MIN
from engine.research.features import DEFAULT_SPEC, compute_features, compute_latest
from engine.trading.strategies import Signal, SmaCross, threshold_action
from store.candles import CANDLE_COLUMNS, load_candles
from store.signals import insert_signals


@dataclass(frozen=True)
class CandleEvent:
    candle: dict[str, Any]
    closed: bool


@dataclass(frozen=True)
class SignalEvent:
    signal: Signal
    probs: np.ndarray | None


@dataclass(frozen=True)
class StatusEvent:
    text: str
    level: str = "info"  # info, warning, error
    connected: bool | None = None  # the live connection's state, when the status is about it


EngineEvent = CandleEvent | SignalEvent | StatusEvent

# The step of one key press on the confidence threshold (its range lives with the checks).
THRESHOLD_STEP = 0.05


@dataclass
class LiveEngine:
    con: duckdb.DuckDBPyConnection
    market: str
    unit: str
    model: LoadedModel | None = None
    threshold: float = 0.5
    rule: SmaCross = field(default_factory=SmaCross)
    mode: str = "live"  # live, replay or demo: recorded with each signal
    persist_signals: bool = True
    no_model_reason: str = "no model"
    inference_timeout: float = 1.0
    signal_batch: int = 1  # live: every signal is written at once; replays batch them
    keep_signals: int = 10_000

    def __post_init__(self) -> None:
        self.spec = self.model.feature_spec if self.model else DEFAULT_SPEC
        needed = self.model.history_needed if self.model else self.spec.window()
        self.window = max(needed, self.rule.slow + 1)
        self.history = pd.DataFrame(columns=CANDLE_COLUMNS)
        self.listeners: list[Callable[[EngineEvent], None]] = []
        self._pending_signals: list[Signal] = []
        self.signals: deque[Signal] = deque(maxlen=self.keep_signals)
        self.set_threshold(self.threshold)

    def set_threshold(self, value: float) -> float:
        """Clamp to [THRESHOLD_MIN, THRESHOLD_MAX]; read on the next closed candle."""
        self.threshold = round(min(THRESHOLD_MAX, max(THRESHOLD_MIN, value)), 2)
        return self.threshold

    def subscribe(self, listener: Callable[[EngineEvent], None]) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def publish(self, event: EngineEvent) -> None:
        for listener in self.listeners:
            listener(event)

    def prime(self, candles: pd.DataFrame | None = None) -> None:
        """Load the trailing window before the first live candle (from the store by default)."""
        if candles is None:
            candles = load_candles(self.con, self.market, self.unit, last=self.window)
        self.history = candles[CANDLE_COLUMNS].tail(self.window).reset_index(drop=True)

    async def on_closed(self, candle: dict[str, Any]) -> Signal | None:
        """One closed candle: store it, compute features, predict, decide, log.

        A candle older than the window's newest is too late to decide on: None.
        """
        if len(self.history) and candle["ts"] < self.history["ts"].iloc[-1]:
            return None
        self._append(candle)
        self.publish(CandleEvent(candle, closed=True))
        signal, probs = await self._decide(candle["ts"])
        self.signals.append(signal)
        if self.persist_signals:
            self._pending_signals.append(signal)
            if len(self._pending_signals) >= self.signal_batch:
                self._flush_signals()
        self.publish(SignalEvent(signal, probs))
        return signal

    def flush(self) -> None:
        """Write buffered signals to the store, one batch. Candles are the feed's to store
        (live) or are stored already (replay, demo): the engine never writes them."""
        self._flush_signals()

    def _append(self, candle: dict[str, Any]) -> None:
        row = {col: candle.get(col) for col in CANDLE_COLUMNS}
        row["market"], row["unit"] = self.market, self.unit
        history = self.history
        if len(history) and candle["ts"] == history["ts"].iloc[-1]:
            # the window already holds this bucket (REST stored it before the socket closed
            # it): the socket's final values replace it, never a second row of the same ts
            history = history.iloc[:-1]
        self.history = pd.concat(
            [history, pd.DataFrame([row])] if len(history) else [pd.DataFrame([row])],
            ignore_index=True,
        ).tail(self.window)

    async def _decide(self, ts: pd.Timestamp) -> tuple[Signal, np.ndarray | None]:
        closes = self.history["close"].to_numpy(dtype=np.float64)
        if self.model is not None:
            try:
                # features of a sequence model's whole window take milliseconds: off the loop
                rows = await asyncio.to_thread(self._feature_rows)
                probs = await predict_one(self.model, rows, self.inference_timeout)
                action, confidence, reason = threshold_action(probs, self.threshold)
                return Signal(
                    ts,
                    self.market,
                    action,
                    confidence,
                    self.model.record.ref,
                    reason,
                    self.model.record.id,
                ), probs
            except InferenceError as exc:
                fallback = f"fallback: {exc}"
            except Exception as exc:  # noqa: BLE001 - any model-side failure: the rule decides
                fallback = f"fallback: model failed: {type(exc).__name__}: {exc}"
        else:
            fallback = f"fallback: {self.no_model_reason}"
        action, reason = self.rule.decide(closes)
        return Signal(
            ts,
            self.market,
            action,
            1.0 if action != "hold" else 0.0,
            self.rule.name,
            f"{reason} ({fallback})",
        ), None

    def _feature_rows(self) -> np.ndarray:
        """The feature rows the model reads for the newest candle (one row for tabular
        models, its trailing window for sequence models), computed by the training code."""
        assert self.model is not None
        if len(self.history) <= self.spec.warmup():
            raise InferenceError(
                f"{len(self.history)} candles in the window, features need {self.spec.warmup() + 1}"
            )
        try:
            if self.model.context == 0:  # the fast path: only the newest row
                latest = compute_latest(self.history, self.spec, unit=self.unit)
                features = latest.to_frame().T
            else:
                features = compute_features(self.history, self.spec, unit=self.unit)
        except Exception as exc:
            raise InferenceError(f"feature computation failed: {exc}") from exc
        return self.model.latest_rows(features)

    def _flush_signals(self) -> None:
        if self._pending_signals:
            frame = pd.DataFrame([vars(signal) for signal in self._pending_signals])
            frame["mode"] = self.mode
            frame["unit"] = self.unit
            insert_signals(self.con, frame)
        self._pending_signals.clear()
