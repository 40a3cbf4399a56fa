"""Workstation operations on champion vs challengers from the shadow record, and the promotion
gate (issue 11): `model_ab` shows a market/unit's champion, challengers and shadows side by
side (live metrics, each one's evidence against the champion, the gate's verdict with every
number and its reason); `gate_run` runs the gate now (with auto-promotion on, the best
challenger it promotes takes the champion alias, moved by 'gate'; otherwise a
recommendation). The rules are engine.ops.ab's and engine.ops.gate's."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, operation
from engine.service.registry import AliasEventInfo, event_info

if TYPE_CHECKING:
    from engine.ops.ab import ABReport, Contender, GateRun


def plain(value: Any) -> Any:
    """`value` as JSON carries it: NaN and ±inf are null, containers walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# --- requests and responses ---------------------------------------------------------------------
class ABRequest(Request):
    market: str = Field(description="Market, e.g. KRW-BTC.")
    unit: str = Field("1", description="Candle unit.")


class CheckInfo(BaseModel):
    """One condition of the gate: its value against its threshold."""

    name: str = Field(description="resolved, trades, loss (DM), deflated_sharpe or drawdown.")
    passed: bool
    value: float | None
    threshold: float | None
    text: str


class GateVerdictInfo(BaseModel):
    """The gate's decision on one challenger (or, for display, a shadow)."""

    verdict: str = Field(description="promote, keep or insufficient (not enough evidence).")
    reason: str
    checks: list[CheckInfo]
    dm_statistic: float | None = Field(description="HLN-corrected DM statistic (< 0 favours it).")
    dm_p_value: float | None = Field(description="One-sided: the challenger's loss is lower.")
    dm_note: str
    deflated_sharpe: float | None
    sharpe: float | None = Field(description="Per trade.")
    sharpe_benchmark: float | None = Field(description="Expected best Sharpe of the candidates.")
    dsr_note: str
    champion_loss: float | None
    challenger_loss: float | None
    champion_drawdown: float | None
    challenger_drawdown: float | None
    n_candidates: int


class EvidenceInfo(BaseModel):
    """A challenger's shadow record against the champion on the same candles."""

    role: str | None = Field(description="Its rows made in this role count (null: any role).")
    since: datetime | None = Field(description="Only candles from here (null: every one).")
    candles: int = Field(description="Paired: both resolved, both answered, out of sample.")
    other_roles: int = Field(description="Its resolved rows left out: made in another role.")
    resolved_both: int
    champion_unanswered: int = Field(description="Left out: the champion gave no answer.")
    challenger_unanswered: int = Field(description="Left out: the challenger gave no answer.")
    in_sample: int = Field(description="Left out: a model trained or validated on them.")
    first_ts: datetime | None
    last_ts: datetime | None
    horizon: int
    same_labels: bool
    fee: float
    champion_log_loss: float | None
    challenger_log_loss: float | None
    champion_error_rate: float | None
    challenger_error_rate: float | None
    champion_trades: int
    challenger_trades: int
    champion_mean_trade: float | None
    challenger_mean_trade: float | None
    champion_return: float | None = Field(description="Its buys compounded, after fees.")
    challenger_return: float | None
    note: str


class LookInfo(BaseModel):
    """A checkpoint of the growing record: the gate judges its first `candles` paired
    candles at `dm_level` (the configured level spent over checkpoints 0, 1, 2, ...)."""

    index: int
    candles: int
    dm_level: float


class ContenderInfo(BaseModel):
    model: str
    model_id: int
    role: str = Field(description="champion, challenger or shadow.")
    since: datetime | None
    live: dict[str, Any] | None = Field(description="Live metrics (null: no live rows yet).")
    evidence: EvidenceInfo | None = Field(description="Against the champion (null for it).")
    gate: GateVerdictInfo | None
    look: LookInfo | None = Field(
        description="The checkpoint the verdict was made at (null: before the first)."
    )
    promotable: bool = Field(description="A challenger: the gate may promote it.")


class ABReportInfo(Response):
    """Champion, challengers and shadows of a market/unit side by side."""

    market: str
    unit: str
    auto_promote: bool
    gate_config: dict[str, float | int]
    n_candidates: int = Field(description="Models ever tried as challenger (the DSR's trials).")
    champion: ContenderInfo | None
    challengers: list[ContenderInfo]
    shadows: list[ContenderInfo]
    recommended: str | None = Field(description="The challenger the gate would promote.")
    note: str


class GateRunInfo(Response):
    """What the gate did now: moved the champion alias (auto-promotion) or recommends."""

    market: str
    unit: str
    checked_at: datetime
    auto_promote: bool
    moved: bool
    chosen: str | None = Field(description="Promoted (moved) or recommended; null: none.")
    chosen_id: int | None
    previous: str | None = Field(description="The champion before the run.")
    text: str
    events: list[AliasEventInfo]
    report: ABReportInfo


# --- conversions ------------------------------------------------------------------------------
def contender_info(contender: Contender) -> ContenderInfo:
    decision = contender.decision
    gate = None
    if decision is not None:
        gate = GateVerdictInfo(
            verdict=decision.verdict,
            reason=decision.reason,
            checks=[
                CheckInfo(
                    name=c.name,
                    passed=c.passed,
                    value=plain(float(c.value)),
                    threshold=plain(float(c.threshold)),
                    text=c.text,
                )
                for c in decision.checks
            ],
            dm_statistic=plain(decision.dm.statistic),
            dm_p_value=plain(decision.dm.p_value),
            dm_note=decision.dm.note,
            deflated_sharpe=plain(decision.dsr.dsr),
            sharpe=plain(decision.dsr.sharpe),
            sharpe_benchmark=plain(decision.dsr.benchmark),
            dsr_note=decision.dsr.note,
            champion_loss=plain(decision.champion_loss),
            challenger_loss=plain(decision.challenger_loss),
            champion_drawdown=plain(decision.champion_drawdown),
            challenger_drawdown=plain(decision.challenger_drawdown),
            n_candidates=decision.n_candidates,
        )
    evidence = contender.evidence
    return ContenderInfo(
        model=contender.ref,
        model_id=contender.model_id,
        role=contender.role,
        since=contender.since,
        live=plain(contender.live),
        evidence=EvidenceInfo(**plain(evidence.summary())) if evidence is not None else None,
        gate=gate,
        look=LookInfo(**contender.look.__dict__) if contender.look else None,
        promotable=contender.promotable,
    )


def report_info(report: ABReport) -> ABReportInfo:
    best = report.best
    return ABReportInfo(
        market=report.market,
        unit=report.unit,
        auto_promote=report.auto_promote,
        gate_config=dict(report.config.__dict__),
        n_candidates=report.n_candidates,
        champion=contender_info(report.champion) if report.champion else None,
        challengers=[contender_info(c) for c in report.challengers],
        shadows=[contender_info(c) for c in report.shadows],
        recommended=best.ref if best else None,
        note=report.note,
    )


def run_info(run: GateRun) -> GateRunInfo:
    return GateRunInfo(
        market=run.market,
        unit=run.unit,
        checked_at=run.checked_at,
        auto_promote=run.auto_promote,
        moved=run.moved,
        chosen=run.chosen.ref if run.chosen else None,
        chosen_id=run.chosen.model_id if run.chosen else None,
        previous=run.previous,
        text=run.text,
        events=[event_info(e) for e in run.events],
        report=report_info(run.report),
    )


class ABOps(StoreHolder):
    @operation("read")
    def model_ab(self, request: ABRequest) -> ABReportInfo:
        """Champion vs challengers (and shadows) of a market/unit: live metrics, shadow
        evidence on the same candles and the promotion gate's verdict with its reason."""
        from engine.ops.ab import ab_report
        from engine.ops.settings import get_settings
        from engine.upbit.markets import check_market, check_unit

        market, unit = check_market(request.market), check_unit(request.unit)
        con = self.con()
        return report_info(ab_report(con, market, unit, get_settings(con, market, unit)))

    @operation("write")
    def gate_run(self, request: ABRequest) -> GateRunInfo:
        """Run the promotion gate of a market/unit now: with auto-promotion on, the best
        challenger it promotes becomes champion (by 'gate'); otherwise a recommendation."""
        from engine.ops.ab import gate_check
        from engine.ops.settings import get_settings
        from engine.upbit.markets import check_market, check_unit

        market, unit = check_market(request.market), check_unit(request.unit)
        con = self.con()
        return run_info(gate_check(con, market, unit, get_settings(con, market, unit)))
