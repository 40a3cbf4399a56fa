"""Workstation operations on the live prediction log (issue 11): resolving outcomes and
reading a model's live rows; `LiveMetricsInfo`, the live metrics every face shows (the
registry's `model_metrics` answers them as `live`).

- `outcomes_resolve` (write): resolves every pending live prediction whose label horizon
  the stored candles now cover, with each model's own label spec (engine.ops.outcomes).
- `prediction_log` (read): a model's live rows, newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, operation

if TYPE_CHECKING:
    import duckdb

    from engine.ops.live_metrics import LiveMetrics

LIVE_WINDOW = 500  # the newest live rows the live metrics cover unless asked otherwise


class CalibrationBinInfo(BaseModel):
    """Predicted-class probabilities in [lower, upper) (the last bin includes 1): how many,
    their mean, and how often the predicted class was right (null: an empty bin)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


class LiveMetricsInfo(BaseModel):
    """A model's live record over its newest live rows (engine.ops.live_metrics): outcome
    metrics of the resolved rows, latency and fallbacks of all of them; null: undefined
    (nothing resolved, no trade)."""

    n_predictions: int = Field(description="Live rows in the window.")
    n_resolved: int
    n_pending: int
    n_scored: int = Field(description="Resolved rows with an answer (probabilities).")
    accuracy: float | None
    macro_f1: float | None
    log_loss: float | None
    calibration: list[CalibrationBinInfo] = Field(
        description="Reliability bins of the predicted class's probability."
    )
    ece: float | None = Field(description="Expected calibration error.")
    n_acted: int = Field(description="Buy/sell signals the engine emitted from this model.")
    n_acted_resolved: int
    hit_rate: float | None = Field(
        description="Resolved acted signals whose direction the outcome confirmed."
    )
    n_trades: int = Field(description="Resolved acted buys: long over the label horizon.")
    pnl_after_fees: float | None = Field(description="Sum of their returns after fees.")
    pnl_after_fees_mean: float | None
    own_signals: int = Field(description="Resolved buy/sell actions of the model, acted or not.")
    own_hit_rate: float | None
    own_trades: int
    own_pnl_after_fees: float | None
    own_pnl_after_fees_mean: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    fallbacks: int
    fallback_reasons: dict[str, int]
    first_ts: datetime | None
    last_ts: datetime | None
    fee: float

    @classmethod
    def of(cls, metrics: LiveMetrics) -> LiveMetricsInfo:
        return cls.model_validate(metrics.to_dict())


def live_metrics_info(
    con: duckdb.DuckDBPyConnection, model_id: int, *, last: int = LIVE_WINDOW
) -> LiveMetricsInfo | None:
    """The live metrics of a model's newest `last` rows; None when it has no live row."""
    from engine.ops.live_metrics import live_metrics

    metrics = live_metrics(con, model_id, last=last)
    return LiveMetricsInfo.of(metrics) if metrics.n_predictions else None


class OutcomesResolveRequest(Request):
    models: list[str] | None = Field(
        None, description="Model references to resolve (id, name, name@version); all when absent."
    )
    markets: list[str] | None = Field(None, description="Markets to resolve; all when absent.")


class OutcomesResolved(Response):
    """What one resolve did: rows resolved, live rows still pending (of the models and
    markets asked), groups (model, market, unit) examined; models whose rows stay pending
    because the registry no longer holds them."""

    resolved: int
    pending: int
    groups: int
    seconds: float
    unknown_models: list[int]


class PredictionLogRequest(Request):
    model: str = Field(
        description="Model: id, name (newest version), name@version or name@<alias>."
    )
    market: str | None = Field(None, description="Only this market's rows.")
    unit: str | None = Field(None, description="Only this unit's rows.")
    limit: int = Field(100, ge=1, le=10000, description="At most this many newest rows.")
    resolved: bool | None = Field(
        None, description="true: only resolved rows; false: only pending ones; absent: both."
    )


class PredictionRow(BaseModel):
    """One live prediction: the candle decided on (ts), the model's answer (probs: sell,
    hold, buy; null with a fallback reason), its thresholded action, whether the engine acted
    on it, and once resolved the label and the close-to-close return over the horizon."""

    ts: datetime
    market: str
    unit: str
    role: str | None
    mode: str | None
    probs: list[float] | None
    action: str | None
    confidence: float | None
    threshold: float | None
    acted: bool | None
    latency_ms: float | None
    fallback: str | None
    label_resolved: str | None
    outcome_return: float | None
    resolved_at: datetime | None


class PredictionLog(Response):
    """A model's live rows, newest first."""

    model: str
    model_id: int
    rows: list[PredictionRow]


def _value(value: Any) -> Any:
    """A frame cell as JSON carries it: NaN, NaT and pandas' NA are null."""
    import pandas as pd

    if isinstance(value, (list, tuple)):
        return value
    if value is None or pd.isna(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, float):
        from engine.service.registry import finite

        return finite(value)
    return value


class OutcomeOps(StoreHolder):
    @operation("write")
    def outcomes_resolve(self, request: OutcomesResolveRequest) -> OutcomesResolved:
        """Resolve the live predictions whose label horizon the stored candles now cover."""
        from engine.ops.outcomes import resolve_outcomes
        from engine.service.registry import resolve
        from engine.upbit.markets import check_market

        con = self.con()
        model_ids = None
        if request.models is not None:
            model_ids = [resolve(con, ref).id for ref in request.models]
        markets = None if request.markets is None else [check_market(m) for m in request.markets]
        report = resolve_outcomes(con, model_ids=model_ids, markets=markets)
        return OutcomesResolved(**report.to_dict())

    @operation("read")
    def prediction_log(self, request: PredictionLogRequest) -> PredictionLog:
        """A model's live predictions, newest first (with their outcomes once resolved)."""
        from engine.service.registry import resolve
        from engine.upbit.markets import check_market, check_unit
        from store.predictions import load_live_predictions

        con = self.con()
        record = resolve(con, request.model)
        frame = load_live_predictions(
            con,
            record.id,
            market=None if request.market is None else check_market(request.market),
            unit=None if request.unit is None else check_unit(request.unit),
            last=request.limit,
            resolved=request.resolved,
        )
        fields = list(PredictionRow.model_fields)
        rows = [
            PredictionRow(**{name: _value(row[name]) for name in fields})
            for row in frame[fields].iloc[::-1].to_dict("records")
        ]
        return PredictionLog(model=record.ref, model_id=record.id, rows=rows)
