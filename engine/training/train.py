"""Headless training, the store side: a run's `training_runs` row, the candles and members it
learns from, its progress as it happens, and its registration; the fitting itself is
`engine.training.fit` (which never opens the store).

Every run is a `training_runs` row whose status and per-epoch metrics are written as they
happen, owned by the process that holds the store (store.processes: pid, host, start,
heartbeat): `train_model` here fits in that process; the server and `upquant train` fit in a
worker process (`engine.service.jobs`) and record what it reports with the same `StoreSink`.
Ctrl-C (and SIGTERM/SIGHUP, which the CLI turns into it) marks it `interrupted` and registers
nothing; a run whose process died without a word (SIGKILL, out of memory) reads as
`interrupted` once its process is gone. A torch run keeps a checkpoint after every epoch, so
`resume=RUN` continues it where it stopped; `restart=True` runs it again from scratch (an
xgboost run, or a damaged checkpoint).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from engine.live.inference import load_record
from engine.params import check_model_params, check_training_args
from engine.research.dataset import Dataset, build_dataset
from engine.research.features import DEFAULT_SPEC, FeatureSpec
from engine.research.labels import LabelSpec
from engine.research.splits import SplitSpec
from engine.trading.backtest import DEFAULT_FEE
from engine.training.ensembles import model_params, resolve_members
from engine.training.fit import (
    TORCH_KINDS,
    FitInputs,
    FitResult,
    Progress,
    ProgressHook,
    TrainingError,
    checkpoint_path,
    evaluate_parts,
    fit_run,
    no_candles,
    split_enough,
    trading_report,
)
from engine.training.tuning import TuneResult
from models import ALL_KINDS, MODEL_KINDS, Model, create_model
from store.candles import last_ts, load_candles
from store.db import interrupted
from store.registry import (
    ModelRecord,
    beat,
    champion,
    claim_run,
    clear_run_epochs,
    get_model,
    get_run,
    log_epoch,
    move_alias,
    register_model,
    start_run,
    update_run,
)

__all__ = [
    "TORCH_KINDS",
    "Progress",
    "ProgressHook",
    "StoreSink",
    "TrainReport",
    "TrainingError",
    "evaluate_parts",
    "split_enough",
    "trading_report",
    "train_model",
]


@dataclass
class TrainReport:
    model: ModelRecord
    run_id: int
    rows: dict[str, int]
    metrics: dict[str, dict[str, float]]
    class_balance: dict[str, dict[str, float]]
    promoted: bool
    features: list[str] = field(default_factory=list)
    trading: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning: TuneResult | None = None
    epochs: int = 0


class StoreSink:
    """A run's reports written to the store as they come (`training_runs`, `metrics`), and
    passed on to a progress display."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, run_id: int, display: ProgressHook | None = None
    ) -> None:
        self.con, self.run_id, self.display = con, run_id, display

    def epoch(self, step: int, metrics: dict[str, float], split: str = "epoch") -> None:
        log_epoch(self.con, self.run_id, step, metrics, split=split)

    def progress(self, value: float) -> None:
        update_run(self.con, self.run_id, progress=value)

    def beat(self) -> None:
        beat(self.con, self.run_id)

    def checkpoint(self, path: Path) -> None:
        update_run(self.con, self.run_id, checkpoint=str(path))

    def notify(self, progress: Progress) -> None:
        if self.display is not None:
            self.display(progress)


def train_model(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    market: str,
    unit: str,
    *,
    feature_spec: FeatureSpec = DEFAULT_SPEC,
    label_spec: LabelSpec | None = None,
    split_spec: SplitSpec | None = None,
    params: dict[str, Any] | None = None,
    name: str | None = None,
    promote: bool | None = None,
    members: list[str] | None = None,
    method: str = "soft-vote",
    stack_folds: int = 3,
    trials: int = 0,
    timeout: float | None = None,
    n_jobs: int = 1,
    tune_folds: int = 0,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
    progress: ProgressHook | None = None,
    resume: int | None = None,
    restart: bool = False,
) -> TrainReport:
    """Train one model on the stored candles of `market`/`unit` and register it.

    `promote=None` makes it champion only when its market/unit has none yet. `threshold` is
    the confidence the test-part trading report acts on (as the live engine does). `resume`
    continues an interrupted or failed run with its own settings (the other arguments are
    not used); with `restart`, from scratch, its checkpoint and epoch metrics dropped.
    """
    if resume is not None:
        config = resume_run(con, resume, restart, kind=kind, market=market)
        return _train(con, resume, config, progress)
    run_id, config = prepare_run(
        con,
        kind,
        market,
        unit,
        feature_spec=feature_spec,
        label_spec=label_spec,
        split_spec=split_spec,
        params=params,
        name=name,
        promote=promote,
        members=members,
        method=method,
        stack_folds=stack_folds,
        trials=trials,
        timeout=timeout,
        n_jobs=n_jobs,
        tune_folds=tune_folds,
        threshold=threshold,
        fee=fee,
        restart=restart,
    )
    return _train(con, run_id, config, progress)


def prepare_run(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    market: str,
    unit: str,
    *,
    feature_spec: FeatureSpec = DEFAULT_SPEC,
    label_spec: LabelSpec | None = None,
    split_spec: SplitSpec | None = None,
    params: dict[str, Any] | None = None,
    name: str | None = None,
    promote: bool | None = None,
    members: list[str] | None = None,
    method: str = "soft-vote",
    stack_folds: int = 3,
    trials: int = 0,
    timeout: float | None = None,
    n_jobs: int = 1,
    tune_folds: int = 0,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
    restart: bool = False,
    last: int | None = None,
    retrain: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """The arguments of a new run checked, and its `running` row with its settings (run id,
    settings); what `train_model` takes, less the progress hook and `resume`. `last`: learn
    from only the newest `last` candles; `retrain`: the run retrains a champion
    (`engine.service.retraining`: `by`, `reason`, `of`), its model registered as a challenger
    and never promoted."""
    if restart:
        raise TrainingError("restart goes with resume: `upquant train --resume RUN --restart`")
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(ALL_KINDS)}")
    label_spec = label_spec or LabelSpec()
    # refused before a run row exists: a 0-round model would otherwise register as champion
    check_training_args(
        trials=trials,
        n_jobs=n_jobs,
        tune_folds=tune_folds,
        timeout=timeout,
        threshold=threshold,
        fee=fee,
        label_threshold=label_spec.threshold,
    )
    if kind in MODEL_KINDS:
        check_model_params(kind, params or {})
        create_model(kind, **(params or {}))  # and whatever else the kind refuses
    config = {
        "kind": kind,
        "market": market,
        "unit": unit,
        "feature_spec": feature_spec.to_dict(),
        "label_spec": label_spec.to_dict(),
        "split_spec": (split_spec or SplitSpec()).to_dict(),
        "params": params or {},
        "name": name,
        "promote": promote,
        "members": members or [],
        "method": method,
        "stack_folds": stack_folds,
        "trials": trials,
        "timeout": timeout,
        "n_jobs": n_jobs,
        "tune_folds": tune_folds,
        "threshold": threshold,
        "fee": fee,
        # the candles the run learns from end here: a resumed run splits and scales exactly
        # the candles the interrupted one did, whatever was imported or streamed since
        "until": _candles_end(con, market, unit),
    }
    if last is not None:
        if last < 1:
            raise ValueError(f"last must be a positive number of candles, got {last}")
        config["last"] = int(last)
    if retrain is not None:
        config["retrain"] = dict(retrain)
        config["promote"] = False
    run_id = start_run(con, kind, market, unit, config)
    return run_id, config


def resume_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    restart: bool,
    *,
    kind: str = "",
    market: str = "",
) -> dict[str, Any]:
    """Claim run `run_id` to continue it with its own settings (returned); `kind`/`market`,
    when given, must be its."""
    run = get_run(con, run_id)  # a run whose process is gone reads as interrupted
    if (kind and kind != run.kind) or (market and market != run.market):
        raise TrainingError(
            f"run {run_id} trains {run.kind} on {run.market} unit {run.unit}, not"
            f" {kind or run.kind} on {market or run.market}; `upquant train --resume {run_id}`"
            " takes its kind and market from the run"
        )
    if run.status in ("running", "queued"):
        raise TrainingError(
            f"run {run_id} is still {run.status} (process {run.pid} on {run.host}); stop it"
            f" first (Ctrl-C there, DELETE /api/v1/training-runs/{run_id}, or `kill {run.pid}`)"
        )
    if run.status not in ("interrupted", "failed"):
        raise TrainingError(f"run {run_id} is {run.status}; only interrupted or failed runs resume")
    if run.config is None:
        raise TrainingError(f"run {run_id} recorded no settings to resume with; train anew")
    if run.kind not in TORCH_KINDS and not restart:
        raise TrainingError(
            f"run {run_id} ({run.kind}) keeps no checkpoint to resume from; train it again"
            f" from scratch with `upquant train --resume {run_id} --restart`"
        )
    if restart:
        shutil.rmtree(checkpoint_path(run_id).parent, ignore_errors=True)
        clear_run_epochs(con, run_id)
        how = "restarted from scratch"
    else:
        how = f"resumed from {run.checkpoint or 'the start'}"
    claim_run(con, run_id, log=how)
    return run.config


def _candles_end(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> str | None:
    """Just past the newest stored candle of a series (ISO), or None when it has none."""
    newest = last_ts(con, market, unit)
    return None if newest is None else (newest + pd.Timedelta(microseconds=1)).isoformat()


def load_data(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    feature_spec: FeatureSpec,
    label_spec: LabelSpec,
    until: str | None = None,
) -> tuple[pd.DataFrame, Dataset]:
    """The candles of a series (before `until`, ISO, when given) and their dataset."""
    candles = load_candles(con, market, unit, end=pd.Timestamp(until) if until else None)
    if candles.empty:
        raise no_candles(market, unit)
    return candles, build_dataset(candles, feature_spec, label_spec, unit=unit)


def gather_inputs(con: duckdb.DuckDBPyConnection, config: dict[str, Any]) -> FitInputs:
    """What run `config` learns from, read from the store: its candles (up to its `until`)
    and, for an ensemble, its members' registry rows."""
    market, unit, until = config["market"], config["unit"], config.get("until")
    candles = load_candles(
        con, market, unit, end=pd.Timestamp(until) if until else None, last=config.get("last")
    )
    if candles.empty:
        raise no_candles(market, unit)
    members: list[ModelRecord] = []
    if config["kind"] == "ensemble" and LabelSpec.from_dict(config["label_spec"]).is_classification:
        members = resolve_members(con, config["members"], market, unit)
    return FitInputs(candles, members)


def register(
    con: duckdb.DuckDBPyConnection, run_id: int, config: dict[str, Any], result: FitResult
) -> TrainReport:
    """Register what run `run_id` made (model row, metrics, the run linked: one transaction),
    champion as `config["promote"]` says (None: when its market/unit has none yet). A
    retrain's model (`config["retrain"]`) is never promoted: it takes the `challenger` alias
    (by and reason the retrain's, artifact verified first) in a second transaction."""
    kind, market, unit = config["kind"], config["market"], config["unit"]
    retrain = config.get("retrain")
    if retrain:
        do_promote = False
    elif config["promote"] is None:
        do_promote = champion(con, market, unit) is None
    else:
        do_promote = bool(config["promote"])
    record = register_model(
        con,
        name=config["name"] or f"{kind}-{market}-{unit}",
        kind=kind,
        market=market,
        unit=unit,
        feature_spec=result.feature_spec,
        feature_spec_hash=result.feature_spec_hash,
        label_spec=result.label_spec,
        params=result.params,
        artifact=str(result.artifact.path),
        sha256=result.artifact.sha256,
        size=result.artifact.size,
        status="candidate",
        metrics=result.metrics,
        promote=do_promote,
        tags={**result.tags, "retrain_of": retrain["of"]} if retrain else result.tags,
        run_id=run_id,
    )
    if retrain:
        load_record(record)  # an alias goes only to an artifact that loads and verifies
        move_alias(
            con, record.id, "challenger", by=str(retrain["by"]), reason=retrain.get("reason")
        )
        record = get_model(con, record.id)
    return TrainReport(
        model=record,
        run_id=run_id,
        rows=result.rows,
        metrics=result.metrics,
        class_balance=result.class_balance,
        promoted=do_promote,
        features=result.features,
        trading=result.trading,
        tuning=result.tuning,
        epochs=result.epochs,
    )


def finish_run(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    """Mark a registered run finished; a finished run keeps no checkpoint."""
    update_run(con, run_id, status="finished", progress=1.0)
    shutil.rmtree(checkpoint_path(run_id).parent, ignore_errors=True)


def _train(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    config: dict[str, Any],
    progress: ProgressHook | None,
) -> TrainReport:
    try:
        result = fit_run(
            run_id, config, gather_inputs(con, config), StoreSink(con, run_id, progress)
        )
        beat(con, run_id)
        report = register(con, run_id, config, result)
    except KeyboardInterrupt:
        # registering finishes the run in the same transaction: only an unfinished one was cut
        if get_run(con, run_id).status != "finished":
            update_run(con, run_id, status="interrupted", error="stopped by Ctrl-C or a signal")
        raise
    except Exception as exc:
        if interrupted(exc):  # the signal arrived inside a query: DuckDB swallowed it
            update_run(con, run_id, status="interrupted", error="stopped by Ctrl-C or a signal")
            raise KeyboardInterrupt from exc
        update_run(con, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finish_run(con, run_id)
    return report


def clone(record: ModelRecord) -> Model:
    """A fresh, unfitted model of the kind and parameters `record` was trained with."""
    if record.kind == "ensemble":
        raise TrainingError("an ensemble is retrained through its members; clone those")
    return create_model(record.kind, **model_params(record))
