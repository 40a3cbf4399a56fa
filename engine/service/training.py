"""Workstation operations on training: start a run (or resume one) as a job, its status,
its per-epoch history, cancel it. The jobs themselves are `engine.service.jobs`'s: fitted in
worker processes, recorded by this process, which holds the store."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, Field, RootModel

from engine.service.base import StoreHolder
from engine.service.core import NotFound, Request, Response, ServiceError, operation
from engine.service.jobs import Job, JobManager
from engine.service.registry import Metrics, finite, finite_metrics

RunStatus = Literal["queued", "running", "finished", "failed", "interrupted"]


class TrainStartRequest(Request):
    """Everything `upquant train` takes: a new run (kind, market, ...), a retrain of a
    registered model's configuration on the candles there are now (`model`), or a stopped
    run continued (`resume`, with `restart` from scratch)."""

    kind: str | None = Field(default=None, description="xgboost, lstm, transformer or ensemble.")
    market: str | None = Field(default=None, description="Upbit market code, e.g. KRW-BTC.")
    unit: str = "1"
    model: str | None = Field(
        default=None, description="Retrain this model's configuration (ref/id)."
    )
    members: list[str] | None = None
    method: str = "soft-vote"
    feature_spec: dict[str, Any] | None = Field(
        default=None, description="Default spec if omitted."
    )
    horizon: int = 10
    threshold: float = 0.001
    scheme: str = "fixed_horizon"
    train: float = 0.7
    validation: float = 0.15
    embargo: int = 0
    seed: int = 0
    device: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    window: int | None = None
    n_estimators: int | None = None
    trials: int = 0
    timeout: float | None = None
    jobs: int = 1
    tune_folds: int = 0
    name: str | None = None
    promote: bool | None = None
    resume: int | None = None
    restart: bool = False


class TrainStarted(Response):
    run: int
    status: RunStatus
    status_url: str


class TrainRunRequest(Request):
    """A run by id, or the latest run of a registered model (`model`, ref or id)."""

    run: int | None = Field(default=None, description="The training run's id.")
    model: str | None = None
    reason: str = Field(default="cancelled", description="Recorded as the stopped run's error.")


class TrainStatusRequest(Request):
    """A run by id, or the latest run of a registered model (`model`, ref or id)."""

    run: int | None = None
    model: str | None = None


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Metrics as JSON carries them: a diverged fit's NaN or inf loss is null."""
    return {name: finite(value) for name, value in metrics.items()}


class PhaseProgress(BaseModel):
    phase: str
    done: int
    total: int
    metrics: Annotated[dict[str, float | None], BeforeValidator(_finite)] = Field(
        default_factory=dict, description="null where undefined (a NaN or inf loss)."
    )


class EpochMetrics(BaseModel):
    step: int
    split: str
    metrics: Annotated[dict[str, float | None], BeforeValidator(_finite)] = Field(
        description="null where undefined (a NaN or inf loss)."
    )


class TrainResult(BaseModel):
    """A finished run's report: what `upquant train` prints (table and --json)."""

    model: str
    id: int
    run: int
    status: str
    sha256: str
    artifact: str
    size: int
    rows: dict[str, int]
    metrics: Metrics  # undefined ones (no trades: no Sharpe) null, as JSON carries them
    class_balance: dict[str, dict[str, float]]
    search: dict[str, Any] | None
    features: list[str]
    trading: dict[str, dict[str, Any]]
    promoted: bool
    epochs: int


class RunFields(BaseModel):
    """What a training run is (its status, progress, times, error): a job list's row and
    the start of a run's whole status."""

    run: int
    status: RunStatus
    kind: str | None
    market: str | None
    unit: str | None
    progress: float | None
    started: datetime | None
    finished: datetime | None
    error: str | None


def _run_fields(run: Any, job: Any, status: str) -> dict[str, Any]:
    """A stored run's RunFields, the job's own failure message first (the row keeps only
    its type)."""
    return {
        "run": run.id,
        "status": status,
        "kind": run.kind,
        "market": run.market,
        "unit": run.unit,
        "progress": run.progress,
        "started": run.started,
        "finished": run.finished,
        "error": job.error if job is not None and job.error else run.error,
    }


class TrainStatus(RunFields, Response):
    hint: str | None = None
    log: str | None
    checkpoint: str | None
    phases: list[PhaseProgress] = Field(default_factory=list)
    messages: list[str] = Field(default_factory=list)
    latest: EpochMetrics | None = None
    model: str | None = None
    model_id: int | None = None
    result: TrainResult | None = None


class TrainHistoryRequest(Request):
    """The per-epoch (and per-trial) metrics of a run, or of every run of a model's name."""

    run: int | None = None
    model: str | None = None


class RunHistory(BaseModel):
    run: int
    status: str
    model: str | None
    epochs: list[EpochMetrics]


class TrainHistory(RootModel[list[RunHistory]]):
    """Per run: its status, model and per-epoch metrics."""


class TrainRunsRequest(Request):
    """The newest training runs first: every job, running or past (the TUI's job list)."""

    limit: int = Field(default=50, ge=1, le=1000, description="At most this many runs.")
    active: bool = Field(default=False, description="Only the queued and running ones.")


class RunSummary(RunFields):
    model: str | None = Field(None, description="The model it registered (name@version).")
    resume: Literal["checkpoint", "restart"] | None = Field(
        None,
        description="How a stopped run continues: from its checkpoint (torch) or only from"
        " scratch (`restart`); null when it cannot (running, finished, no settings).",
    )
    phases: list[PhaseProgress] = Field(
        default_factory=list, description="Epochs, trials, folds done (a job this process runs)."
    )


class TrainRuns(RootModel[list[RunSummary]]):
    """Training runs, newest first."""


def _result(job: Job) -> TrainResult | None:
    report = job.report
    if report is None:
        return None
    record = report.model
    return TrainResult(
        model=record.ref,
        id=record.id,
        run=report.run_id,
        status=record.status,
        sha256=record.sha256,
        artifact=str(record.artifact),
        size=record.size,
        rows=report.rows,
        metrics=finite_metrics(report.metrics),
        class_balance=report.class_balance,
        search=report.tuning.to_dict() if report.tuning else None,
        features=report.features,
        trading=report.trading,
        promoted=report.promoted,
        epochs=report.epochs,
    )


def _job_status(stored: str, job: Job | None) -> RunStatus:
    """A run's status as this process knows it: its job's, while the row catches up."""
    status = stored
    if job is not None and job.finished and status in ("running", "queued"):
        status = job.state  # its end is being written
    elif job is not None and not job.finished and status == "finished":
        status = "running"  # registered; a retrain's challenger alias is still moving
    return cast(RunStatus, status)


def _phases(job: Job | None) -> list[PhaseProgress]:
    """The epochs, trials or folds a job this process runs has done (none for others)."""
    if job is None:
        return []
    return [
        PhaseProgress(phase=p.phase, done=p.done, total=p.total, metrics=dict(p.metrics))
        for p in list(job.phases.values())
    ]


class TrainingOps(StoreHolder):
    _jobs: JobManager | None = None
    _jobs_lock = threading.Lock()

    @property
    def jobs(self) -> JobManager:
        """This process's training jobs (created on first use)."""
        with self._jobs_lock:
            if self._jobs is None:
                self._jobs = JobManager(self.con, getattr(self, "publish_event", None))
            return self._jobs

    def close(self) -> None:
        """Stop the jobs this process owns (their runs `interrupted`), then close the store."""
        if self._jobs is not None:
            self._jobs.shutdown()
        super().close()

    def shutdown_jobs(self, timeout: float = 30.0) -> None:
        if self._jobs is not None:
            self._jobs.shutdown(timeout)

    def _model_run(self, ref: str) -> int:
        """The latest run of registered model `ref` (or of a later version of its name)."""
        from store.registry import get_model

        record = get_model(self.con(), int(ref) if ref.isdigit() else ref)
        rows = (
            self.con()
            .execute(
                "SELECT r.id FROM training_runs r LEFT JOIN models m ON m.id = r.model_id"
                " WHERE r.model_id = ? OR (m.name = ? AND m.version > ?)"
                " OR (r.model_id IS NULL AND json_extract_string(r.config, '$.name') = ?)"
                " ORDER BY r.id DESC LIMIT 1",
                [record.id, record.name, record.version, record.name],
            )
            .fetchall()
        )
        if not rows:
            raise NotFound(f"model {record.ref} has no training run recorded")
        return int(rows[0][0])

    @operation("write")
    def train_start(self, request: TrainStartRequest) -> TrainStarted:
        """Start a training job (or resume a stopped run): returns at once with its run id."""
        from engine.training.train import TrainingError

        try:
            if request.resume is not None:
                run = self.jobs.resume(
                    request.resume,
                    request.restart,
                    kind=request.kind or "",
                    market=request.market or "",
                )
            else:
                run = self.jobs.start(self._settings(request))
        except TrainingError as exc:
            raise ServiceError(str(exc), exc.hint) from exc
        where = f"model {request.model}" if request.model else None
        url = (
            f"/api/v1/ml-models/{request.model}/training-status?run={run}"
            if where
            else f"/api/v1/training-runs/{run}"
        )
        return TrainStarted(
            run=run, status=cast(RunStatus, self.jobs.status(run) or "running"), status_url=url
        )

    def _settings(self, request: TrainStartRequest) -> dict[str, Any]:
        """`prepare_run`'s arguments from the request (or from the model to retrain)."""
        from engine.research.features import DEFAULT_SPEC, FeatureSpec
        from engine.research.labels import LabelSpec
        from engine.research.splits import SplitSpec
        from engine.training.kind_params import kind_params
        from engine.upbit.markets import check_market, check_unit

        if request.model is not None and request.kind is None:  # retrain its configuration
            from store.registry import get_run

            config = get_run(self.con(), self._model_run(request.model)).config
            if config is None:
                raise ServiceError(f"model {request.model}'s run recorded no settings")
            return {
                "kind": config["kind"],
                "market": config["market"],
                "unit": config["unit"],
                "feature_spec": FeatureSpec.from_dict(config["feature_spec"]),
                "label_spec": LabelSpec.from_dict(config["label_spec"]),
                "split_spec": SplitSpec.from_dict(config["split_spec"]),
                **{
                    k: config[k]
                    for k in (
                        "params",
                        "name",
                        "members",
                        "method",
                        "stack_folds",
                        "trials",
                        "timeout",
                        "n_jobs",
                        "tune_folds",
                        "threshold",
                        "fee",
                    )
                },
                "promote": request.promote,
            }
        if request.restart:
            raise ServiceError("restart goes with resume: `upquant train --resume RUN --restart`")
        if not request.kind or not request.market:
            raise ServiceError(
                "a training run needs a kind and a market",
                "give kind and market, a model to retrain, or a run to resume",
            )
        check_market(request.market)
        spec = FeatureSpec.from_dict(request.feature_spec) if request.feature_spec else DEFAULT_SPEC
        return {
            "kind": request.kind,
            "market": request.market,
            "unit": check_unit(request.unit),
            "feature_spec": spec,
            "label_spec": LabelSpec(
                horizon=request.horizon, threshold=request.threshold, scheme=request.scheme
            ),
            "split_spec": SplitSpec(
                train=request.train, validation=request.validation, embargo=request.embargo
            ),
            "params": kind_params(
                request.kind,
                seed=request.seed,
                device=request.device,
                epochs=request.epochs,
                batch_size=request.batch_size,
                window=request.window,
                n_estimators=request.n_estimators,
            ),
            "name": request.name,
            "promote": request.promote,
            "members": request.members,
            "method": request.method,
            "trials": request.trials,
            "timeout": request.timeout,
            "n_jobs": request.jobs,
            "tune_folds": request.tune_folds,
        }

    @operation("read")
    def train_status(self, request: TrainStatusRequest) -> TrainStatus:
        """A run's status, progress, latest epoch metrics, model when finished, error."""
        from store.registry import get_model, get_run

        if request.run is None and request.model is None:
            raise ServiceError("which run? give run (an id) or model (a ref)")
        run_id = request.run if request.run is not None else self._model_run(str(request.model))
        job = self.jobs.get(run_id)
        run = get_run(self.con(), run_id)
        latest = (
            self.con()
            .execute(
                "SELECT step, split, map(list(name), list(value)) FROM metrics"
                " WHERE run_id = ? AND step IS NOT NULL GROUP BY step, split"
                " ORDER BY split = 'epoch', step DESC LIMIT 1",
                [run_id],
            )
            .fetchall()
        )
        model = get_model(self.con(), run.model_id) if run.model_id is not None else None
        return TrainStatus(
            **_run_fields(run, job, _job_status(run.status, job)),
            hint=job.hint if job is not None else None,
            log=run.log,
            checkpoint=run.checkpoint,
            phases=_phases(job),
            messages=list(job.messages) if job is not None else [],
            latest=EpochMetrics(step=latest[0][0], split=latest[0][1], metrics=latest[0][2])
            if latest
            else None,
            model=model.ref if model else None,
            model_id=model.id if model else None,
            result=_result(job) if job is not None else None,
        )

    @operation("read")
    def train_history(self, request: TrainHistoryRequest) -> TrainHistory:
        """Per-epoch metrics of a run, or of every run of a model's name, oldest first."""
        from store.registry import get_model, get_run

        con = self.con()
        if request.run is not None:
            runs = [request.run]
        elif request.model is not None:
            record = get_model(
                con, int(request.model) if request.model.isdigit() else request.model
            )
            runs = [
                int(r)
                for (r,) in con.execute(
                    "SELECT r.id FROM training_runs r LEFT JOIN models m ON m.id = r.model_id"
                    " WHERE m.name = ? OR (r.model_id IS NULL"
                    " AND json_extract_string(r.config, '$.name') = ?) ORDER BY r.id",
                    [record.name, record.name],
                ).fetchall()
            ]
        else:
            raise ServiceError("whose history? give run (an id) or model (a ref)")
        out = []
        for run_id in runs:
            run = get_run(con, run_id)
            rows = con.execute(
                "SELECT step, split, map(list(name), list(value)) FROM metrics"
                " WHERE run_id = ? AND step IS NOT NULL GROUP BY step, split"
                " ORDER BY split, step",
                [run_id],
            ).fetchall()
            model = get_model(con, run.model_id).ref if run.model_id is not None else None
            out.append(
                RunHistory(
                    run=run_id,
                    status=run.status,
                    model=model,
                    epochs=[EpochMetrics(step=s, split=p, metrics=m) for s, p, m in rows],
                )
            )
        return TrainHistory(out)

    @operation("read")
    def train_runs(self, request: TrainRunsRequest) -> TrainRuns:
        """Every training run, newest first (or only the queued and running ones): status,
        progress, the model it registered, whether and how a stopped one resumes."""
        from engine.training.fit import TORCH_KINDS
        from store.registry import get_run

        con = self.con()
        where = " WHERE status IN ('queued', 'running')" if request.active else ""
        ids = con.execute(
            f"SELECT id FROM training_runs{where} ORDER BY id DESC LIMIT ?", [request.limit]
        ).fetchall()
        runs = [get_run(con, run_id) for (run_id,) in ids]  # a run whose owner is gone settles
        model_ids = [run.model_id for run in runs if run.model_id is not None]
        refs = (
            dict(
                con.execute(
                    "SELECT id, name || '@' || version FROM models WHERE list_contains(?, id)",
                    [model_ids],
                ).fetchall()
            )
            if model_ids
            else {}
        )
        out = []
        for run in runs:
            job = self.jobs.get(run.id)
            status = _job_status(run.status, job)
            if request.active and status not in ("queued", "running"):
                continue
            resume: Literal["checkpoint", "restart"] | None = None
            if status in ("interrupted", "failed") and run.config is not None:
                resume = "checkpoint" if run.kind in TORCH_KINDS else "restart"
            out.append(
                RunSummary(
                    **_run_fields(run, job, status),
                    model=refs.get(run.model_id) if run.model_id is not None else None,
                    resume=resume,
                    phases=_phases(job),
                )
            )
        return TrainRuns(out)

    @operation("write")
    def train_cancel(self, request: TrainRunRequest) -> TrainStatus:
        """Stop a training job: its run `interrupted`, resumable from its last checkpoint."""
        from store.registry import get_run

        if request.run is None and request.model is None:
            raise ServiceError("which run? give run (an id) or model (a ref)")
        run_id = request.run if request.run is not None else self._model_run(str(request.model))
        job = self.jobs.cancel(run_id, request.reason)
        if job is None:
            run = get_run(self.con(), run_id)
            if run.status in ("running", "queued"):
                raise ServiceError(
                    f"run {run_id} is run by process {run.pid} on {run.host}, not this one",
                    f"stop it there (Ctrl-C, or `kill {run.pid}`)",
                )
        return self.train_status(TrainStatusRequest(run=run_id))
