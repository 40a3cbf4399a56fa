"""Monitoring a model in production: its training reference, the dissimilarity gate, expiry,
performance drift on its resolved predictions, and feature drift for display.

- `feature_reference`: the model's feature rows over its training range, recomputed from the
  stored candles with its own feature spec, summarised per feature: PSI bins and shares, a
  sample for KS and a robust range. Cached by artifact sha256: the live engine asks per candle.
- `out_of_distribution`: the dissimilarity gate. A row with more than `max_share` of its
  features outside the training range (or not finite) is refused with a reason; the rule
  strategy decides that candle instead. Vectorised, a few microseconds.
- `expired`: a champion whose newest training (or validation) candle is older than the
  market's maximum age stops deciding.
- `PerformanceMonitor`: ADWIN (and optionally Page–Hinkley) per model on the 0/1
  correctness stream of its resolved predictions and on its paper trades' returns after
  fees; a detection is a `DriftEvent` (the `drift_events` row) and the detector restarts.
- `record_feature_drift`: PSI and KS per feature for the newest candles against the
  reference, written to `drift`. Display only: nothing decides on it.

Everything here takes plain data (records, frames, arrays); the live engine's glue
(engine.service) calls it per candle and owns the store writes of drift events.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from engine.ops.drift import PSI_EPSILON, Adwin, PageHinkley, ks_2samp, psi_edges
from engine.research.features import FeatureSpec, compute_features
from engine.research.features.calendar import CALENDAR_COLUMNS
from engine.trading.backtest import DEFAULT_FEE
from models.base import CLASSES

if TYPE_CHECKING:
    import duckdb

    from engine.live.inference import LoadedModel
    from store.registry import ModelRecord

PSI_BINS = 10
KS_SAMPLE = 5000  # reference rows kept for the KS test (evenly spaced over the training range)
RANGE_QUANTILES = (0.005, 0.995)
RANGE_MARGIN = 0.10  # the range is widened by this share of the inter-quantile width each side
PSI_FLAG = 0.2  # feature drift above this PSI is flagged (bands: < 0.1 stable, > 0.25 shift)
WORST_SHOWN = 5  # features a refusal names


class ReferenceUnavailable(ValueError):
    """A model's training reference (or its recent inputs) cannot be built: no training
    range recorded, no candles; `hint` says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --- the training reference ---------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureReference:
    """Per feature (columns in the model's order): PSI inner bin edges and reference shares,
    an evenly spaced sample of the training rows for KS, and the robust range [low, high]."""

    sha256: str
    model_id: int
    features: tuple[str, ...]
    rows: int  # training rows summarised
    train_from: pd.Timestamp
    train_to: pd.Timestamp
    edges: tuple[np.ndarray, ...]
    shares: tuple[np.ndarray, ...]
    sample: np.ndarray  # (<= KS_SAMPLE, features)
    low: np.ndarray  # (features,)
    high: np.ndarray
    width: np.ndarray  # high - low, at least a tiny positive number (for distances)
    # the features the dissimilarity gate judges: all but the calendar's, which the clock
    # alone sets (a training range shorter than a week never saw every weekday)
    judged: np.ndarray  # (features,) bool

    def psi(self, j: int, current: np.ndarray) -> float:
        """PSI of feature j's current values against its reference bins (as drift.psi)."""
        values = np.asarray(current, dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0 or self.rows == 0:
            return 0.0
        edges = self.edges[j]
        c = np.bincount(np.searchsorted(edges, values), minlength=len(edges) + 1) / len(values)
        r = np.maximum(self.shares[j], PSI_EPSILON)
        c = np.maximum(c, PSI_EPSILON)
        return float(np.sum((c - r) * np.log(c / r)))


_cache: OrderedDict[str, FeatureReference] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 16


def feature_reference(
    con: duckdb.DuckDBPyConnection, record: ModelRecord, loaded: LoadedModel | None = None
) -> FeatureReference:
    """The training reference of `record` (cached by its artifact's sha256; `loaded` gives its
    feature spec and columns without re-reading them from the record)."""
    with _cache_lock:
        cached = _cache.get(record.sha256)
        if cached is not None:
            _cache.move_to_end(record.sha256)
            return cached
    reference = _build_reference(con, record, loaded)
    with _cache_lock:
        _cache[record.sha256] = reference
        _cache.move_to_end(record.sha256)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return reference


def clear_reference_cache() -> None:
    with _cache_lock:
        _cache.clear()


def training_range(record: ModelRecord) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last candle of the model's training part (its tags), or ReferenceUnavailable."""
    tags = record.tags or {}
    if not tags.get("train_from") or not tags.get("train_to"):
        raise ReferenceUnavailable(
            f"model {record.ref} records no training range (tags train_from/train_to)",
            "retrain it (upquant train) to monitor its inputs",
        )
    return _utc(tags["train_from"]), _utc(tags["train_to"])


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _spec_and_columns(
    record: ModelRecord, loaded: LoadedModel | None
) -> tuple[FeatureSpec, list[str]]:
    if loaded is not None:
        return loaded.feature_spec, loaded.columns
    return FeatureSpec.from_dict(record.feature_spec), list(record.params.get("columns", []))


def model_features(
    candles: pd.DataFrame, spec: FeatureSpec, columns: list[str], unit: str
) -> pd.DataFrame:
    """compute_features in the model's column order (all its columns, or a clear error)."""
    features = compute_features(candles, spec, unit=unit)
    if not columns:
        return features
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise ReferenceUnavailable(
            f"the feature spec no longer computes the model's columns {missing[:5]}",
            "retrain the model with this version of upquant",
        )
    return features[columns]


def _candles_around(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    first: pd.Timestamp,
    last: pd.Timestamp,
    before: int,
) -> pd.DataFrame:
    """Stored candles from `before` candles ahead of `first` up to `last` inclusive."""
    from store.candles import load_candles

    row = con.execute(
        "SELECT min(ts) FROM (SELECT ts FROM candles WHERE market = ? AND unit = ? AND ts < ?"
        " ORDER BY ts DESC LIMIT ?)",
        [market, unit, first.to_pydatetime(), int(before)],
    ).fetchone()
    start = first if row is None or row[0] is None else _utc(row[0])
    end = last + pd.Timedelta(microseconds=1)
    return load_candles(con, market, unit, start.to_pydatetime(), end.to_pydatetime())


def _build_reference(
    con: duckdb.DuckDBPyConnection, record: ModelRecord, loaded: LoadedModel | None
) -> FeatureReference:
    first, last = training_range(record)
    spec, columns = _spec_and_columns(record, loaded)
    candles = _candles_around(con, record.market, record.unit, first, last, spec.warmup() + 10)
    if candles.empty:
        raise ReferenceUnavailable(
            f"no {record.market} unit {record.unit} candles from {first} to {last} (model"
            f" {record.ref}'s training range) in the store",
            f"fetch them: upquant data fetch {record.market} --unit {record.unit}"
            f" --since {first:%Y-%m-%d}",
        )
    features = model_features(candles, spec, columns, record.unit)
    window = features[(features.index >= first) & (features.index <= last)]
    values = window.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values).all(axis=1)]  # the rows training kept
    if len(values) == 0:
        raise ReferenceUnavailable(
            f"model {record.ref}'s training range {first} .. {last} has no complete feature"
            " rows in the stored candles",
            f"fetch the range again: upquant data fetch {record.market} --unit {record.unit}"
            f" --since {first:%Y-%m-%d}",
        )
    names = tuple(str(c) for c in features.columns)
    edges = tuple(psi_edges(values[:, j], PSI_BINS) for j in range(len(names)))
    shares = tuple(
        np.bincount(np.searchsorted(e, values[:, j]), minlength=len(e) + 1) / len(values)
        for j, e in enumerate(edges)
    )
    q_low, q_high = np.quantile(values, RANGE_QUANTILES, axis=0)
    margin = RANGE_MARGIN * (q_high - q_low)
    low, high = q_low - margin, q_high + margin
    take = np.unique(np.linspace(0, len(values) - 1, min(len(values), KS_SAMPLE)).astype(int))
    return FeatureReference(
        sha256=record.sha256,
        model_id=record.id,
        features=names,
        rows=len(values),
        train_from=first,
        train_to=last,
        edges=edges,
        shares=shares,
        sample=values[take].copy(),
        low=low,
        high=high,
        width=np.maximum(high - low, 1e-12),
        judged=np.array([name not in CALENDAR_COLUMNS for name in names], dtype=bool),
    )


# --- the dissimilarity gate ---------------------------------------------------------------------
def out_of_distribution(
    reference: FeatureReference, row: np.ndarray, max_share: float
) -> str | None:
    """None when the feature row lies in the training distribution, else why not: more than
    `max_share` of its judged features (all but the calendar's) outside the reference's
    robust range (a NaN or inf counts as outside), naming the share and the farthest ones."""
    values = np.asarray(row, dtype=np.float64).reshape(-1)
    if len(values) != len(reference.features):
        raise ValueError(
            f"the feature row has {len(values)} values, the reference"
            f" {len(reference.features)} features"
        )
    # NaN compares False; a feature the gate does not judge counts as neither
    inside = (values >= reference.low) & (values <= reference.high) | ~reference.judged
    n = int(np.count_nonzero(reference.judged))
    outside = len(values) - int(np.count_nonzero(inside))
    if outside <= max_share * n:
        return None
    with np.errstate(invalid="ignore"):
        distance = np.maximum(reference.low - values, values - reference.high) / reference.width
    distance = np.where(np.isfinite(distance), distance, np.inf)
    distance[inside] = -np.inf
    worst = np.argsort(-distance, kind="stable")[: min(outside, WORST_SHOWN)]
    names = ", ".join(reference.features[j] for j in worst)
    more = ", ..." if outside > WORST_SHOWN else ""
    return f"out of distribution: {outside}/{n} features outside the training range ({names}{more})"


# --- expiry -------------------------------------------------------------------------------------
def learnt_until(record: ModelRecord) -> pd.Timestamp:
    """The newest candle the model learnt from: its validation part's end (early stopping
    reads it), else its training part's end, else when it was registered."""
    tags = record.tags or {}
    for key in ("validation_to", "train_to"):
        if tags.get(key):
            return _utc(tags[key])
    return _utc(record.created_at)


def expired(record: ModelRecord, now: datetime, max_age_hours: float | None) -> str | None:
    """None while the model is younger than `max_age_hours` (None: it never expires), else
    the reason `expired: ...`. Age is `now` minus the newest candle it learnt from."""
    if max_age_hours is None:
        return None
    newest = learnt_until(record)
    age = (_utc(now) - newest) / pd.Timedelta(hours=1)
    if age <= max_age_hours:
        return None
    return (
        f"expired: trained on data up to {newest:%Y-%m-%d %H:%M} UTC"
        f" ({_hours(age)} h old, max {_hours(max_age_hours)} h)"
    )


def _hours(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"


# --- performance drift --------------------------------------------------------------------------
Stream = Literal["correctness", "pnl"]
Detector = Literal["adwin", "page-hinkley"]


@dataclass(frozen=True)
class DriftEvent:
    """A detected change of a model's correctness or trade PnL: a `drift_events` row
    (without its id, detected_at and action, which the store and the caller add)."""

    ts: datetime  # the candle whose resolved outcome raised it
    market: str
    unit: str
    model_id: int
    stream: Stream
    detector: Detector
    before_mean: float
    after_mean: float
    observations: int  # values the detector had seen (since its last restart)
    detail: str
    action: str | None = None

    @property
    def worsened(self) -> bool:
        """The mean fell (both streams: higher is better): what a retrain should answer."""
        return self.after_mean < self.before_mean

    def to_row(self) -> dict[str, Any]:
        """Keyword arguments of store.drift.insert_drift_event."""
        row = asdict(self)
        row["ts"] = pd.Timestamp(self.ts).to_pydatetime()
        return row


def store_drift_event(con: duckdb.DuckDBPyConnection, event: DriftEvent) -> int:
    """Append `event` to `drift_events` (its `action` as the caller set it); its id."""
    from store.drift import insert_drift_event

    return insert_drift_event(con, **event.to_row())


def trade_returns(
    actions: np.ndarray, outcome_returns: np.ndarray, fee: float = DEFAULT_FEE
) -> np.ndarray:
    """Per row, the paper trade of a `buy` as engine/trading/backtest.py trades spot Upbit
    (long/flat, a fee per side): a long round trip over the label horizon,
    `(1 + r)(1 - fee)^2 - 1`, `r` the close-to-close outcome return; `sell` (flat) and `hold`
    trade nothing: NaN. The same trades as the shadow evidence (engine.ops.ab)."""
    bought = np.asarray(actions, dtype=object) == "buy"
    r = np.asarray(outcome_returns, dtype=np.float64)
    return np.where(bought, (1.0 + r) * (1.0 - fee) ** 2 - 1.0, np.nan)


@dataclass
class _Watch:
    """One stream's detectors for one model; the PnL stream first learns its scale."""

    stream: Stream
    adwin: Adwin | None = None
    page_hinkley: PageHinkley | None = None
    pending: list[float] = field(default_factory=list)  # PnL values before the scale is known
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    seen: int = 0


class PerformanceMonitor:
    """Performance drift per model: ADWIN on the 0/1 correctness of its resolved predictions
    (argmax of probs against the resolved label) and on its paper trades' returns (its own
    buy actions, `trade_returns`, or a `trade_return` column when the frame has one),
    optionally Page–Hinkley (direction down) beside it. Feed `update` the model's resolved
    rows; rows at or before the newest candle already seen are skipped. After a detection the
    stream's detectors start afresh, so one change raises one event, not a storm. With
    `falls_only` (the default) a change for the better raises nothing: ADWIN's window simply
    moves on (what a retrain answers is a fall).

    The PnL stream's scale (ADWIN's value range, Page–Hinkley's tolerance and threshold) is
    6, 0.2 and 25 standard deviations of its first `pnl_warmup` trades (after each restart):
    those trades are then fed. Memory per model: two ADWIN windows (O(log n) buckets), at
    most `pnl_warmup` pending trades and 100 recent values per stream."""

    def __init__(
        self,
        *,
        delta: float = 0.002,
        page_hinkley: bool = False,
        fee: float = DEFAULT_FEE,
        pnl_warmup: int = 50,
        falls_only: bool = True,
    ) -> None:
        if pnl_warmup < 2:
            raise ValueError("pnl_warmup must be at least 2 trades")
        self.delta = delta
        self.use_page_hinkley = page_hinkley
        self.fee = fee
        self.pnl_warmup = pnl_warmup
        self.falls_only = falls_only
        self._watches: dict[tuple[int, Stream], _Watch] = {}
        self._last: dict[int, pd.Timestamp] = {}

    def last_seen(self, model_id: int) -> pd.Timestamp | None:
        """The newest candle of model_id's rows already fed."""
        return self._last.get(model_id)

    def forget(self, model_id: int) -> None:
        """Drop a model's state (it left its seat)."""
        self._last.pop(model_id, None)
        for stream in ("correctness", "pnl"):
            self._watches.pop((model_id, stream), None)

    def update(self, model_id: int, resolved: pd.DataFrame) -> list[DriftEvent]:
        """Feed model_id's resolved predictions (columns ts, market, unit, probs,
        label_resolved, action, outcome_return; optionally trade_return), in candle order;
        the drift events they raise."""
        if resolved.empty:
            return []
        frame = resolved.sort_values("ts", kind="stable")
        ts = pd.DatetimeIndex(pd.to_datetime(frame["ts"], utc=True))
        last = self._last.get(model_id)
        fresh = np.ones(len(frame), dtype=bool) if last is None else np.asarray(ts > last)
        labels = frame["label_resolved"].to_numpy(dtype=object)
        fresh &= pd.notna(labels)
        if not fresh.any():
            return []
        self._last[model_id] = ts[fresh][-1]
        correct = _correctness(frame["probs"].to_numpy(dtype=object)[fresh], labels[fresh])
        pnl = self._trades(frame)[fresh]
        stamps = ts[fresh].to_pydatetime()
        markets = frame["market"].to_numpy(dtype=object)[fresh]
        units = frame["unit"].to_numpy(dtype=object)[fresh]
        events: list[DriftEvent] = []
        for i in range(len(stamps)):
            if math.isnan(correct[i]) and math.isnan(pnl[i]):
                continue
            where = (stamps[i], str(markets[i]), str(units[i]), model_id)
            if not math.isnan(correct[i]):
                events += self._feed(model_id, "correctness", float(correct[i]), where)
            if not math.isnan(pnl[i]):
                events += self._feed(model_id, "pnl", float(pnl[i]), where)
        return events

    def _trades(self, frame: pd.DataFrame) -> np.ndarray:
        if "trade_return" in frame:
            return np.asarray(frame["trade_return"].to_numpy(dtype=object), dtype=np.float64)
        if "action" not in frame or "outcome_return" not in frame:
            return np.full(len(frame), np.nan)
        actions = np.array([str(a) for a in frame["action"].to_numpy(dtype=object)])
        returns = np.asarray(frame["outcome_return"].to_numpy(dtype=object), dtype=np.float64)
        return trade_returns(actions, returns, self.fee)

    def _watch(self, model_id: int, stream: Stream) -> _Watch:
        watch = self._watches.get((model_id, stream))
        if watch is None:
            watch = self._watches[(model_id, stream)] = _Watch(stream)
            if stream == "correctness":
                self._arm(watch, 1.0)
        return watch

    def _arm(self, watch: _Watch, scale: float) -> None:
        """Fresh detectors for a stream whose values spread over about `scale` (1 for 0/1; a
        standard deviation for trade returns)."""
        if watch.stream == "correctness":
            watch.adwin = Adwin(self.delta, value_range=1.0)
            ph = PageHinkley(direction="down") if self.use_page_hinkley else None
        else:
            watch.adwin = Adwin(self.delta, value_range=6.0 * scale)
            ph = (
                PageHinkley(0.2 * scale, 25.0 * scale, direction="down")
                if self.use_page_hinkley
                else None
            )
        watch.page_hinkley = ph
        watch.seen = 0
        watch.recent.clear()

    def _feed(
        self, model_id: int, stream: Stream, value: float, where: tuple[datetime, str, str, int]
    ) -> list[DriftEvent]:
        watch = self._watch(model_id, stream)
        if watch.adwin is None:  # the PnL stream learns its scale first
            watch.pending.append(value)
            if len(watch.pending) < self.pnl_warmup:
                return []
            scale = float(np.std(watch.pending))
            self._arm(watch, max(scale, self.fee, 1e-9))
            pending, watch.pending = watch.pending, []
            events: list[DriftEvent] = []
            for held in pending:
                events += self._feed(model_id, stream, held, where)
            return events
        return self._observe(watch, value, where)

    def _observe(
        self, watch: _Watch, value: float, where: tuple[datetime, str, str, int]
    ) -> list[DriftEvent]:
        adwin = watch.adwin
        assert adwin is not None
        width, total = adwin.width, adwin.mean * adwin.width
        watch.seen += 1
        watch.recent.append(value)
        ph_mean = watch.page_hinkley.mean if watch.page_hinkley is not None else 0.0
        found: list[tuple[Detector, float, float]] = []
        if adwin.update(value):
            kept_total = adwin.mean * adwin.width
            dropped = width + 1 - adwin.width
            before = (total + value - kept_total) / dropped if dropped else adwin.mean
            found.append(("adwin", before, adwin.mean))
        if watch.page_hinkley is not None and watch.page_hinkley.update(value):
            found.append(("page-hinkley", ph_mean, float(np.mean(watch.recent))))
        if self.falls_only:  # a change for the better: ADWIN's window moved on, nothing to say
            found = [f for f in found if f[2] < f[1]]
        if not found:
            return []
        detector, before, after = found[0]
        seen = watch.seen
        ts, market, unit, model_id = where
        if watch.stream == "pnl":  # restart: learn the scale of the new regime
            watch.adwin = None
            watch.page_hinkley = None
            watch.recent.clear()
        else:
            self._arm(watch, 1.0)
        what = "accuracy" if watch.stream == "correctness" else "mean trade return"
        moved = "fell" if after < before else "rose"
        number = (lambda x: f"{x:.3f}") if watch.stream == "correctness" else _percent
        return [
            DriftEvent(
                ts=ts,
                market=market,
                unit=unit,
                model_id=model_id,
                stream=watch.stream,
                detector=detector,
                before_mean=float(before),
                after_mean=float(after),
                observations=seen,
                detail=f"{what} {moved} from {number(before)} to {number(after)}"
                f" ({detector} after {seen:,} {'resolved predictions' if watch.stream == 'correctness' else 'trades'})",
            )
        ]


def _percent(value: float) -> str:
    return f"{value:+.3%}"


def _correctness(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 where the most probable class is the resolved label, 0.0 where not, NaN where the
    model gave no answer (probs None or not 3 finite numbers) or the label is unknown."""
    index = {name: i for i, name in enumerate(CLASSES)}
    out = np.full(len(labels), np.nan)
    for i, (row, label) in enumerate(zip(probs, labels, strict=True)):
        if row is None or label not in index:
            continue
        values = np.asarray(row, dtype=np.float64)
        if values.shape != (len(CLASSES),) or not np.isfinite(values).all():
            continue
        out[i] = float(int(np.argmax(values)) == index[label])
    return out


# --- feature drift ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureDriftRow:
    """A feature's drift over the newest candles against the training reference."""

    ts: datetime  # the newest candle compared
    model_id: int
    feature: str
    psi: float
    ks: float  # the KS statistic (the largest gap between the two CDFs)
    ks_p_value: float
    rows: int  # recent rows compared

    @property
    def flagged(self) -> bool:
        return self.psi > PSI_FLAG


def record_feature_drift(
    con: duckdb.DuckDBPyConnection,
    record: ModelRecord,
    market: str,
    unit: str,
    *,
    last: int = 500,
    loaded: LoadedModel | None = None,
) -> list[FeatureDriftRow]:
    """PSI and KS of each feature over the newest `last` candles of market/unit against the
    model's training reference, recorded in `drift` (ts = the newest candle). For display:
    it never changes a decision."""
    from store.candles import load_candles
    from store.drift import insert_feature_drift

    if last < 2:
        raise ValueError(f"feature drift compares at least 2 recent candles, got last={last}")
    reference = feature_reference(con, record, loaded)
    spec, columns = _spec_and_columns(record, loaded)
    candles = load_candles(con, market, unit, last=last + spec.warmup() + 10)
    if candles.empty:
        raise ReferenceUnavailable(
            f"no {market} unit {unit} candles in the store",
            f"fetch them: upquant data fetch {market} --unit {unit}",
        )
    features = model_features(candles, spec, columns, unit).iloc[-last:]
    current = features.to_numpy(dtype=np.float64)
    newest = pd.Timestamp(features.index[-1]).to_pydatetime()
    rows = []
    for j, name in enumerate(reference.features):
        statistic, p_value = ks_2samp(reference.sample[:, j], current[:, j])
        rows.append(
            FeatureDriftRow(
                ts=newest,
                model_id=record.id,
                feature=name,
                psi=reference.psi(j, current[:, j]),
                ks=statistic,
                ks_p_value=p_value,
                rows=int(np.isfinite(current[:, j]).sum()),
            )
        )
    insert_feature_drift(con, newest, record.id, [(r.feature, r.psi, r.ks) for r in rows])
    return rows
