"""Workstation operations that score a model or a rule on stored candles: `evaluate`
(held-out metrics beside the baselines, calibration, importance; or walk-forward retraining
with mean ± std) and `backtest` (a rule's, a model's or a strategy spec's signals beside
buy-and-hold and no-trade, with fees, slippage and the trade lists; a spec that uses the AI
reads the model's answers over the range from the Workstation's predictor).

A walk-forward evaluation is a job (`EvaluationJobs`): this process, which holds the store,
reads the candles and feature matrix (`engine.training.evaluation.gather_walk_forward`) and
hands them to a `spawn`ed worker (`walk_forward_worker`) that never opens DuckDB, fits every
fold and reports each one; a thread per job records its progress and its result in
`evaluation_runs` (store.evaluation_runs), so the run can be read after the request, after a
restart, or from another process. `evaluate` starts it and waits up to `wait` seconds: done
by then, it answers the result as a synchronous evaluation would; otherwise the run, its
status and its status URL (`evaluation_status`, `evaluation_cancel`). One walk-forward fits at
a time per owner (a second one is `queued`); a cancel, a shutdown (the server's SIGTERM, the
end of a one-shot command) or an owner killed leaves it `interrupted`. Starting one writes
to the store: over HTTP it needs a write-scope token (`EvaluateRequest.writes`).

The numbers are `engine.training.evaluation`'s and `engine.trading.backtest`'s; these
operations turn them into JSON-safe responses (NaN is null, durations ISO 8601) and carry
the warnings a command prints, so every face shows the same thing.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.service.base import StoreHolder
from engine.service.core import Conflict, NotFound, Request, Response, ServiceError, operation
from engine.service.registry import ModelRef, canonical, finite, finite_metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    import duckdb
    import pandas as pd

    from engine.live.inference import LoadedModel
    from engine.service.prediction import PredictionOps
    from engine.trading.backtest import BacktestReport
    from engine.trading.spec import StrategySpec
    from engine.training.evaluation import WalkForwardEvaluation, WalkForwardInputs

Value = float | str | None
Threshold = Field(0.5, ge=0.0, le=1.0, description="Confidence a buy/sell must reach, in [0, 1].")
# engine.trading.backtest.DEFAULT_FEE; a literal keeps this module free of pandas at import
DEFAULT_FEE = 0.0005
# a backtest's equity curves in a response: at most this many points (a year of minutes is
# half a million candles; a plot is a few hundred columns wide)
EQUITY_POINTS = 2000


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
    wait: float = Field(
        5.0,
        ge=0.0,
        le=600.0,
        description="Walk-forward: seconds to wait for the job before answering its run"
        " (202 over HTTP); 0 answers at once.",
    )

    @model_validator(mode="after")
    def _range_or_folds(self) -> EvaluateRequest:
        if self.walk_forward and (self.start is not None or self.end is not None):
            raise ValueError("walk-forward uses the whole history: leave start and end out")
        return self

    @property
    def writes(self) -> bool:
        """A walk-forward starts a job recorded in the store: it needs a write-scope token."""
        return self.walk_forward


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


RunStatus = Literal["queued", "running", "finished", "failed", "interrupted"]


class EvaluationResult(Response):
    """`held_out` (one range) or `walk_forward` (folds), as `mode` says. A walk-forward is a
    job: `run`, `status` and `status_url` name it; `walk_forward` is null while it runs
    (the route answers 202 then)."""

    mode: Literal["held_out", "walk_forward"]
    held_out: HeldOutEvaluation | None = None
    walk_forward: WalkForwardResult | None = None
    run: int | None = None  # the walk-forward's evaluation run
    status: RunStatus | None = None
    status_url: str | None = None

    @property
    def pending(self) -> bool:
        return self.held_out is None and self.walk_forward is None


class EvaluationRunRequest(Request):
    run: int = Field(description="The evaluation run's id.")
    reason: str = Field("cancelled", description="Cancel: recorded as the stopped run's error.")


class EvaluationRunStatus(Response):
    """A walk-forward evaluation run: how far it got, how it ended, its result."""

    run: int
    model: str
    model_id: int
    folds: int
    threshold: float
    status: RunStatus
    folds_done: int
    folds_total: int | None
    progress: float | None = Field(description="folds_done / folds_total.")
    started: datetime
    finished: datetime | None
    error: str | None
    hint: str | None = None
    result: WalkForwardResult | None = None


# --- backtest -----------------------------------------------------------------------------------
class BacktestRequest(Request):
    """A rule (`strategy`) on `market`, a model's signals (`model`; market defaults to the
    model's, start to its test part so nothing it trained on counts), or a strategy spec
    (`strategy_spec`; when it uses the AI, `model` or else the market's champion answers,
    from its test part on likewise)."""

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
    strategy_spec: dict[str, Any] | None = Field(
        None,
        description="Backtest this strategy spec (a spec file's table) instead of a rule; one"
        " that uses the AI reads `model`, else the market's champion.",
    )
    trades: bool = Field(True, description="Include every result's trade list.")
    equity: bool = Field(
        False,
        description="Include every result's equity curve, at most"
        f" {EQUITY_POINTS:,} points (evenly downsampled, first and last candle kept).",
    )


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


class EquityCurves(BaseModel):
    """Every result's equity (1.0 at the start) at the same candles: all of them, or
    `points` of the `candles` evenly spaced (first and last kept) when there are more."""

    ts: list[datetime] = Field(description="The candles' times (UTC), oldest first.")
    values: dict[str, list[float | None]] = Field(description="Equity by result name.")
    candles: int = Field(description="Candles backtested; more than len(ts) when downsampled.")


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
    strategy_spec: str | None = Field(None, description="The strategy spec's name, if one ran.")
    strategy_hash: str | None = Field(None, description="The strategy spec's hash (sha256).")
    model: str | None = Field(None, description="The model a strategy spec read, if any.")
    results: dict[str, dict[str, Value]] = Field(description="Metrics by result name.")
    trades: dict[str, list[Trade]] | None = Field(description="Trades by result name.")
    equity: EquityCurves | None = Field(
        None, description="The equity curves (asked for with `equity`), downsampled."
    )


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


def equity_curves(report: BacktestReport, points: int = EQUITY_POINTS) -> EquityCurves:
    """The report's equity curves at `points` evenly spaced candles at most (see
    EquityCurves), each result read at the first result's candles."""
    import numpy as np

    index = next(iter(report.results.values())).equity.index
    n = len(index)
    at = np.arange(n) if n <= points else np.unique(np.linspace(0, n - 1, points).round())
    at = at.astype(int)
    return EquityCurves(
        ts=[ts.to_pydatetime() for ts in index[at]],
        values={
            name: [finite(v) for v in result.equity.reindex(index).to_numpy()[at]]
            for name, result in report.results.items()
        },
        candles=n,
    )


def walk_forward_result(wf: WalkForwardEvaluation) -> WalkForwardResult:
    """A walk-forward's numbers as JSON carries them (NaN null)."""
    return WalkForwardResult(
        model=wf.model,
        folds=[{k: finite(v) for k, v in f.items()} for f in wf.folds],
        mean={k: finite(v) for k, v in wf.mean.items()},
        std={k: finite(v) for k, v in wf.std.items()},
    )


# how long a stopped worker gets to say so before it is killed (as a training job's)
STOP_GRACE_S = 10.0


@dataclass
class EvaluationJob:
    """A walk-forward this process owns: its run, state and worker."""

    run_id: int
    inputs: WalkForwardInputs | None
    state: str = "queued"
    process: BaseProcess | None = None
    error: str | None = None
    hint: str | None = None
    stop_reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.done.is_set()


class EvaluationJobs:
    """The walk-forward jobs of one store owner (see the module docstring): one fits at a
    time, the rest wait in line. `con` gives the calling thread's connection to the store."""

    def __init__(self, con: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        self._con = con
        self._lock = threading.Lock()  # jobs, queue, busy
        self._write = threading.Lock()  # one run update at a time
        self._jobs: dict[int, EvaluationJob] = {}
        self._queue: deque[EvaluationJob] = deque()
        self._busy: EvaluationJob | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self, ref: str, folds: int, threshold: float) -> int:
        """Read what `ref`'s walk-forward fits on, record its run and start (or queue) it;
        returns the run id. A model that cannot be walked forward fails here, recording
        nothing."""
        from engine.training.evaluation import gather_walk_forward
        from store.evaluation_runs import start_evaluation_run

        if self._closed:
            raise ServiceError("the job owner is shutting down", "start the evaluation again later")
        inputs = gather_walk_forward(self._con(), ref, folds, threshold=threshold)
        record = inputs.record
        with self._write:
            run_id = start_evaluation_run(self._con(), record.id, record.ref, folds, threshold)
        job = EvaluationJob(run_id, inputs)
        with self._lock:
            self._jobs[run_id] = job
            if self._busy is None and not self._closed:
                self._busy = job
                self._launch(job)
            else:
                self._queue.append(job)
        return run_id

    def _launch(self, job: EvaluationJob) -> None:
        """Spawn the job's worker and the thread that records its events (under `_lock`)."""
        from engine.training.evaluation import walk_forward_worker

        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        job.process = context.Process(
            target=walk_forward_worker,
            args=(send, os.getpid(), job.run_id, job.inputs),
            name=f"upquant-evaluate-{job.run_id}",
        )
        job.process.start()
        send.close()  # the worker holds the only writing end: its exit closes the pipe
        job.inputs = None
        job.state = "running"
        thread = threading.Thread(
            target=self._follow, args=(job, receive), name=f"upquant-evaluation-{job.run_id}"
        )
        self._threads.append(thread)
        thread.start()

    def _follow(self, job: EvaluationJob, receive: Connection) -> None:
        """Record the worker's folds until its final event, or its exit."""
        from store.evaluation_runs import update_evaluation_run

        con = self._con()
        final: tuple[Any, ...] | None = None
        try:
            with self._write:
                update_evaluation_run(con, job.run_id, status="running")
            while final is None:
                try:
                    event = receive.recv()
                except (EOFError, OSError):  # the worker exited without a final word
                    break
                if event[0] == "fold":
                    with self._write:
                        update_evaluation_run(
                            con, job.run_id, folds_done=int(event[1]), folds_total=int(event[2])
                        )
                else:
                    final = event
            self._record_end(con, job, final)
        finally:
            receive.close()
            process = job.process
            if process is not None:
                process.join(STOP_GRACE_S)
                if process.is_alive():
                    process.kill()
                    process.join()
            job.done.set()
            self._next()

    def _record_end(
        self, con: duckdb.DuckDBPyConnection, job: EvaluationJob, final: tuple[Any, ...] | None
    ) -> None:
        from store.evaluation_runs import update_evaluation_run

        if final is not None and final[0] == "done" and job.stop_reason is None:
            result = walk_forward_result(final[1]).model_dump(mode="json")
            with self._write:
                update_evaluation_run(con, job.run_id, status="finished", result=result)
            job.state = "finished"
            return
        if final is not None and final[0] == "failed" and job.stop_reason is None:
            _, kind, message, hint = final
            job.state, job.error, job.hint = "failed", message, hint
            with self._write:
                update_evaluation_run(con, job.run_id, status="failed", error=f"{kind}: {message}")
            return
        reason = job.stop_reason or (
            final[1]
            if final is not None and final[0] == "interrupted"
            else f"its worker process exited with code {job.process and job.process.exitcode}"
        )
        job.state, job.error = "interrupted", reason
        with self._write:
            update_evaluation_run(con, job.run_id, status="interrupted", error=reason)

    def _next(self) -> None:
        with self._lock:
            if self._busy is not None and self._busy.finished:
                self._busy = None
            while self._queue and self._busy is None and not self._closed:
                job = self._queue.popleft()
                if not job.finished:
                    self._busy = job
                    self._launch(job)

    def get(self, run_id: int) -> EvaluationJob | None:
        with self._lock:
            return self._jobs.get(run_id)

    def wait(self, run_id: int, timeout: float) -> bool:
        """Whether run `run_id`'s job (this process's) ends within `timeout` seconds."""
        job = self.get(run_id)
        return job is None or job.done.wait(timeout)

    def cancel(self, run_id: int, reason: str = "cancelled", timeout: float = 30.0) -> bool:
        """Stop run `run_id`'s job (its run `interrupted`); returns once it has stopped,
        False when this process does not run it."""
        from store.evaluation_runs import update_evaluation_run

        with self._lock:
            job = self._jobs.get(run_id)
            if job is None:
                return False
            if job.finished:
                return True
            job.stop_reason = job.stop_reason or reason
            queued = job.state == "queued"
            if queued:
                if job in self._queue:
                    self._queue.remove(job)
                job.state, job.error, job.inputs = "interrupted", job.stop_reason, None
                job.done.set()
            elif job.process is not None and job.process.is_alive():
                job.process.terminate()  # SIGTERM: the worker stops as on Ctrl-C
        if queued:
            with self._write:
                update_evaluation_run(
                    self._con(), run_id, status="interrupted", error=job.stop_reason
                )
            return True
        if not job.done.wait(min(timeout, STOP_GRACE_S)) and job.process is not None:
            job.process.kill()  # it did not stop when asked: a cancelled job ends now
            job.done.wait(max(timeout - STOP_GRACE_S, STOP_GRACE_S))
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job (their runs `interrupted`); none starts afterwards."""
        with self._lock:
            self._closed = True
            jobs = [job for job in self._jobs.values() if not job.finished]
        for job in sorted(jobs, key=lambda j: j.state != "queued"):
            self.cancel(job.run_id, "stopped: its owner shut down", timeout)
        for thread in self._threads:
            thread.join(STOP_GRACE_S)


class EvaluationOps(StoreHolder):
    _evaluations: EvaluationJobs | None = None
    _evaluations_lock = threading.Lock()

    @property
    def evaluations(self) -> EvaluationJobs:
        """This process's walk-forward jobs (created on first use)."""
        with self._evaluations_lock:
            if self._evaluations is None:
                self._evaluations = EvaluationJobs(self.con)
            return self._evaluations

    def close(self) -> None:
        """Stop the walk-forward jobs this process owns (runs `interrupted`), then go on."""
        if self._evaluations is not None:
            self._evaluations.shutdown()
        super().close()

    def _run_status(self, run_id: int) -> EvaluationRunStatus:
        from store.evaluation_runs import get_evaluation_run

        try:
            run = get_evaluation_run(self.con(), run_id)
        except KeyError:
            raise NotFound(
                f"no evaluation run {run_id}",
                "start one: POST /api/v1/ml-models/{id}/evaluate with walk_forward true",
            ) from None
        job = self._evaluations.get(run_id) if self._evaluations is not None else None
        total = run.folds_total
        return EvaluationRunStatus(
            run=run.id,
            model=run.model,
            model_id=run.model_id,
            folds=run.folds,
            threshold=run.threshold,
            status=cast(RunStatus, run.status),
            folds_done=run.folds_done,
            folds_total=total,
            progress=run.folds_done / total
            if total
            else (1.0 if run.status == "finished" else 0.0),
            started=run.started,
            finished=run.finished,
            error=run.error,
            hint=job.hint if job is not None else None,
            result=WalkForwardResult.model_validate(run.result) if run.result else None,
        )

    @operation("read")
    def evaluation_status(self, request: EvaluationRunRequest) -> EvaluationRunStatus:
        """A walk-forward evaluation run: status, folds done, and its result once finished."""
        return self._run_status(request.run)

    @operation("write")
    def evaluation_cancel(self, request: EvaluationRunRequest) -> EvaluationRunStatus:
        """Cancel a walk-forward evaluation run (it reads `interrupted`); a run that has ended
        is answered as it is."""
        status = self._run_status(request.run)
        if status.status in ("queued", "running"):
            if not self.evaluations.cancel(request.run, request.reason):
                from store.evaluation_runs import get_evaluation_run

                run = get_evaluation_run(self.con(), request.run)
                raise Conflict(
                    f"evaluation run {request.run} is run by process {run.pid} on {run.host}",
                    "cancel it through the server that runs it",
                )
            status = self._run_status(request.run)
        return status

    def _walk_forward(self, ref: str, request: EvaluateRequest) -> EvaluationResult:
        from engine.training.train import TrainingError

        try:
            run = self.evaluations.start(ref, request.folds, request.threshold)
        except TrainingError as exc:
            raise ServiceError(str(exc), getattr(exc, "hint", None)) from exc
        self.evaluations.wait(run, request.wait)
        status = self._run_status(run)
        url = f"/api/v1/evaluation-runs/{run}"
        if status.status == "failed":
            raise ServiceError(status.error or f"evaluation run {run} failed", status.hint)
        if status.status == "interrupted":
            raise ServiceError(f"evaluation run {run} was interrupted: {status.error}", None)
        return EvaluationResult(
            mode="walk_forward",
            walk_forward=status.result if status.status == "finished" else None,
            run=run,
            status=status.status,
            status_url=url,
        )

    @operation("read")
    def evaluate(self, request: EvaluateRequest) -> EvaluationResult:
        """Evaluate a model on held-out data (its test part by default) beside the baselines,
        or retrain it per walk-forward fold (mean ± std) as a job: its result when it ends
        within `wait` seconds, else its run and status URL (HTTP 202)."""
        from engine.training.evaluation import evaluate_model

        con = self.con()
        ref = canonical(con, request.model)
        if request.walk_forward:
            return self._walk_forward(ref, request)
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
        spec, model = None, None
        if request.strategy_spec is not None:
            spec, model, report = self._spec_backtest(con, request, market, warnings)
        elif request.model is not None:
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
            strategy_spec=None if spec is None else spec.name,
            strategy_hash=None if spec is None else spec.hash,
            model=model,
            results={
                name: {key: json_value(value) for key, value in metrics.items()}
                for name, metrics in report.metrics().items()
            },
            trades=_trades(report) if request.trades else None,
            equity=equity_curves(report) if request.equity else None,
        )

    def _spec_backtest(
        self,
        con: duckdb.DuckDBPyConnection,
        request: BacktestRequest,
        market: str | None,
        warnings: list[str],
    ) -> tuple[StrategySpec, str | None, BacktestReport]:
        """The strategy spec of `request` on stored candles; one that uses the AI reads the
        model's answers over the range (its test part by default) from the predictor."""
        from engine.trading.spec import StrategySpec
        from engine.trading.spec_backtest import run_spec_backtest

        spec = StrategySpec.from_dict(request.strategy_spec or {})
        start, unit, probabilities, note, model = request.start, request.unit, None, None, None
        if spec.uses_ai:
            ref = self._spec_model(con, request.model, market, request.unit)
            answers = self.spec_answers(
                con, ref, market, request.start, request.end, spec.threshold, warnings
            )
            loaded, note, start, probabilities = answers
            model, unit = loaded.record.ref, loaded.record.unit
            market = market or loaded.record.market
        if market is None:
            raise ServiceError(
                "a rule-only strategy spec needs a market", "give market, e.g. KRW-BTC"
            )
        if spec.max_position is not None:
            warnings.append(
                f"max_position {spec.max_position:,.0f} KRW is the paper broker's; this backtest"
                " trades the whole equity"
            )
        report = run_spec_backtest(
            con,
            spec,
            market=market,
            unit=unit,
            start=start,
            end=request.end,
            probabilities=probabilities,
            fee=request.fee,
            slippage_bps=request.slippage,
            note=note,
        )
        return spec, model, report

    def spec_answers(
        self,
        con: duckdb.DuckDBPyConnection,
        ref: str,
        market: str | None,
        start: datetime | None,
        end: datetime | None,
        threshold: float,
        warnings: list[str],
    ) -> tuple[LoadedModel, str | None, datetime | None, pd.DataFrame]:
        """Model `ref` loaded (and the note of a bad artifact's fallback), where its unseen
        candles start (`start` or later; a warning when `start` reaches into what it learnt
        from), and its answers (ts, p_sell, p_hold, p_buy) on `market` (its own by default)
        from there to `end`: what a strategy spec's AI reads in a backtest."""
        import pandas as pd

        from engine.training.held_out import held_out_start

        held_out = held_out_start(con, ref, start)
        if held_out.warning:
            warnings.append(held_out.warning)
        predictor = cast("PredictionOps", self).predictor()
        loaded, note = predictor.model(con, ref)
        found = predictor.predict_range(
            con,
            ref,
            market or loaded.record.market,
            loaded.record.unit,
            held_out.start,
            end,
            threshold,
        )
        probabilities = pd.DataFrame(
            [(p.ts, *p.probabilities) for p in found if p.probabilities is not None],
            columns=["ts", "p_sell", "p_hold", "p_buy"],
        )
        return loaded, note, held_out.start, probabilities

    @staticmethod
    def _spec_model(
        con: duckdb.DuckDBPyConnection, ref: str | None, market: str | None, unit: str
    ) -> str:
        """`ref`, or the champion of market/unit when none is given."""
        if ref is not None:
            return canonical(con, ref)
        from store.registry import champion

        if market is None:
            raise ServiceError(
                "a strategy spec that uses the AI needs a model or a market",
                "give --model REF, or a market whose champion decides",
            )
        held = champion(con, market, unit)
        if held is None:
            raise NotFound(
                f"{market} unit {unit} has no champion to read for the strategy spec",
                'give --model REF, promote a model, or use a rule-only spec (form = "rule")',
            )
        return held.ref
