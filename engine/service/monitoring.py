"""Workstation operations on model-operation settings per market/unit, feature drift (PSI, KS)
and performance drift events (issue 11).

- `ops_settings` / `ops_settings_set`: what a market/unit's model operations do (the
  promotion gate's thresholds and whether it promotes by itself, champion expiry, the
  dissimilarity gate, retraining); `engine.ops.settings.OpsSettings` is their meaning. A
  market/unit without a stored row has the defaults.
- `drift_events`: the performance drift events the live engine's detectors raised (ADWIN or
  Page–Hinkley on each model's resolved correctness and trade PnL), newest first, and the
  newest recorded feature drift of each model of the market/unit.
- `feature_drift`: PSI and KS per feature of a model's inputs over the newest candles
  against its training reference, computed now and recorded in `drift`. PSI reads by the
  usual bands: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one;
  a feature above 0.2 is flagged. Display only: no decision reads it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, ServiceError, operation
from engine.service.registry import ModelRef, finite, resolve

if TYPE_CHECKING:
    import duckdb

    from engine.ops.settings import OpsSettings

PSI_FLAG = 0.2  # engine.ops.monitor.PSI_FLAG (kept here so the module stays light)


# --- settings ----------------------------------------------------------------------------------
class GateSettings(BaseModel):
    """The promotion gate's thresholds (engine.ops.gate.GateConfig)."""

    min_resolved: int = Field(description="Resolved candles both models predicted, at least.")
    min_trades: int = Field(description="The challenger's acted trades, at least.")
    dm_level: float = Field(description="Promote only when the one-sided DM p-value <= this.")
    dsr_level: float = Field(description="... and the deflated Sharpe ratio >= this.")
    drawdown_margin: float = Field(
        description="... and its max drawdown exceeds the champion's by at most this."
    )


class OpsSettingsInfo(BaseModel):
    auto_promote: bool = Field(
        description="The gate promotes by itself (else its verdict is a recommendation)."
    )
    gate: GateSettings
    max_age_hours: float | None = Field(
        description="A champion trained on data older than this stops deciding (null: never)."
    )
    ood_gate: bool = Field(description="Inputs outside the training distribution go to the rule.")
    ood_max_share: float = Field(
        description="Out of distribution: more than this share of features outside the range."
    )
    schedule: str | None = Field(
        description="Retrain daily, weekly, monthly or every N hours (6h); null: no schedule."
    )
    retrain_on_drift: bool = Field(description="A performance drift event starts a retrain.")


class OpsSettingsRequest(Request):
    market: str = Field(description="Market, e.g. KRW-BTC.")
    unit: str = "1"


class OpsSettingsAnswer(Response):
    """A market/unit's effective settings (stored values over the defaults)."""

    market: str
    unit: str
    stored: bool = Field(description="Settings were stored for it (else all are the defaults).")
    settings: OpsSettingsInfo
    defaults: OpsSettingsInfo


_GATE_FIELDS = ("min_resolved", "min_trades", "dm_level", "dsr_level", "drawdown_margin")


class OpsSettingsSetRequest(Request):
    """A partial update: a field left out (or null) keeps its value; `no_max_age` and
    `no_schedule` remove the maximum age and the schedule."""

    market: str = Field(description="Market, e.g. KRW-BTC.")
    unit: str = "1"
    auto_promote: bool | None = None
    max_age_hours: float | None = Field(None, gt=0, le=24 * 3660, allow_inf_nan=False)
    no_max_age: bool = Field(False, description="Champions never expire.")
    ood_gate: bool | None = None
    ood_max_share: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    schedule: str | None = Field(
        None, description="daily, weekly, monthly or every N hours: 6h (N from 1 to 8784)."
    )
    no_schedule: bool = Field(False, description="No scheduled retraining.")
    retrain_on_drift: bool | None = None
    min_resolved: int | None = Field(None, ge=3, le=10_000_000)
    min_trades: int | None = Field(None, ge=3, le=10_000_000)
    dm_level: float | None = Field(None, gt=0, lt=1)
    dsr_level: float | None = Field(None, gt=0, lt=1)
    drawdown_margin: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from engine.ops.settings import schedule_period

        schedule_period(value)  # ValueError: refused as the field's error
        return value

    @model_validator(mode="after")
    def _one_of_each(self) -> OpsSettingsSetRequest:
        if self.no_max_age and self.max_age_hours is not None:
            raise ValueError("give max_age_hours or no_max_age, not both")
        if self.no_schedule and self.schedule is not None:
            raise ValueError("give schedule or no_schedule, not both")
        return self


def _info(settings: OpsSettings) -> OpsSettingsInfo:
    return OpsSettingsInfo.model_validate(settings.to_dict())


def _market_unit(market: str, unit: str) -> tuple[str, str]:
    from engine.upbit.markets import check_market, check_unit

    return check_market(market), check_unit(unit)


# --- drift -------------------------------------------------------------------------------------
class DriftEventInfo(BaseModel):
    """A performance drift event: `stream`'s mean moved from `before_mean` to `after_mean`."""

    id: int
    ts: datetime = Field(description="The candle whose resolved outcome raised it.")
    detected_at: datetime
    market: str
    unit: str
    model: str | None = Field(description="name@version (null: the model was deleted).")
    model_id: int
    stream: str = Field(description="correctness (0/1 per resolved prediction) or pnl (trades).")
    detector: str = Field(description="adwin or page-hinkley.")
    before_mean: float | None
    after_mean: float | None
    observations: int | None
    action: str | None = Field(description="What followed: none, a retrain started, ...")
    detail: str | None


class FeatureDriftInfo(BaseModel):
    feature: str
    psi: float | None = Field(description="< 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.")
    ks: float | None = Field(description="The two-sample KS statistic.")
    ks_p_value: float | None = Field(None, description="Only when computed now.")
    flagged: bool = Field(description=f"PSI above {PSI_FLAG}.")


class ModelFeatureDrift(BaseModel):
    """A model's newest recorded feature drift."""

    model: str | None
    model_id: int
    ts: datetime = Field(description="The newest candle compared.")
    flagged: list[str] = Field(description=f"Features whose PSI is above {PSI_FLAG}.")
    features: list[FeatureDriftInfo]


class DriftRequest(Request):
    market: str = Field(description="Market, e.g. KRW-BTC.")
    unit: str = "1"
    model: str | None = Field(None, description="Only this model (id, name@version, alias).")
    limit: int = Field(50, ge=1, le=10_000, description="At most this many newest events.")


class DriftAnswer(Response):
    """A market/unit's drift events, newest first, and each model's newest feature drift."""

    market: str
    unit: str
    events: list[DriftEventInfo]
    feature_drift: list[ModelFeatureDrift]


class FeatureDriftRequest(Request):
    model: str = ModelRef
    last: int = Field(500, ge=50, le=100_000, description="Compare the newest this many candles.")


class FeatureDriftAnswer(Response):
    """PSI and KS per feature over the newest candles against the training reference
    (recorded in `drift`; display only). PSI bands: < 0.1 stable, 0.1-0.25 moderate,
    > 0.25 a significant shift; `flagged` lists the features above 0.2."""

    model: str
    model_id: int
    market: str
    unit: str
    ts: datetime = Field(description="The newest candle compared.")
    rows: int = Field(description="Recent candles compared.")
    reference_rows: int = Field(description="Training rows of the reference.")
    train_from: datetime
    train_to: datetime
    flagged: list[str]
    features: list[FeatureDriftInfo]


def _refs(con: duckdb.DuckDBPyConnection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = con.execute(
        f"SELECT id, name || '@' || version FROM models WHERE id IN ({marks})", sorted(ids)
    ).fetchall()
    return {int(i): str(ref) for i, ref in rows}


def _column_order(con: duckdb.DuckDBPyConnection, model_id: int) -> dict[str, int]:
    """The model's feature columns by position (empty when the model is gone)."""
    from store.registry import get_model

    try:
        columns = get_model(con, model_id).params.get("columns", [])
    except KeyError:
        return {}
    return {str(c): i for i, c in enumerate(columns)}


def _drift_info(feature: str, psi: Any, ks: Any, p_value: Any = None) -> FeatureDriftInfo:
    value = finite(psi)
    return FeatureDriftInfo(
        feature=feature,
        psi=value,
        ks=finite(ks),
        ks_p_value=finite(p_value),
        flagged=value is not None and value > PSI_FLAG,
    )


# --- the operations -----------------------------------------------------------------------------
class MonitoringOps(StoreHolder):
    @operation("read")
    def ops_settings(self, request: OpsSettingsRequest) -> OpsSettingsAnswer:
        """A market/unit's model-operation settings (gate, expiry, OOD gate, retraining)."""
        from engine.ops.settings import OpsSettings, get_settings
        from store.ops_settings import read_settings

        market, unit = _market_unit(request.market, request.unit)
        con = self.con()
        return OpsSettingsAnswer(
            market=market,
            unit=unit,
            stored=bool(read_settings(con, market, unit)),
            settings=_info(get_settings(con, market, unit)),
            defaults=_info(OpsSettings()),
        )

    @operation("write")
    def ops_settings_set(self, request: OpsSettingsSetRequest) -> OpsSettingsAnswer:
        """Change some of a market/unit's model-operation settings (the rest are kept)."""
        from dataclasses import replace

        from engine.ops.gate import GateConfig
        from engine.ops.settings import get_settings, set_settings

        market, unit = _market_unit(request.market, request.unit)
        con = self.con()
        current = get_settings(con, market, unit)
        given = request.model_dump(exclude_none=True)
        changes: dict[str, Any] = {
            name: given[name]
            for name in (
                "auto_promote",
                "max_age_hours",
                "ood_gate",
                "ood_max_share",
                "schedule",
                "retrain_on_drift",
            )
            if name in given
        }
        if request.no_max_age:
            changes["max_age_hours"] = None
        if request.no_schedule:
            changes["schedule"] = None
        gate = {name: given[name] for name in _GATE_FIELDS if name in given}
        if gate:
            changes["gate"] = GateConfig(**{**current.gate.__dict__, **gate})
        try:
            updated = replace(current, **changes)
        except ValueError as exc:  # the request's bounds make this unreachable; say so plainly
            raise ServiceError(str(exc), "see `upquant models settings --help`") from None
        set_settings(con, market, unit, updated)
        return self.ops_settings(OpsSettingsRequest(market=market, unit=unit))

    @operation("read")
    def drift_events(self, request: DriftRequest) -> DriftAnswer:
        """A market/unit's performance drift events and its models' newest feature drift."""
        from store.drift import drift_events, latest_feature_drift

        market, unit = _market_unit(request.market, request.unit)
        con = self.con()
        model_id = None
        if request.model is not None:
            record = resolve(con, request.model)
            if (record.market, record.unit) != (market, unit):
                raise ServiceError(
                    f"{record.ref} is a model of {record.market} unit {record.unit},"
                    f" not of {market} unit {unit}",
                    f"ask for its own market: upquant models drift {record.market}"
                    f" --unit {record.unit}",
                )
            model_id = record.id
        events = drift_events(con, market=market, unit=unit, model_id=model_id, limit=request.limit)
        latest = latest_feature_drift(con, market=market, unit=unit, model_id=model_id)
        refs = _refs(con, {e.model_id for e in events} | set(latest))
        drifts = []
        for mid, rows in latest.items():
            order = _column_order(con, mid)
            rows = sorted(rows, key=lambda r: (order.get(r.feature, len(order)), r.feature))
            features = [_drift_info(r.feature, r.psi, r.ks) for r in rows]
            drifts.append(
                ModelFeatureDrift(
                    model=refs.get(mid),
                    model_id=mid,
                    ts=rows[0].ts,
                    flagged=[f.feature for f in features if f.flagged],
                    features=features,
                )
            )
        return DriftAnswer(
            market=market,
            unit=unit,
            events=[
                DriftEventInfo(
                    id=e.id,
                    ts=e.ts,
                    detected_at=e.detected_at,
                    market=e.market,
                    unit=e.unit,
                    model=refs.get(e.model_id),
                    model_id=e.model_id,
                    stream=e.stream,
                    detector=e.detector,
                    before_mean=finite(e.before_mean),
                    after_mean=finite(e.after_mean),
                    observations=e.observations,
                    action=e.action,
                    detail=e.detail,
                )
                for e in events
            ],
            feature_drift=drifts,
        )

    @operation("write")
    def feature_drift(self, request: FeatureDriftRequest) -> FeatureDriftAnswer:
        """PSI and KS per feature of a model's recent inputs against its training data
        (recorded for display; < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift)."""
        from engine.ops.monitor import ReferenceUnavailable, feature_reference, record_feature_drift

        con = self.con()
        record = resolve(con, request.model)
        try:
            rows = record_feature_drift(con, record, record.market, record.unit, last=request.last)
            reference = feature_reference(con, record)
        except ReferenceUnavailable as exc:
            raise ServiceError(str(exc), exc.hint) from None
        features = [_drift_info(r.feature, r.psi, r.ks, r.ks_p_value) for r in rows]
        return FeatureDriftAnswer(
            model=record.ref,
            model_id=record.id,
            market=record.market,
            unit=record.unit,
            ts=rows[0].ts if rows else reference.train_to.to_pydatetime(),
            rows=max((r.rows for r in rows), default=0),
            reference_rows=reference.rows,
            train_from=reference.train_from.to_pydatetime(),
            train_to=reference.train_to.to_pydatetime(),
            flagged=[f.feature for f in features if f.flagged],
            features=features,
        )
