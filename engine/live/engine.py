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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import InferenceError, LoadedModel, validate_probs
from engine.live.seats import Seat, Seats
from engine.live.window import CandleWindow
from engine.params import THRESHOLD_MAX, THRESHOLD_MIN
from engine.research.features import DEFAULT_SPEC, FeatureSpec, compute_features
from engine.research.features.batch import talib_importable
from engine.research.features.kind import NS_MINUTE
from engine.research.features.live import latest_values
from engine.trading.spec import StrategySpec, StrategyState, decide
from engine.trading.strategies import Signal, SmaCross, threshold_action
from engine.upbit.markets import unit_minutes
from store.candles import load_candles
from store.signals import insert_signal_rows, register_strategy


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

# A guard: why the champion must not decide on this candle (None: it may), from the model,
# its feature rows and the candle's ts. Set by the session's model operations.
type Guard = Callable[[LoadedModel, np.ndarray, pd.Timestamp], str | None]


class Inference(Protocol):
    """What the engine calls models through (engine.live.inference_service.InferenceService;
    `DirectInference` when none is given): (n, 3) answers for n windows of one model, in one
    call, each validated: a row's InferenceError fails that market only."""

    def predict(
        self, model: LoadedModel, keys: Sequence[tuple[str, str, pd.Timestamp]], windows: np.ndarray
    ) -> list[np.ndarray | InferenceError]: ...


class DirectInference:
    """One model call per group of windows, no cache: the engine's default."""

    def predict(
        self, model: LoadedModel, keys: Sequence[tuple[str, str, pd.Timestamp]], windows: np.ndarray
    ) -> list[np.ndarray | InferenceError]:
        from engine.live.predictor import stacked_probs

        try:
            if len(windows) == 1:
                raw = np.asarray(model.model.predict_last(windows[0]), dtype=np.float64)[None]
            else:
                raw = stacked_probs(model.model, windows)
        except InferenceError as exc:
            return [exc] * len(windows)
        except Exception as exc:  # noqa: BLE001 - any model-side failure: the rule decides
            return [InferenceError(_why(exc))] * len(windows)
        out: list[np.ndarray | InferenceError] = []
        for row in raw:
            try:
                out.append(validate_probs(row))
            except InferenceError as exc:
                out.append(exc)
        return out


@dataclass
class _Answer:
    """One model's answer for one market on one candle."""

    probs: np.ndarray | None = None
    fallback: str | None = None  # why there is no answer
    rows: np.ndarray | None = None  # the feature rows it read
    seconds: float = 0.0  # its features (shared ones counted for each model) + the model call


@dataclass
class LiveEngine:
    """One market's lane of the live engine: its window, seated models, threshold and signal
    log. `on_closed` decides one candle (a pass of one lane); `engine.live.markets.
    MarketsEngine` runs passes over many lanes at once (`decide_pass`)."""

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
    inference: Inference | None = None
    strategy: StrategySpec | None = None  # None: DEFAULT_STRATEGY with `threshold` and `rule`

    def __post_init__(self) -> None:
        self.spec = self.model.feature_spec if self.model else DEFAULT_SPEC
        self.window = self._window()
        self.buffer = CandleWindow(self.market, self.unit, self.window)
        self.listeners: list[Callable[[EngineEvent], None]] = []
        # called after each write of the buffered signals and predictions (from the loop)
        self.flushed: list[Callable[[], None]] = []
        self._pending_signals: list[Signal] = []
        self._pending_predictions: list[dict[str, Any]] = []
        self._unlogged = 0  # candles decided since the prediction log was last written
        self._next_seats: Seats | None = None
        # per feature spec: the newest feature rows computed (their ts, the rows), so a
        # sequence model's window costs one new row per candle, not the whole window
        self._rings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.signals: deque[Signal] = deque(maxlen=self.keep_signals)
        if self.inference is None:
            self.inference = DirectInference()
        self.state = StrategyState()  # the strategy's position, cooldown and regime
        self._registered: str | None = None  # the strategy hash stored in `strategy_specs`
        if self.strategy is None:
            rule = StrategySpec.from_dict(
                {"rules": [{"rule": "sma-cross", "fast": self.rule.fast, "slow": self.rule.slow}]}
            )
            self.strategy = replace(rule, threshold=self.threshold)
        else:
            self.threshold = self.strategy.threshold
        self.set_threshold(self.threshold)

    @property
    def rule_name(self) -> str:
        """The rules that decide without a model (the strategy spec's), by name."""
        if self.strategy is None:
            return self.rule.name
        return " + ".join(rule.name for rule in self.strategy.rules) or self.rule.name

    @property
    def history(self) -> pd.DataFrame:
        """The window as a candle frame (oldest first), what the features read."""
        return self.buffer.frame()

    def _window(self) -> int:
        """Candles the decision reads: the most any seated model (or the default features)
        needs, and the rule's."""
        models = [s.model for s in self.shadows] + ([self.model] if self.model else [])
        needed = [m.history_needed for m in models] or [self.spec.window()]
        rules = self.strategy.history_needed() if self.strategy is not None else 0
        return max(*needed, self.rule.slow + 1, rules)

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
        if window > self.window and len(self.buffer) and self.mode != "demo":
            # a model that reads further back: its window from the store, up to this candle
            last = self.buffer.last_ts
            stored = load_candles(  # `end` is exclusive: up to and including `last`
                self.con,
                self.market,
                self.unit,
                end=last + pd.Timedelta(microseconds=1),
                last=window,
            )
            self.buffer.resize(window)
            if len(stored) > len(self.buffer):
                self.buffer.load(stored)
                self._rings.clear()
        else:
            self.buffer.resize(window)
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
        if self.strategy is not None and self.strategy.threshold != self.threshold:
            self.strategy = replace(self.strategy, threshold=self.threshold)  # a new hash
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
        self.buffer.load(candles)
        self._rings.clear()

    async def on_closed(self, candle: dict[str, Any]) -> Signal | None:
        """One closed candle: features (same code as training), predict, decide, log.

        A candle older than the window's newest is too late to decide on: None.
        """
        signals = await decide_pass([(self, candle)])
        return signals[0] if signals else None

    def flush(self) -> None:
        """Write buffered signals and predictions to the store, one batch. Candles are the
        feed's to store (live) or are stored already (replay, demo): the engine never writes
        them."""
        _write_signals([self])
        _write_predictions([self])

    # --- one candle's decision, in steps a pass runs over many lanes -----------------------
    def _begin(self, candle: dict[str, Any]) -> bool:
        """Take new seats, add the candle to the window and announce it; False (nothing
        done) for a candle older than the window's newest."""
        last = self.buffer.last_ts
        if last is not None and candle["ts"] < last:
            return False
        self._take_seats()
        self.buffer.append(candle)
        self.publish(CandleEvent(candle, closed=True))
        return True

    def _conclude(
        self, ts: pd.Timestamp, answer: _Answer | None
    ) -> tuple[Signal, np.ndarray | None]:
        """The signal of this candle by the lane's strategy spec, from the champion's answer
        (None: no champion; no probabilities when it failed or a guard stops it: the spec's
        rules decide, saying why); the champion's prediction logged."""
        model, strategy = self.model, self.strategy
        assert strategy is not None
        probs: np.ndarray | None = None
        if model is not None and answer is not None:
            fallback = answer.fallback
            if answer.probs is not None:
                try:
                    rows = answer.rows if answer.rows is not None else np.empty((0, 0))
                    fallback = self.guard(model, rows, ts) if self.guard is not None else None
                except Exception as exc:  # noqa: BLE001 - a failing guard: the rule decides
                    fallback = _why(exc)
                if fallback is None:
                    probs = answer.probs
            acted = probs is not None and strategy.uses_ai
            self._log(ts, model, "champion", answer.probs, fallback, acted, answer.seconds)
        else:
            fallback = self.no_model_reason
        decision = decide(
            strategy,
            self.state,
            self.buffer.arrays(),
            probs,
            model.record.ref if model is not None else None,
            fallback,
        )
        if self.persist_signals and self._registered != strategy.hash:
            register_strategy(self.con, strategy.hash, strategy.name, strategy.canonical_json())
            self._registered = strategy.hash
        model_id = model.record.id if model is not None and probs is not None else None
        signal = Signal(
            ts,
            self.market,
            decision.action,
            decision.confidence,
            decision.source,
            decision.reason,
            model_id,
            strategy.hash,
        )
        return signal, probs

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
                "latency_ms": seconds * 1000,
                "fallback": fallback,
            }
        )

    # --- features -------------------------------------------------------------------------
    def _rows_for(
        self, model: LoadedModel, features: dict[str, Any], spent: list[float]
    ) -> np.ndarray:
        """The feature rows `model` reads for the newest candle (one row for tabular models,
        its trailing window for sequence models), computed by the training code's functions
        once per feature spec per candle (`features` holds this candle's, with the seconds
        each took; those seconds are added to `spent[0]`)."""
        spec = model.feature_spec
        if len(self.buffer) <= spec.warmup():
            raise InferenceError(
                f"{len(self.buffer)} candles in the window, features need {spec.warmup() + 1}"
            )
        digest = model.record.feature_spec_hash
        need = model.context + 1
        entry = features.get(digest)
        if entry is None or (not isinstance(entry[0], Exception) and len(entry[0]) < need):
            started = time.perf_counter()
            try:
                rows: np.ndarray | InferenceError = self._feature_rows(spec, digest, need)
            except Exception as exc:  # noqa: BLE001 - every model of this spec falls back
                rows = InferenceError(f"feature computation failed: {exc}")
            features[digest] = entry = (rows, time.perf_counter() - started, spec.columns())
        spent[0] += entry[1]
        if isinstance(entry[0], InferenceError):
            raise entry[0]
        return model.check_rows(entry[0], entry[2])

    def _feature_rows(self, spec: FeatureSpec, digest: str, need: int) -> np.ndarray:
        """The newest `need` feature rows by `spec` (fewer when the window holds fewer): the
        newest computed alone (`latest_values`, equal to the batch row to 1e-9) on top of the
        rows kept from earlier candles, or the whole window in batch when those are missing
        (the first candle, a reloaded window, a longer need)."""
        ts = self.buffer.ts_ns
        if spec.talib and talib_importable():  # TA-Lib changes pandas-ta's results: batch
            frame = compute_features(self.buffer.frame(), spec, unit=self.unit)
            rows = frame.to_numpy(dtype=np.float64)[-need:]
            self._rings[digest] = (ts[-len(rows) :].copy(), rows)
            return rows
        kept = self._rings.get(digest)
        base: np.ndarray | None = None
        if kept is not None and len(kept[0]):
            kept_ts, kept_rows = kept
            if kept_ts[-1] == ts[-1]:  # the newest candle was replaced: recompute its row
                kept_ts, kept_rows = kept_ts[:-1], kept_rows[:-1]
            follows = len(kept_ts) and len(ts) >= 2 and kept_ts[-1] == ts[-2]
            if follows and len(kept_rows) >= min(need - 1, len(ts) - 1):
                base = kept_rows
        if base is None and need > 1:
            frame = compute_features(self.buffer.frame(), spec, unit=self.unit)
            rows = frame.to_numpy(dtype=np.float64)[-need:]
        else:
            step = unit_minutes(self.unit) * NS_MINUTE if spec.max_gap is not None else 0
            newest = latest_values(self.buffer.candles(), spec, step)[None, :]
            rows = newest if base is None or need == 1 else np.vstack([base[-(need - 1) :], newest])
        self._rings[digest] = (ts[-len(rows) :].copy(), rows)
        return rows


# --- a pass: one closed candle for each of many lanes ------------------------------------------
async def decide_pass(items: Sequence[tuple[LiveEngine, dict[str, Any]]]) -> list[Signal]:
    """Decide one closed candle for each lane of `items` (one candle per lane): every lane's
    newest feature rows, then ONE inference call per model (all its markets' rows stacked),
    then each lane's strategy; the signals written in one statement before any shadow
    predicts, then every shadow's prediction (one call per model again), then the
    prediction log. The models' work runs off the event loop in one thread hop, within the
    longest of the lanes' `inference_timeout`: past it, the lanes whose model has not
    answered fall back to their rule, saying why. Lanes given an older candle than their
    window's newest are skipped. Returns the signals, in lane order."""
    lanes = [lane for lane, candle in items if lane._begin(candle)]
    if not lanes:
        return []
    stamps = [lane.buffer.last_ts for lane in lanes]
    features: list[dict[str, Any]] = [{} for _ in lanes]
    seated = [(i, lane.model) for i, lane in enumerate(lanes) if lane.model is not None]
    answers: dict[int, _Answer] = {}
    if seated:
        timeout = max(lanes[i].inference_timeout for i, _ in seated)
        jobs = [(i, model) for i, model in seated]
        found = await _answers(lanes, stamps, features, jobs, timeout)
        answers = {i: found[k] for k, (i, _) in enumerate(jobs)}
    decided = [
        lane._conclude(ts, answers.get(i))
        for i, (lane, ts) in enumerate(zip(lanes, stamps, strict=True))
    ]
    due = []
    for lane, (signal, _) in zip(lanes, decided, strict=True):
        lane.signals.append(signal)
        if lane.persist_signals:
            lane._pending_signals.append(signal)
            lane._unlogged += 1
            if len(lane._pending_signals) >= lane.signal_batch:
                due.append(lane)
    _write_signals(due)  # stored before any shadow predicts
    for lane, (signal, probs) in zip(lanes, decided, strict=True):
        lane.publish(SignalEvent(signal, probs))
    shadows = [(i, seat) for i, lane in enumerate(lanes) for seat in lane.shadows]
    if shadows:
        most = max(Counter(i for i, _ in shadows).values())  # seats of the busiest lane
        timeout = max(lanes[i].inference_timeout for i, _ in shadows) * (most + 1)
        jobs = [(i, seat.model) for i, seat in shadows]
        found = await _answers(lanes, stamps, features, jobs, timeout)
        for (i, seat), answer in zip(shadows, found, strict=True):
            lanes[i]._log(
                stamps[i],
                seat.model,
                seat.role,
                answer.probs,
                answer.fallback,
                False,
                answer.seconds,
            )
    _write_predictions([lane for lane in lanes if lane._unlogged >= lane.signal_batch])
    return [signal for signal, _ in decided]


async def _answers(
    lanes: list[LiveEngine],
    stamps: list[pd.Timestamp],
    features: list[dict[str, Any]],
    jobs: list[tuple[int, LoadedModel]],
    timeout: float,
) -> list[_Answer]:
    """Each job's answer (lane index, model): the feature rows of every job, then one model
    call per artifact over its jobs' rows, all in one thread hop within `timeout` seconds."""
    done: dict[int, _Answer] = {}

    def run() -> None:
        groups: dict[str, list[tuple[int, np.ndarray]]] = {}
        spent = [[0.0] for _ in jobs]
        for k, (i, model) in enumerate(jobs):
            try:
                rows = lanes[i]._rows_for(model, features[i], spent[k])
            except Exception as exc:  # noqa: BLE001 - this market's model falls back, saying why
                done[k] = _Answer(fallback=_why(exc), seconds=spent[k][0])
                continue
            groups.setdefault(model.record.sha256, []).append((k, rows))
        for members in groups.values():
            model = jobs[members[0][0]][1]
            keys = [
                (lanes[jobs[k][0]].market, lanes[jobs[k][0]].unit, stamps[jobs[k][0]])
                for k, _ in members
            ]
            started = time.perf_counter()
            inference = lanes[jobs[members[0][0]][0]].inference
            assert inference is not None
            try:
                results = inference.predict(model, keys, np.stack([rows for _, rows in members]))
            except Exception as exc:  # noqa: BLE001 - the service failed: these markets fall back
                results = [InferenceError(_why(exc))] * len(members)
            took = time.perf_counter() - started
            for (k, rows), result in zip(members, results, strict=True):
                seconds = spent[k][0] + took
                if isinstance(result, Exception):
                    done[k] = _Answer(fallback=_why(result), rows=rows, seconds=seconds)
                else:
                    done[k] = _Answer(probs=result, rows=rows, seconds=seconds)

    try:
        await asyncio.wait_for(asyncio.to_thread(run), timeout)
    except TimeoutError:
        pass  # the ones not answered by now fall back
    late = f"inference timed out after {timeout:.1f}s"
    return [done.get(k) or _Answer(fallback=late, seconds=timeout) for k in range(len(jobs))]


def _write_signals(lanes: Sequence[LiveEngine]) -> None:
    """The buffered signals of `lanes` (one store), in one statement."""
    rows = [
        (
            s.ts,
            s.market,
            lane.unit,
            s.source,
            s.action,
            float(s.confidence),
            None if s.model_id is None else int(s.model_id),
            s.reason,
            lane.mode,
            s.strategy,
        )
        for lane in lanes
        for s in lane._pending_signals
    ]
    if rows:
        insert_signal_rows(lanes[0].con, rows)
    for lane in lanes:
        lane._pending_signals.clear()


def _write_predictions(lanes: Sequence[LiveEngine]) -> None:
    """Append the buffered predictions of `lanes` to the live log (one insert), then tell
    each lane's `flushed` listeners."""
    rows: list[dict[str, Any]] = []
    for lane in lanes:
        lane._unlogged = 0
        rows.extend(lane._pending_predictions)
        lane._pending_predictions = []
    if rows:
        from store.predictions import insert_live_prediction_rows

        insert_live_prediction_rows(lanes[0].con, rows)
    for lane in lanes:
        for listener in list(lane.flushed):
            listener()


def _why(exc: Exception) -> str:
    """A failed shadow prediction's reason, as the champion's fallback words it."""
    if isinstance(exc, InferenceError):
        return str(exc)
    return f"model failed: {type(exc).__name__}: {exc}"
