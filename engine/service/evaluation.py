"""Workstation operations that score a model or a rule on stored candles: `evaluate`
(held-out metrics beside the baselines, calibration, importance; or walk-forward retraining
with mean ± std) and `backtest` (a rule's or a model's signals beside buy-and-hold and
no-trade, with fees, slippage and the trade lists).

The numbers are `engine.training.evaluation`'s and `engine.trading.backtest`'s; these
operations turn them into JSON-safe responses (NaN is null, durations ISO 8601) and carry
the warnings a command prints, so every face shows the same thing.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.service.base import StoreHolder
from engine.service.core import Request, Response, ServiceError, operation
from engine.service.registry import ModelRef, canonical, finite, finite_metrics

if TYPE_CHECKING:
    from engine.trading.backtest import BacktestReport

Value = float | str | None
Threshold = Field(0.5, ge=0.0, le=1.0, description="Confidence a buy/sell must reach, in [0, 1].")
# engine.trading.backtest.DEFAULT_FEE; a literal keeps this module free of pandas at import
DEFAULT_FEE = 0.0005


def json_value(value: Any) -> Value:
    """A metric as JSON carries it: NaN/NaT null, durations ISO 8601, numbers as floats."""
    if value is None:
        return None
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat) and not isinstance(value, int | float):
        text = isoformat()
        return None if text == "NaT" else str(text)
    if isinstance(value, int | float) or hasattr(value, "item"):
        return finite(value)
    return str(value)


def _ordered(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise ValueError(f"start {start:%Y-%m-%d %H:%M} is not before end {end:%Y-%m-%d %H:%M}")


# --- evaluate -----------------------------------------------------------------------------------
class EvaluateRequest(Request):
    model: str = ModelRef
    start: datetime | None = Field(None, description="First candle (UTC); default: its test part.")
    end: datetime | None = Field(None, description="End, exclusive (UTC).")
    walk_forward: bool = Field(False, description="Retrain per walk-forward fold instead.")
    folds: int = Field(5, ge=2, le=50, description="Walk-forward folds.")
    threshold: float = Threshold

    @model_validator(mode="after")
    def _range_or_folds(self) -> EvaluateRequest:
        if self.walk_forward and (self.start is not None or self.end is not None):
            raise ValueError("walk-forward uses the whole history: leave start and end out")
        return self


class ReliabilityRow(BaseModel):
    bin: str
    rows: int
    confidence: float | None
    accuracy: float | None
    gap: float | None


class HeldOutEvaluation(BaseModel):
    model: str
    model_id: int
    note: str | None = Field(description="Set when a bad artifact made it use an earlier version.")
    rows: int
    first: datetime
    last: datetime
    overlaps_training: bool
    metrics: dict[str, dict[str, float | None]]
    trading: dict[str, dict[str, Value]]
    reliability: list[ReliabilityRow] | None
    confusion: dict[str, dict[str, int]] | None = Field(
        description="confusion[predicted][true]: counts."
    )
    importance: list[tuple[str, float]]


class WalkForwardResult(BaseModel):
    model: str
    folds: list[dict[str, float | None]]
    mean: dict[str, float | None]
    std: dict[str, float | None]


class EvaluationResult(Response):
    """`held_out` (one range) or `walk_forward` (folds), as `mode` says."""

    mode: Literal["held_out", "walk_forward"]
    held_out: HeldOutEvaluation | None = None
    walk_forward: WalkForwardResult | None = None


# --- backtest -----------------------------------------------------------------------------------
class BacktestRequest(Request):
    """A rule (`strategy`) on `market`, or a model's signals (`model`; market defaults to the
    model's, start to its test part so nothing it trained on counts)."""

    market: str | None = Field(None, description="Market code; required for a rule.")
    strategy: str = Field("sma-cross", description="The rule, when no model is given.")
    unit: str = Field("1", description="Candle unit of a rule's backtest (a model has its own).")
    start: datetime | None = Field(None, description="First candle (UTC, inclusive).")
    end: datetime | None = Field(None, description="End (UTC, exclusive); default: all.")
    fee: float = Field(DEFAULT_FEE, description="Fee per side as a fraction (Upbit KRW: 0.0005).")
    slippage: float = Field(0.0, description="Slippage per fill in basis points, against you.")
    fast: int = Field(10, description="sma-cross: fast SMA length in candles.")
    slow: int = Field(30, description="sma-cross: slow SMA length in candles.")
    model: str | None = Field(None, description="Backtest this model's signals instead of a rule.")
    threshold: float = Threshold
    trades: bool = Field(True, description="Include every result's trade list.")


class Trade(BaseModel):
    """One round trip at fill prices; `return` after fees, `pnl` the equity it added."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    entry_ts: datetime
    entry_price: float
    exit_ts: datetime
    exit_price: float
    candles: int
    return_: float | None = Field(alias="return")
    pnl: float | None
    exit_reason: str


class BacktestResult(Response):
    """The strategy (first) beside buy-and-hold and no-trade (and sma-cross for a model)."""

    market: str
    unit: str
    strategy: str
    first: datetime
    last: datetime
    candles: int
    fee: float
    slippage_bps: float
    note: str | None = Field(description="Set when a bad artifact made it use an earlier version.")
    warnings: list[str] = Field(description="E.g. a start that reaches into the training part.")
    fills: str
    results: dict[str, dict[str, Value]] = Field(description="Metrics by result name.")
    trades: dict[str, list[Trade]] | None = Field(description="Trades by result name.")


def _trades(report: BacktestReport) -> dict[str, list[Trade]]:
    return {
        name: [
            Trade.model_validate(
                {
                    **row,
                    "entry_ts": row["entry_ts"].to_pydatetime(),
                    "exit_ts": row["exit_ts"].to_pydatetime(),
                    "return": finite(row["return"]),
                    "pnl": finite(row["pnl"]),
                    "exit_reason": str(row["exit_reason"]),
                }
            )
            for row in result.trades.to_dict("records")
        ]
        for name, result in report.results.items()
    }


class EvaluationOps(StoreHolder):
    @operation("read")
    def evaluate(self, request: EvaluateRequest) -> EvaluationResult:
        """Evaluate a model on held-out data (its test part by default) beside the baselines,
        or retrain it per walk-forward fold (mean ± std)."""
        from engine.training.evaluation import evaluate_model, walk_forward_evaluate

        con = self.con()
        ref = canonical(con, request.model)
        if request.walk_forward:
            wf = walk_forward_evaluate(con, ref, request.folds, threshold=request.threshold)
            return EvaluationResult(
                mode="walk_forward",
                walk_forward=WalkForwardResult(
                    model=wf.model,
                    folds=[{k: finite(v) for k, v in f.items()} for f in wf.folds],
                    mean={k: finite(v) for k, v in wf.mean.items()},
                    std={k: finite(v) for k, v in wf.std.items()},
                ),
            )
        _ordered(request.start, request.end)
        ev = evaluate_model(con, ref, request.start, request.end, threshold=request.threshold)
        reliability = None
        if ev.reliability is not None:
            reliability = [
                ReliabilityRow(
                    bin=str(r.bin),
                    rows=int(r.rows),
                    confidence=finite(r.confidence),
                    accuracy=finite(r.accuracy),
                    gap=finite(r.gap),
                )
                for r in ev.reliability.itertuples(index=False)
            ]
        confusion = None
        if ev.confusion is not None:
            confusion = {
                str(column): {str(k): int(v) for k, v in ev.confusion[column].items()}
                for column in ev.confusion.columns
            }
        return EvaluationResult(
            mode="held_out",
            held_out=HeldOutEvaluation(
                model=ev.model,
                model_id=ev.model_id,
                note=ev.note,
                rows=ev.rows,
                first=ev.first.to_pydatetime(),
                last=ev.last.to_pydatetime(),
                overlaps_training=ev.overlaps_training,
                metrics=finite_metrics(ev.metrics),
                trading={
                    k: {m: json_value(v) for m, v in d.items()} for k, d in ev.trading.items()
                },
                reliability=reliability,
                confusion=confusion,
                importance=[(str(n), float(v)) for n, v in ev.importance],
            ),
        )

    @operation("read")
    def backtest(self, request: BacktestRequest) -> BacktestResult:
        """Backtest a rule or a model's signals on stored candles beside buy-and-hold and
        no-trade, with fees and slippage: metrics and trades."""
        from engine.trading.backtest import run_backtest
        from engine.upbit.markets import check_market

        _ordered(request.start, request.end)
        con = self.con()
        market = check_market(request.market) if request.market else None
        warnings: list[str] = []
        if request.model is not None:
            from engine.training.batch import model_backtest
            from engine.training.held_out import held_out_start

            ref = canonical(con, request.model)
            held_out = held_out_start(con, ref, request.start)
            if held_out.warning:
                warnings.append(held_out.warning)
            report = model_backtest(
                con,
                ref,
                market=market,
                start=held_out.start,
                end=request.end,
                threshold=request.threshold,
                fee=request.fee,
                slippage_bps=request.slippage,
                fast=request.fast,
                slow=request.slow,
                preloaded=held_out.preloaded,
            )
        else:
            if market is None:
                raise ServiceError(
                    "a rule's backtest needs a market", "give market, e.g. KRW-BTC, or a model"
                )
            report = run_backtest(
                con,
                request.strategy,
                market=market,
                unit=request.unit,
                start=request.start,
                end=request.end,
                fee=request.fee,
                slippage_bps=request.slippage,
                fast=request.fast,
                slow=request.slow,
            )
        return BacktestResult(
            market=report.market,
            unit=report.unit,
            strategy=report.strategy,
            first=report.first.to_pydatetime(),
            last=report.last.to_pydatetime(),
            candles=report.candles,
            fee=report.fee,
            slippage_bps=report.slippage_bps,
            note=report.note,
            warnings=warnings,
            fills="next candle's open; an open position is sold at the last close",
            results={
                name: {key: json_value(value) for key, value in metrics.items()}
                for name, metrics in report.metrics().items()
            },
            trades=_trades(report) if request.trades else None,
        )
