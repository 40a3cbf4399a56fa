"""The prediction service: a registered model's decision on stored candles, fast and cached.

Used by the server's `predict`/`batch_predict` operations (and through them the API and the
CLI). Three caches, each keyed so that a cached answer is never stale:

- loaded models by artifact sha256: verified and loaded once (as `inference.load_ref` does)
  by the `InferenceService` the live engine shares (on its device, warmed on both paths),
  then shared by every market and face;
- the feature rows a model reads for a candle of a (market, unit) series, keyed by the
  feature spec, the candle bound asked for and the series' version
  (`store.candles.series_versions`: stamped by every write of the series' candles), so a
  written candle invalidates everything computed from that series;
- answers per (model sha256, market, unit, candle ts, series version); a miss asks the
  service, whose answers per (sha256, market, unit, ts), checked against the window they
  were computed from, the live engine fills too.

What names the model (`name@champion` -> a registry row, through `store.model_refs.resolve`,
the one resolver every face uses) and the series versions are kept in memory too, valid while
`store.db.write_generation` is unchanged: this process is the store's only writer and every
write of candles or models bumps it once done, so a cached answer to a repeated question
costs no query at all, and the first question after a write reads the store again.

A past `ts` reads the candles up to and including it only (the newest candle at or before
it), never a later one. A model that cannot answer (features undefined, a failing or invalid
output) gives the rule strategy's decision with the reason, as the live engine does. Every
batch of misses is ONE model call: trees one predict over the stacked rows, sequence models
one forward over the stacked windows.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import InferenceError, LoadedModel, load_ref, validate_probs
from engine.live.inference_service import (
    InferenceService,
    _Lru,
    stacked_probs,  # noqa: F401 - its old home
)
from engine.research.features import compute_features, compute_latest
from engine.research.features.kind import NS_MINUTE, Candles
from engine.research.features.live import latest_values
from engine.trading.strategies import SmaCross, threshold_action
from store.artifacts import ArtifactError
from store.candles import (
    last_candle_arrays,
    last_candles,
    load_candles,
    series_versions,
    unit_minutes,
)
from store.db import write_generation
from store.model_refs import resolve
from store.registry import ModelRecord

_NONE = object()  # absent from a cache (None is a value: a series without a version)


@dataclass(frozen=True)
class Prediction:
    """One decision on one candle. `probabilities` are in `models.CLASSES` order (sell, hold,
    buy), None on fallback."""

    market: str
    unit: str
    ts: pd.Timestamp  # the candle decided on
    action: str
    confidence: float
    probabilities: tuple[float, float, float] | None
    model: str  # the model that answered (`name@version`), or the one asked on fallback
    model_id: int
    source: str  # the model's ref, or the rule's name when it decided
    reason: str
    fallback: str | None  # why the model could not answer
    note: str | None  # set when a bad artifact made a bare name load an earlier version
    latency_ms: float
    cached: bool  # the answer came from the cache (no model call)


@dataclass(frozen=True)
class _Rows:
    """What one candle's decision reads: the model's feature window (or why there is none)
    and the closes the rule falls back on."""

    ts: pd.Timestamp
    window: np.ndarray | None  # (context + 1, features) float32
    error: str | None
    closes: np.ndarray


@dataclass(frozen=True)
class _Answer:
    probs: np.ndarray | None
    fallback: str | None


def settle_heap() -> None:
    """After a model load (rare, already slow): collect now and move what survives (the
    model, its libraries' objects) out of the cyclic GC's reach (`gc.freeze`). Otherwise the
    next full collection walks those hundreds of thousands of objects while requests wait:
    30-75 ms pauses measured in the server, which hit every request in flight at once.
    Frozen objects are still freed by reference counting; only a reference cycle among them
    that becomes garbage later stays until `gc.unfreeze`."""
    gc.collect()
    gc.freeze()


class Predictor:
    """Cached models, feature rows and answers (see the module docstring); thread-safe."""

    def __init__(
        self,
        *,
        models: int = 16,
        rows: int = 4096,
        answers: int = 100_000,
        rule: SmaCross | None = None,
        settle: bool = False,
        inference: InferenceService | None = None,
    ) -> None:
        # the Workstation passes the live engine's service: one loaded model per artifact
        # and one answer per candle whichever face asks first
        self.inference = inference or InferenceService()
        self.rule = rule or SmaCross()
        self.settle = settle  # a long-lived server's: settle_heap after each model load
        self._models = _Lru(models)
        self._rows = _Lru(rows)
        self._answers = _Lru(answers)
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one artifact verified and loaded at a time
        # what the store said at write generation `_generation`: references and versions
        self._generation = -1
        self._refs: dict[str, ModelRecord] = {}
        self._versions: dict[tuple[str, str], datetime | None] = {}

    # ------------------------------------------------------------- store reads, in memory
    def _current(self) -> int:
        """The write generation now, the remembered store reads dropped if it moved on
        (callers hold the lock)."""
        generation = write_generation()
        if generation != self._generation:
            self._refs.clear()
            self._versions.clear()
            self._generation = generation
        return generation

    def resolve(self, con: duckdb.DuckDBPyConnection, ref: str) -> ModelRecord:
        """`store.model_refs.resolve(con, ref)`, without a query while no write happened
        since it was last asked."""
        with self._lock:
            generation = self._current()
            hit = self._refs.get(ref)
        if hit is not None:
            return hit
        record = resolve(con, ref)  # the generation was noted before the query: never stale
        with self._lock:
            if self._current() == generation and len(self._refs) < 4096:
                self._refs[ref] = record
        return record

    def series_versions(
        self, con: duckdb.DuckDBPyConnection, markets: list[str], unit: str
    ) -> dict[str, datetime | None]:
        """`store.candles.series_versions`, querying only the markets not remembered since
        the last write."""
        with self._lock:
            generation = self._current()
            found = {m: self._versions[(m, unit)] for m in markets if (m, unit) in self._versions}
        missing = [m for m in markets if m not in found]
        if missing:
            read = series_versions(con, missing, unit)
            found.update(read)
            with self._lock:
                if self._current() == generation and len(self._versions) < 100_000:
                    self._versions.update({(m, unit): v for m, v in read.items()})
        return found

    # ------------------------------------------------------------------------------ models
    def model(self, con: duckdb.DuckDBPyConnection, ref: str) -> tuple[LoadedModel, str | None]:
        """The model `ref` names, loaded and warmed once per artifact sha256, and the note
        `inference.load_ref` gives when a bad artifact made a bare name use an earlier one."""
        record = self.resolve(con, ref)
        with self._lock:
            hit = self._models.get_fresh(record.sha256)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        with self._loading:
            with self._lock:
                hit = self._models.get_fresh(record.sha256)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
            if ref.isdigit() or ref.rpartition("@")[2].isdigit() or "@" not in ref:
                loaded, note = self._load_ref(con, ref, record)
            else:  # an alias names one exact version: loaded as asked or refused
                loaded, note = self.inference.load_record(record, batch=2), None
            self.warm(loaded)
            with self._lock:
                self._models.put(record.sha256, (loaded, note))
            if self.settle:
                settle_heap()
        return loaded, note

    def _load_ref(
        self, con: duckdb.DuckDBPyConnection, ref: str, record: ModelRecord
    ) -> tuple[LoadedModel, str | None]:
        """`inference.load_ref(con, ref)` through the shared inference service: the artifact
        `ref` resolves to is taken from (or loaded into) the service's cache; only a refused
        one goes down `load_ref`'s fallback path, whose model the service then adopts."""
        try:
            return self.inference.load_record(record, batch=2), None
        except (ArtifactError, OSError, ValueError):
            loaded, note = load_ref(con, ref)
        return self.inference.adopt(loaded, batch=2), note

    def warm(self, loaded: LoadedModel) -> None:
        """One dummy prediction on each path (single row and batched), so the first real
        request does not pay for compiling or allocating (once per model: the service
        remembers what it warmed)."""
        self.inference.warm(loaded, 2)

    def call(self, loaded: LoadedModel, windows: np.ndarray) -> np.ndarray:
        """(n, 3) raw probabilities for (n, context + 1, features) windows: one call of the
        shared service (`InferenceService.call`: on the model's device, CPU on a CUDA
        failure). One window takes the model's fast single-row path."""
        return self.inference.call(loaded, windows)

    # --------------------------------------------------------------------------- features
    def _history(self, loaded: LoadedModel) -> int:
        return max(loaded.history_needed, self.rule.slow + 1)

    def _rows_of(self, loaded: LoadedModel, candles: pd.DataFrame, unit: str) -> _Rows:
        """The decision inputs for the newest of `candles` (one series, ascending)."""
        closes = candles["close"].to_numpy(dtype=np.float64)
        ts = pd.Timestamp(candles["ts"].iloc[-1])
        spec = loaded.feature_spec
        if len(candles) <= spec.warmup():
            return _Rows(
                ts, None, f"{len(candles)} candles, features need {spec.warmup() + 1}", closes
            )
        try:
            if loaded.context == 0:
                features = compute_latest(candles, spec, unit=unit).to_frame().T
            else:
                features = compute_features(candles, spec, unit=unit)
            return _Rows(ts, loaded.latest_rows(features), None, closes)
        except InferenceError as exc:
            return _Rows(ts, None, str(exc), closes)
        except Exception as exc:  # noqa: BLE001 - any feature failure: the rule decides
            return _Rows(ts, None, f"feature computation failed: {exc}", closes)

    def _series_rows(
        self,
        con: duckdb.DuckDBPyConnection,
        loaded: LoadedModel,
        markets: list[str],
        unit: str,
        until: pd.Timestamp | None,
    ) -> dict[str, tuple[_Rows, datetime | None]]:
        """Per market, the decision inputs for its newest candle at or before `until` and
        its series version; the candles of every cache miss in one query."""
        versions = self.series_versions(con, markets, unit)
        absent = [m for m in markets if m not in versions]
        if absent:
            raise ValueError(
                f"no {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''} unit {unit}"
                f" candles in the store; run `upquant data fetch {absent[0]} --unit {unit}` first"
            )
        spec_key = (loaded.record.feature_spec_hash, loaded.context, unit, until)
        found: dict[str, tuple[_Rows, datetime | None]] = {}
        with self._lock:
            for market in markets:
                hit = self._rows.get_fresh((*spec_key, market))
                if hit is not None and hit[1] == versions[market]:
                    found[market] = hit
        missing = [m for m in markets if m not in found]
        if missing:
            if loaded.context == 0 and not loaded.feature_spec.talib:
                arrays = last_candle_arrays(con, missing, unit, self._history(loaded), until)
                computed = self._latest_rows(loaded, arrays, missing, unit)
            else:
                candles = last_candles(con, missing, unit, self._history(loaded), until)
                computed = {
                    str(market): self._rows_of(loaded, series.reset_index(drop=True), unit)
                    for market, series in candles.groupby("market", sort=False)
                }
            for market in missing:
                rows = computed.get(market)
                if rows is None:
                    raise ValueError(
                        f"no {market} unit {unit} candle at or before {until}; predict a later ts"
                    )
                entry = (rows, versions[market])
                found[market] = entry
                with self._lock:
                    self._rows.put((*spec_key, market), entry)
        return found

    def _latest_rows(
        self, loaded: LoadedModel, candles: dict[str, np.ndarray], markets: list[str], unit: str
    ) -> dict[str, _Rows]:
        """`_rows_of` for every market of `candles` (`store.candles.last_candle_arrays` of
        `markets`) for a model that reads the newest row only: each market's features
        computed on slices of the query's columns (`latest_values`, no pandas per market),
        then checked as `LoadedModel.latest_rows` checks one row."""
        spec = loaded.feature_spec
        groups = candles["m"]
        if len(groups) == 0:
            return {}
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        ends = np.r_[starts[1:], len(groups)]
        ts = candles["ts"].astype("datetime64[ns]").view(np.int64)
        arrays = {c: candles[c] for c in ("open", "high", "low", "close", "volume", "value")}
        names = [markets[int(i)] for i in groups[starts]]
        step = unit_minutes(unit) * NS_MINUTE if spec.max_gap is not None else 0
        columns = list(spec._plan.index)
        wrong = bool(loaded.columns) and columns != loaded.columns
        need = spec.warmup()
        out: dict[str, _Rows] = {}
        for name, a, b in zip(names, starts, ends, strict=True):
            closes = arrays["close"][a:b]
            stamp = pd.Timestamp(int(ts[b - 1]), tz="UTC")
            if b - a <= need:
                out[name] = _Rows(stamp, None, f"{b - a} candles, features need {need + 1}", closes)
                continue
            try:
                values = latest_values(
                    Candles.of_arrays({c: v[a:b] for c, v in arrays.items()}, ts[a:b]),
                    spec,
                    step,
                )
            except Exception as exc:  # noqa: BLE001 - any feature failure: the rule decides
                out[name] = _Rows(stamp, None, f"feature computation failed: {exc}", closes)
                continue
            error = None
            if wrong:
                error = "feature columns differ from the model's training columns"
            elif not np.isfinite(values).all():
                bad = sorted(str(columns[i]) for i in np.flatnonzero(~np.isfinite(values)))
                error = f"features not defined for the model's window: {bad}"
            window = None if error else values.astype(np.float32)[None, :]
            out[name] = _Rows(stamp, window, error, closes)
        return out

    # -------------------------------------------------------------------------- predicting
    def predict(
        self,
        con: duckdb.DuckDBPyConnection,
        ref: str,
        market: str | None = None,
        unit: str | None = None,
        ts: datetime | None = None,
        threshold: float = 0.5,
    ) -> Prediction:
        """Model `ref`'s decision on the newest candle of market/unit at or before `ts` (the
        newest stored when None). market and unit default to the model's own."""
        return self.predict_markets(con, ref, [market] if market else None, unit, ts, threshold)[0]

    def predict_markets(
        self,
        con: duckdb.DuckDBPyConnection,
        ref: str,
        markets: list[str] | None = None,
        unit: str | None = None,
        ts: datetime | None = None,
        threshold: float = 0.5,
    ) -> list[Prediction]:
        """`predict` for each of `markets` at one `ts`, the model's misses in one call."""
        started = time.perf_counter()
        loaded, note = self.model(con, ref)
        record = loaded.record
        unit = self._unit(record, unit)
        markets = markets or [record.market]
        until = None if ts is None else _utc(ts)
        inputs = self._series_rows(con, loaded, markets, unit, until)
        answers: dict[str, tuple[_Answer, bool]] = {}
        with self._lock:
            for market, (rows, version) in inputs.items():
                hit = self._answers.get_fresh((record.sha256, market, unit, rows.ts, version))
                if hit is not None:
                    answers[market] = (hit, True)
        todo = [m for m in markets if m not in answers]
        ready = [m for m in todo if inputs[m][0].window is not None]
        if ready:
            windows = np.stack([inputs[m][0].window for m in ready])  # type: ignore[misc]
            keys = [(m, unit, inputs[m][0].ts) for m in ready]
            found = self.inference.predict_marked(loaded, keys, windows, call=self.call)
            for market, (answer, hit) in zip(ready, found, strict=True):
                if isinstance(answer, InferenceError):
                    answers[market] = (_Answer(None, str(answer)), False)
                else:
                    answers[market] = (_Answer(answer, None), hit)
        for market in todo:
            if market not in answers:
                answers[market] = (_Answer(None, inputs[market][0].error), False)
        with self._lock:
            for market in todo:
                rows, version = inputs[market]
                self._answers.put(
                    (record.sha256, market, unit, rows.ts, version), answers[market][0]
                )
        latency = (time.perf_counter() - started) * 1000
        return [
            self._decide(
                record, note, market, unit, inputs[market][0], *answers[market], threshold, latency
            )
            for market in markets
        ]

    def from_memory(
        self,
        ref: str,
        market: str | None = None,
        unit: str | None = None,
        ts: datetime | None = None,
        threshold: float = 0.5,
    ) -> Prediction | None:
        """`predict`'s answer when everything it needs is in memory (the reference, the
        loaded model, the series version, the feature rows and the answer), without touching
        the store or the model: cheap enough for the server's event loop. None when any part
        is missing or the question is bad: ask `predict`, which reads what is missing and
        says what is wrong."""
        started = time.perf_counter()
        until = None if ts is None else _utc(ts)
        with self._lock:
            self._current()
            named = self._refs.get(ref)
            hit = None if named is None else self._models.get_fresh(named.sha256)
            if hit is None:
                return None
            loaded, note = hit
            record = loaded.record
            if unit is not None and unit != record.unit:
                return None
            unit, market = record.unit, market or record.market
            version = self._versions.get((market, unit), _NONE)
            spec_key = (record.feature_spec_hash, loaded.context, unit, until, market)
            rows = self._rows.get_fresh(spec_key)
            if version is _NONE or rows is None or rows[1] != version:
                return None
            answer = self._answers.get_fresh((record.sha256, market, unit, rows[0].ts, version))
            if answer is None:
                return None
        latency = (time.perf_counter() - started) * 1000
        return self._decide(record, note, market, unit, rows[0], answer, True, threshold, latency)

    def predict_range(
        self,
        con: duckdb.DuckDBPyConnection,
        ref: str,
        market: str | None = None,
        unit: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        threshold: float = 0.5,
    ) -> list[Prediction]:
        """`predict` for every candle of one market with start <= ts < end whose features
        are defined (the rows before, undefined, are left out as by `upquant predict`), in
        one model call. The warm-up is read from the candles before `start`."""
        started = time.perf_counter()
        loaded, note = self.model(con, ref)
        record = loaded.record
        unit = self._unit(record, unit)
        market = market or record.market
        begin = None if start is None else _utc(start)
        stop = None if end is None else _utc(end)
        history = self._history(loaded)
        lookback = None
        if begin is not None:
            before = last_candles(
                con, [market], unit, history, begin - pd.Timedelta(microseconds=1)
            )
            lookback = before["ts"].iloc[0] if len(before) else begin
        candles = load_candles(con, market, unit, lookback, stop)
        if candles.empty:
            raise ValueError(
                f"no {market} unit {unit} candles in the store for that range;"
                f" run `upquant data fetch {market} --unit {unit}` first"
            )
        features = compute_features(candles, loaded.feature_spec, unit=unit)
        if loaded.columns and list(features.columns) != loaded.columns:
            raise ValueError(
                f"{record.ref} was trained on other feature columns than its spec makes"
            )
        X = features.to_numpy(dtype=np.float32)
        defined = np.isfinite(X).all(axis=1)
        context = loaded.context
        # a row is usable when it and the `context` rows its window reads are all defined
        usable = defined.copy()
        for back in range(1, context + 1):
            usable[back:] &= defined[:-back]
        usable[:context] = False
        stamps = pd.DatetimeIndex(candles["ts"])
        if begin is not None:
            usable &= stamps >= begin
        rows = np.flatnonzero(usable)
        if len(rows) == 0:
            return []
        windows = np.lib.stride_tricks.sliding_window_view(X, (context + 1, X.shape[1]))[:, 0]
        probs = self.call(loaded, np.ascontiguousarray(windows[rows - context]))
        latency = (time.perf_counter() - started) * 1000
        closes = candles["close"].to_numpy(dtype=np.float64)
        out = []
        for i, row in enumerate(rows):
            inputs = _Rows(stamps[row], None, None, closes[: row + 1])
            answer = self._checked(probs[i], None)
            out.append(
                self._decide(record, note, market, unit, inputs, answer, False, threshold, latency)
            )
        return out

    # ----------------------------------------------------------------------------- helpers
    @staticmethod
    def _unit(record: ModelRecord, unit: str | None) -> str:
        if unit is not None and unit != record.unit:
            raise ValueError(
                f"{record.ref} was trained on unit {record.unit} candles, not {unit};"
                f" predict with --unit {record.unit} or a model of unit {unit}"
            )
        return record.unit

    @staticmethod
    def _checked(probs: np.ndarray | None, failure: str | None) -> _Answer:
        if probs is None:
            return _Answer(None, failure)
        try:
            return _Answer(validate_probs(probs), None)
        except InferenceError as exc:
            return _Answer(None, str(exc))

    def _decide(
        self,
        record: ModelRecord,
        note: str | None,
        market: str,
        unit: str,
        rows: _Rows,
        answer: _Answer,
        cached: bool,
        threshold: float,
        latency_ms: float,
    ) -> Prediction:
        base = Prediction(
            market,
            unit,
            rows.ts,
            "hold",
            0.0,
            None,
            record.ref,
            record.id,
            record.ref,
            "",
            None,
            note,
            latency_ms,
            cached,
        )
        if answer.probs is not None:
            action, confidence, reason = threshold_action(answer.probs, threshold)
            probs = tuple(float(p) for p in answer.probs)
            return replace(
                base,
                action=action,
                confidence=confidence,
                reason=reason,
                probabilities=(probs[0], probs[1], probs[2]),
            )
        action, reason = self.rule.decide(rows.closes)
        fallback = answer.fallback or "the model gave no answer"
        return replace(
            base,
            action=action,
            confidence=1.0 if action != "hold" else 0.0,
            source=self.rule.name,
            reason=f"{reason} (fallback: {fallback})",
            fallback=fallback,
        )


def _utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
