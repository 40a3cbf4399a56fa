"""Rolling live metrics of one model from its rows of the live prediction log.

Over a window of live rows (`live_metrics`: the newest `last` of a model), resolved rows only
for everything that needs an outcome:

- Classification: accuracy, macro F1 and log-loss of the predicted class (the most likely
  one, as every stored evaluation scores it) against the resolved label, by
  engine.research.metrics.classification_metrics; rows without an answer (probs null: a
  fallback) are not scored.
- Calibration: reliability bins of the predicted class's probability (equal widths over
  [0, 1]): per bin the count, mean confidence and observed accuracy; the expected
  calibration error is the count-weighted mean |accuracy - confidence|.
- Signals: `acted` rows (the signal the engine emitted) whose action is buy or sell. Hit:
  a buy whose outcome_return > 0, a sell whose outcome_return < 0.
- Paper PnL after fees, as engine/trading/backtest.py trades spot Upbit (long/flat, a fee per
  side): a buy is a long round trip over the label horizon, entered at the decided candle's
  close and left at the horizon candle's close, `(1 + outcome_return) * (1 - fee)**2 - 1`
  (the backtest's trade return); a sell goes (or stays) flat, which trades nothing; hold
  trades nothing. Each acted buy is its own trade (engine.ops.monitor.trade_returns, the same
  trades as the shadow evidence of engine.ops.ab).
- `own_*`: the same signal statistics over the model's OWN thresholded actions, acted or
  not: what a challenger or shadow, whose predictions are never acted on, would have done.
- Latency p50/p99 (linear percentiles) and fallback counts over every row of the window,
  resolved or not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.ops.monitor import trade_returns
from engine.research.metrics import classification_metrics
from engine.trading.backtest import DEFAULT_FEE
from models import CLASSES

if TYPE_CHECKING:
    import duckdb

DEFAULT_LAST = 500
_CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}


@dataclass(frozen=True)
class CalibrationBin:
    """One reliability bin: predicted-class probabilities in [lower, upper) (the last bin
    includes 1.0); confidence and accuracy are NaN for an empty bin."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


@dataclass(frozen=True)
class LiveMetrics:
    """A model's live record over a window of its rows (see the module docstring)."""

    n_predictions: int  # rows in the window
    n_resolved: int  # of them, with an outcome
    n_pending: int  # of them, without one yet
    n_scored: int  # resolved rows with an answer (probs): what the classification scores
    accuracy: float
    macro_f1: float
    log_loss: float
    calibration: tuple[CalibrationBin, ...]
    ece: float  # expected calibration error
    n_acted: int  # acted buy/sell signals in the window, resolved or not
    n_acted_resolved: int
    hit_rate: float  # of the resolved acted signals
    n_trades: int  # resolved acted buys
    pnl_after_fees: float  # sum of their returns after fees
    pnl_after_fees_mean: float
    own_signals: int  # resolved buy/sell actions of the model itself, acted or not
    own_hit_rate: float
    own_trades: int
    own_pnl_after_fees: float
    own_pnl_after_fees_mean: float
    latency_p50_ms: float
    latency_p99_ms: float
    fallbacks: int
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    fee: float = DEFAULT_FEE

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON: NaN and infinities are None."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> tuple[tuple[CalibrationBin, ...], float]:
    """Reliability bins of equal width over [0, 1] and the expected calibration error
    (NaN without rows)."""
    if bins < 1:
        raise ValueError(f"calibration bins must be >= 1, got {bins}")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)
    index = np.clip(np.floor(confidence * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_confidence = np.bincount(index, weights=confidence, minlength=bins)
    sum_correct = np.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = sum_confidence / counts
        accuracy = sum_correct / counts
    out = tuple(
        CalibrationBin(
            lower=float(edges[i]),
            upper=float(edges[i + 1]),
            count=int(counts[i]),
            confidence=float(mean_confidence[i]),
            accuracy=float(accuracy[i]),
        )
        for i in range(bins)
    )
    n = int(counts.sum())
    if n == 0:
        return out, float("nan")
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    return out, float(np.sum(counts[filled] * gaps) / n)


def _signals(
    actions: np.ndarray, outcome: np.ndarray, fee: float
) -> tuple[int, float, int, float, float]:
    """(signals, hit rate, trades, PnL sum, PnL mean) of buy/sell `actions` with outcomes."""
    signal = np.isin(actions, ("buy", "sell"))
    actions, outcome = actions[signal], outcome[signal]
    hits = ((actions == "buy") & (outcome > 0)) | ((actions == "sell") & (outcome < 0))
    hit_rate = float(hits.mean()) if len(actions) else float("nan")
    pnl = trade_returns(actions, outcome, fee)
    pnl = pnl[~np.isnan(pnl)]
    total = float(pnl.sum()) if len(pnl) else float("nan")
    mean = float(pnl.mean()) if len(pnl) else float("nan")
    return len(actions), hit_rate, len(pnl), total, mean


def compute_live_metrics(
    frame: pd.DataFrame, *, fee: float = DEFAULT_FEE, bins: int = 10
) -> LiveMetrics:
    """LiveMetrics of a frame of live rows (store.predictions.load_live_predictions' columns:
    ts, probs, action, acted, latency_ms, fallback, label_resolved, outcome_return)."""
    if not 0.0 <= fee < 1.0:
        raise ValueError(f"fee is a fraction per side, 0 <= fee < 1; got {fee}")
    n = len(frame)
    nan = float("nan")
    labels = frame["label_resolved"].to_numpy(dtype=object) if n else np.empty(0, dtype=object)
    resolved = np.array([v in _CLASS_INDEX for v in labels], dtype=bool)
    outcome = (
        pd.to_numeric(frame["outcome_return"], errors="coerce").to_numpy(np.float64)
        if n
        else np.empty(0)
    )
    actions = (
        frame["action"].astype(object).where(frame["action"].notna(), "").to_numpy(dtype=object)
        if n
        else np.empty(0, dtype=object)
    )
    acted = frame["acted"].fillna(False).to_numpy(dtype=bool) if n else np.empty(0, dtype=bool)

    # classification over resolved rows with an answer
    probs_column = list(frame["probs"]) if n else []
    answered = np.array([_is_probs(p) for p in probs_column], dtype=bool)
    scored = resolved & answered
    accuracy = macro_f1 = log_loss = nan
    calibration, ece = calibration_bins(np.empty(0), np.empty(0), bins)
    if scored.any():
        proba = np.array([probs_column[i] for i in np.flatnonzero(scored)], dtype=np.float64)
        y_true = np.array([_CLASS_INDEX[v] for v in labels[scored]], dtype=np.int64)
        y_pred = proba.argmax(axis=1)
        found = classification_metrics(y_true, y_pred, proba)
        accuracy, macro_f1, log_loss = found["accuracy"], found["f1_macro"], found["log_loss"]
        confidence = proba[np.arange(len(proba)), y_pred]
        calibration, ece = calibration_bins(confidence, y_pred == y_true, bins)

    # signals: the emitted ones, and the model's own
    acted_signal = acted & np.isin(actions, ("buy", "sell"))
    with_outcome = resolved & np.isfinite(outcome)
    n_acted_resolved, hit_rate, n_trades, pnl, pnl_mean = _signals(
        actions[acted_signal & with_outcome], outcome[acted_signal & with_outcome], fee
    )
    own = _signals(actions[with_outcome], outcome[with_outcome], fee)

    latency = (
        pd.to_numeric(frame["latency_ms"], errors="coerce").to_numpy(np.float64)
        if n
        else np.empty(0)
    )
    latency = latency[np.isfinite(latency)]
    p50, p99 = (
        (float(np.percentile(latency, 50)), float(np.percentile(latency, 99)))
        if len(latency)
        else (nan, nan)
    )
    reasons: dict[str, int] = {}
    if n:
        counts = frame["fallback"].dropna().astype(str).value_counts()
        reasons = {str(k): int(v) for k, v in counts.sort_index().items()}
    ts = pd.to_datetime(frame["ts"], utc=True) if n else None
    return LiveMetrics(
        n_predictions=n,
        n_resolved=int(resolved.sum()),
        n_pending=int(n - resolved.sum()),
        n_scored=int(scored.sum()),
        accuracy=accuracy,
        macro_f1=macro_f1,
        log_loss=log_loss,
        calibration=calibration,
        ece=ece,
        n_acted=int(acted_signal.sum()),
        n_acted_resolved=n_acted_resolved,
        hit_rate=hit_rate,
        n_trades=n_trades,
        pnl_after_fees=pnl,
        pnl_after_fees_mean=pnl_mean,
        own_signals=own[0],
        own_hit_rate=own[1],
        own_trades=own[2],
        own_pnl_after_fees=own[3],
        own_pnl_after_fees_mean=own[4],
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        fallbacks=sum(reasons.values()),
        fallback_reasons=reasons,
        first_ts=None if ts is None else ts.min().to_pydatetime(),
        last_ts=None if ts is None else ts.max().to_pydatetime(),
        fee=fee,
    )


def _is_probs(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == len(CLASSES)


def live_metrics(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    *,
    market: str | None = None,
    unit: str | None = None,
    last: int = DEFAULT_LAST,
    fee: float = DEFAULT_FEE,
    bins: int = 10,
) -> LiveMetrics:
    """LiveMetrics of model `model_id`'s newest `last` live rows (of one market/unit when
    given), resolved or not."""
    from store.predictions import load_live_predictions

    if last < 1:
        raise ValueError(f"the live metrics' window must hold >= 1 row, got last={last}")
    frame = load_live_predictions(con, model_id, market=market, unit=unit, last=last)
    return compute_live_metrics(frame, fee=fee, bins=bins)
