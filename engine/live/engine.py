"""The live engine: closed candles in, features (same code as training), prediction, signal out.

Sources (engine/live/sources.py) hand the engine closed candles only: a replay or demo plays
stored candles, each one closed; live, the feed (engine/data/feed.py) is the one rule that
closes a candle (the next bucket's frame, or the clock CLOSE_GRACE_S after its bucket ends)
and publishes the forming candle's updates. On each closed candle the engine predicts with
the champion, applies the confidence threshold, and falls back to the rule strategy whenever
there is no model or it fails, or a guard stops it (an expired or out-of-distribution
champion: the session's model operations decide that, engine/service/modelops.py). Every
signal is stored and published.

Shadow evaluation: every challenger and shadow (`seats.Seat`) predicts on the same closed
candle with the same features (computed once per feature spec), after the signal is out, so
they never delay it. Every model's prediction is appended to the live prediction log
(`predictions`, source 'live') with its latency and, for the champion, whether it was acted
on; its outcome is resolved later, once the label horizon has passed. New seats (a promotion,
an alias moved) take effect on the next closed candle, never in the middle of a decision.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import InferenceError, LoadedModel, predict_one, validate_probs
from engine.live.seats import Seat, Seats
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

# A guard: why the champion must not decide on this candle (None: it may), from the model,
# its feature rows and the candle's ts. Set by the session's model operations.
type Guard = Callable[[LoadedModel, np.ndarray, pd.Timestamp], str | None]


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
    shadows: list[Seat] = field(default_factory=list)  # challengers and shadows
    guard: Guard | None = None
    log_predictions: bool = True  # append every model's prediction to the live log

    def __post_init__(self) -> None:
        self.spec = self.model.feature_spec if self.model else DEFAULT_SPEC
        self.window = self._window()
        self.history = pd.DataFrame(columns=CANDLE_COLUMNS)
        self.listeners: list[Callable[[EngineEvent], None]] = []
        # called after each write of the buffered signals and predictions (from the loop)
        self.flushed: list[Callable[[], None]] = []
        self._pending_signals: list[Signal] = []
        self._pending_predictions: list[dict[str, Any]] = []
        self._unlogged = 0  # candles decided since the prediction log was last written
        self._next_seats: Seats | None = None
        self.signals: deque[Signal] = deque(maxlen=self.keep_signals)
        self.set_threshold(self.threshold)

    def _window(self) -> int:
        """Candles the decision reads: the most any seated model (or the default features)
        needs, and the rule's."""
        models = [s.model for s in self.shadows] + ([self.model] if self.model else [])
        needed = [m.history_needed for m in models] or [self.spec.window()]
        return max(*needed, self.rule.slow + 1)

    def seat(self, seats: Seats) -> None:
        """Seat a new champion and shadows from the next closed candle on (never in the
        middle of a decision)."""
        self._next_seats = seats

    def _take_seats(self) -> None:
        seats, self._next_seats = self._next_seats, None
        if seats is None:
            return
        self.model, self.shadows = seats.champion, list(seats.shadows)
        if seats.champion is None:
            self.no_model_reason = seats.champion_reason
        self.spec = self.model.feature_spec if self.model else DEFAULT_SPEC
        window = self._window()
        if window > self.window and len(self.history) and self.mode != "demo":
            # a model that reads further back: its window from the store, up to this candle
            last = self.history["ts"].iloc[-1]
            stored = load_candles(  # `end` is exclusive: up to and including `last`
                self.con,
                self.market,
                self.unit,
                end=last + pd.Timedelta(microseconds=1),
                last=window,
            )
            if len(stored) > len(self.history):
                self.history = stored[CANDLE_COLUMNS].reset_index(drop=True)
        self.window = window
        self.publish(
            StatusEvent(
                f"models seated: {seats.champion_reason}"
                + (
                    f"; shadows: {', '.join(s.model.record.ref for s in seats.shadows)}"
                    if seats.shadows
                    else ""
                )
                + (f"; {'; '.join(seats.notes)}" if seats.notes else "")
            )
        )

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
        self._take_seats()
        self._append(candle)
        self.publish(CandleEvent(candle, closed=True))
        ts = candle["ts"]
        features: dict[tuple[str, bool], Any] = {}  # this candle's, shared by every model
        signal, probs = await self._decide(ts, features)
        self.signals.append(signal)
        if self.persist_signals:
            self._pending_signals.append(signal)
            self._unlogged += 1
            if len(self._pending_signals) >= self.signal_batch:
                self._write_signals()  # stored before any shadow predicts
        self.publish(SignalEvent(signal, probs))
        if self.shadows:
            await self._predict_shadows(ts, features)
        if self._unlogged >= self.signal_batch:
            self._write_predictions()
        return signal

    def flush(self) -> None:
        """Write buffered signals and predictions to the store, one batch. Candles are the
        feed's to store (live) or are stored already (replay, demo): the engine never writes
        them."""
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

    async def _decide(
        self, ts: pd.Timestamp, features: dict[tuple[str, bool], Any]
    ) -> tuple[Signal, np.ndarray | None]:
        closes = self.history["close"].to_numpy(dtype=np.float64)
        model = self.model
        if model is not None:
            probs = None
            spent = [0.0]  # seconds: this spec's features (once per candle) + the inference
            try:
                # features of a sequence model's whole window take milliseconds: off the loop
                rows = await asyncio.to_thread(self._rows_for, model, features, spent)
                started = time.perf_counter()
                try:
                    probs = await predict_one(model, rows, self.inference_timeout)
                finally:
                    spent[0] += time.perf_counter() - started
                stop = self.guard(model, rows, ts) if self.guard is not None else None
                if stop is None:
                    action, confidence, reason = threshold_action(probs, self.threshold)
                    self._log(ts, model, "champion", probs, None, True, spent[0])
                    return Signal(
                        ts,
                        self.market,
                        action,
                        confidence,
                        model.record.ref,
                        reason,
                        model.record.id,
                    ), probs
                fallback = f"fallback: {stop}"
            except InferenceError as exc:
                fallback = f"fallback: {exc}"
            except Exception as exc:  # noqa: BLE001 - any model-side failure: the rule decides
                fallback = f"fallback: model failed: {type(exc).__name__}: {exc}"
            self._log(
                ts, model, "champion", probs, fallback.removeprefix("fallback: "), False, spent[0]
            )
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

    async def _predict_shadows(
        self, ts: pd.Timestamp, features: dict[tuple[str, bool], Any]
    ) -> None:
        """Every challenger's and shadow's prediction on this candle (one thread hop for all),
        logged; a model that fails or times out is logged with why."""
        seats = list(self.shadows)
        done: list[tuple[Seat, np.ndarray | None, str | None, float]] = []

        def run() -> None:
            for seat in seats:
                spent = [0.0]
                try:
                    rows = self._rows_for(seat.model, features, spent)
                    started = time.perf_counter()
                    try:
                        probs = validate_probs(seat.model.model.predict_last(rows))
                    finally:
                        spent[0] += time.perf_counter() - started
                    done.append((seat, probs, None, spent[0]))
                except Exception as exc:  # noqa: BLE001 - logged as its fallback
                    done.append((seat, None, _why(exc), spent[0]))

        budget = self.inference_timeout * (len(seats) + 1)
        try:
            await asyncio.wait_for(asyncio.to_thread(run), budget)
        except TimeoutError:
            pass  # the ones not done by now are logged as timed out
        finished = done[:]  # a timed-out thread may still append
        answered = {id(seat) for seat, *_ in finished}
        for seat, probs, why, spent in finished:
            self._log(ts, seat.model, seat.role, probs, why, False, spent)
        for seat in seats:
            if id(seat) not in answered:
                why = f"inference timed out after {budget:.1f}s"
                self._log(ts, seat.model, seat.role, None, why, False, budget)

    def _log(
        self,
        ts: pd.Timestamp,
        model: LoadedModel,
        role: str,
        probs: np.ndarray | None,
        fallback: str | None,
        acted: bool,
        seconds: float,
    ) -> None:
        """One row of the live prediction log: this model's answer on this candle, with the
        seconds its features and inference took (shared features counted for each model)."""
        if not (self.log_predictions and self.persist_signals):
            return
        latency = seconds * 1000
        action, confidence = "hold", None
        if probs is not None:
            action, confidence, _ = threshold_action(probs, self.threshold)
        self._pending_predictions.append(
            {
                "ts": ts,
                "market": self.market,
                "unit": self.unit,
                "model_id": model.record.id,
                "role": role,
                "mode": self.mode,
                "probs": None if probs is None else [float(p) for p in probs],
                "action": action,
                "confidence": confidence,
                "threshold": self.threshold,
                "acted": acted,
                "latency_ms": latency,
                "fallback": fallback,
            }
        )

    def _rows_for(
        self, model: LoadedModel, features: dict[tuple[str, bool], Any], spent: list[float]
    ) -> np.ndarray:
        """The feature rows `model` reads for the newest candle (one row for tabular models,
        its trailing window for sequence models), computed by the training code once per
        feature spec per candle (`features` holds this candle's, with the seconds each took;
        those seconds are added to `spent[0]`)."""
        spec = model.feature_spec
        if len(self.history) <= spec.warmup():
            raise InferenceError(
                f"{len(self.history)} candles in the window, features need {spec.warmup() + 1}"
            )
        digest = model.record.feature_spec_hash
        key = (digest, True)
        if key not in features and model.context == 0:  # the fast path: the newest row only
            key = (digest, False)
        if key not in features:
            started = time.perf_counter()
            frame = self._compute(spec, latest=not key[1])
            features[key] = (frame, time.perf_counter() - started)
        frame, seconds = features[key]
        spent[0] += seconds
        if isinstance(frame, InferenceError):
            raise frame
        return model.latest_rows(frame)

    def _compute(self, spec: Any, *, latest: bool) -> pd.DataFrame | InferenceError:
        """This candle's features by `spec` (the newest row only when `latest`), or the
        error every model of that spec meets."""
        try:
            if latest:
                return compute_latest(self.history, spec, unit=self.unit).to_frame().T
            return compute_features(self.history, spec, unit=self.unit)
        except Exception as exc:  # noqa: BLE001 - every model of this spec falls back, saying why
            return InferenceError(f"feature computation failed: {exc}")

    def _flush_signals(self) -> None:
        self._write_signals()
        self._write_predictions()

    def _write_signals(self) -> None:
        if self._pending_signals:
            frame = pd.DataFrame([vars(signal) for signal in self._pending_signals])
            frame["mode"] = self.mode
            frame["unit"] = self.unit
            insert_signals(self.con, frame)
        self._pending_signals.clear()

    def _write_predictions(self) -> None:
        """Append the buffered predictions to the live log, then tell `flushed`."""
        self._unlogged = 0
        if self._pending_predictions:
            from store.predictions import insert_live_predictions

            rows, self._pending_predictions = self._pending_predictions, []
            insert_live_predictions(self.con, pd.DataFrame(rows))
        for listener in list(self.flushed):
            listener()


def _why(exc: Exception) -> str:
    """A failed shadow prediction's reason, as the champion's fallback words it."""
    if isinstance(exc, InferenceError):
        return str(exc)
    return f"model failed: {type(exc).__name__}: {exc}"
