"""Headless training: candles → dataset → purged chronological split → (tune) → fit → evaluate
on the test part beside baselines → artifact + registry row + metrics.

Every run is a `training_runs` row whose status and per-epoch metrics are written as they
happen, owned by the process that runs it (store.processes: pid, host, start, heartbeat).
Ctrl-C (and SIGTERM/SIGHUP, which the CLI turns into it) marks it `interrupted` and registers
nothing; a run whose process died without a word (SIGKILL, out of memory) reads as
`interrupted` once its process is gone. A torch run keeps a checkpoint after every epoch, so
`resume=RUN` continues it where it stopped; `restart=True` runs it again from scratch (an
xgboost run, or a damaged checkpoint).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import load_record
from engine.params import check_confidence, check_model_params, check_training_args
from engine.research.dataset import Dataset, build_dataset, split_dataset
from engine.research.features import DEFAULT_SPEC, FeatureSpec
from engine.research.labels import LabelSpec
from engine.research.metrics import (
    class_balance,
    classification_metrics,
    majority_baseline,
    regression_metrics,
)
from engine.research.splits import Split, SplitSpec, TooFewRowsError, min_candles
from engine.trading.backtest import DEFAULT_FEE, backtest, baseline_results
from engine.trading.strategies import SmaCross, actions_from_probs, sma_cross_actions
from engine.training.batch import candle_actions, predict_rows, predict_values
from engine.training.ensembles import (
    check_member_periods,
    fit_ensemble,
    model_params,
    resolve_members,
)
from engine.training.tuning import Trial, TuneResult, tune
from models import ALL_KINDS, CLASSES, MODEL_KINDS, Model, create_model
from models.torch_base import CheckpointError, SequenceModel
from store.artifacts import store_artifact
from store.candles import last_ts, load_candles
from store.db import home, interrupted
from store.registry import (
    ModelRecord,
    beat,
    champion,
    claim_run,
    clear_run_epochs,
    get_run,
    log_epoch,
    register_model,
    start_run,
    update_run,
)

TORCH_KINDS = ("lstm", "transformer")


class TrainingError(Exception):
    """Training cannot start or finish; the message says why, `hint` (or the message) what
    to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


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


@dataclass
class Progress:
    """What a progress display is told: a phase (`epoch`, `trial`, `fold`, `step`) with done
    and total counts and the latest metrics."""

    phase: str
    done: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)
    text: str = ""


ProgressHook = Callable[[Progress], None]


def _checkpoint_path(run_id: int) -> Path:
    return home() / "runs" / str(run_id) / "checkpoint.pt"


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
        return _resume(con, resume, restart, progress, kind=kind, market=market)
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
    run_id = start_run(con, kind, market, unit, config)
    return _train(con, run_id, config, progress)


def _resume(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    restart: bool,
    progress: ProgressHook | None,
    *,
    kind: str = "",
    market: str = "",
) -> TrainReport:
    """Continue run `run_id` with its own settings; `kind`/`market`, when given, must be its."""
    run = get_run(con, run_id)  # a run whose process is gone reads as interrupted
    if (kind and kind != run.kind) or (market and market != run.market):
        raise TrainingError(
            f"run {run_id} trains {run.kind} on {run.market} unit {run.unit}, not"
            f" {kind or run.kind} on {market or run.market}; `upquant train --resume {run_id}`"
            " takes its kind and market from the run"
        )
    if run.status == "running":
        raise TrainingError(
            f"run {run_id} is still running (process {run.pid} on {run.host}); stop it first"
            f" (Ctrl-C there, or `kill {run.pid}`)"
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
        shutil.rmtree(_checkpoint_path(run_id).parent, ignore_errors=True)
        clear_run_epochs(con, run_id)
        how = "restarted from scratch"
    else:
        how = f"resumed from {run.checkpoint or 'the start'}"
    claim_run(con, run_id, log=how)
    return _train(con, run_id, run.config, progress)


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
        raise TrainingError(
            f"no {market} unit {unit} candles in the store;"
            f" run `upquant data import` or `upquant data fetch {market} --unit {unit}` first"
        )
    return candles, build_dataset(candles, feature_spec, label_spec, unit=unit)


def _min_train_rows(kind: str, params: dict[str, Any]) -> int:
    """Training rows the model needs: a sequence model one more than its window."""
    if kind not in TORCH_KINDS:
        return 1
    return int(create_model(kind, **{**params, "device": "cpu"}).get_params()["window"]) + 1


def split_enough(
    candles: pd.DataFrame,
    data: Dataset,
    spec: SplitSpec,
    feature_spec: FeatureSpec,
    label_spec: LabelSpec,
    market: str,
    unit: str,
    min_train: int = 1,
) -> Split:
    """The chronological split of `data`, or a TrainingError saying how many candles training
    needs and how many there are, when a part would be empty or the training part too short."""
    warmup = max(feature_spec.warmup(), label_spec.lookback())
    purge = label_spec.horizon if spec.purge is None else spec.purge
    needed = min_candles(spec, warmup=warmup, horizon=label_spec.horizon, min_train=min_train)
    try:
        split = split_dataset(data, spec)
        short = len(split.train) < min_train
    except TooFewRowsError:
        short = True
    if not short:
        return split
    have = f"{len(candles):,} {market} unit {unit} candles"
    why = (
        f"{warmup:,} go to the feature warm-up, {label_spec.horizon} at the end have no label"
        f" yet, and the {spec.train:.0%}/{spec.validation:.0%}/"
        f"{1 - spec.train - spec.validation:.0%} split purges {purge} rows before"
        f" each cut"
        + (f" and embargoes {spec.embargo} after it" if spec.embargo else "")
        + (f"; the model's window needs {min_train:,} training rows" if min_train > 1 else "")
    )
    if len(candles) < needed:
        message = f"{have} are too few to train: it needs at least {needed:,} ({why})"
    else:  # gaps or flagged candles dropped rows the count above assumes
        message = (
            f"{have} leave only {len(data.y):,} usable rows, too few to train: it needs at"
            f" least {needed:,} candles without gaps ({why})"
        )
    raise TrainingError(
        f"{message}; fetch more with `upquant data fetch {market} --unit {unit} --since DATE`"
    )


def _train(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    config: dict[str, Any],
    progress: ProgressHook | None,
) -> TrainReport:
    try:
        report = _run(con, run_id, config, progress)
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
    update_run(con, run_id, status="finished", progress=1.0)
    shutil.rmtree(_checkpoint_path(run_id).parent, ignore_errors=True)
    return report


def _run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    config: dict[str, Any],
    progress: ProgressHook | None,
) -> TrainReport:
    kind, market, unit = config["kind"], config["market"], config["unit"]
    feature_spec = FeatureSpec.from_dict(config["feature_spec"])
    label_spec = LabelSpec.from_dict(config["label_spec"])
    split_spec = SplitSpec.from_dict(config["split_spec"])
    task = "classification" if label_spec.is_classification else "regression"
    notify = progress or (lambda _: None)

    candles, data = load_data(con, market, unit, feature_spec, label_spec, config.get("until"))
    beat(con, run_id)
    min_train = _min_train_rows(kind, config["params"])
    split = split_enough(
        candles, data, split_spec, feature_spec, label_spec, market, unit, min_train
    )
    y_train = data.y[split.train]
    if task == "classification":
        missing = [CLASSES[c] for c in range(len(CLASSES)) if not (y_train == c).any()]
        if missing:
            raise TrainingError(
                f"the training part has no {', '.join(missing)} labels;"
                f" lower the label threshold ({label_spec.threshold}) or use more candles"
            )

    tuning: TuneResult | None = None
    epochs_run = 0
    if kind == "ensemble":
        if task != "classification":
            raise TrainingError("ensembles combine classifiers; use a classification label scheme")
        records = resolve_members(con, config["members"], market, unit)
        if any(
            r.feature_spec_hash != feature_spec.hash() or r.label_spec != label_spec.to_dict()
            for r in records
        ):
            # the members decide the data: the ensemble trains on their features and labels
            feature_spec = FeatureSpec.from_dict(records[0].feature_spec)
            label_spec = LabelSpec.from_dict(records[0].label_spec)
            candles, data = load_data(
                con, market, unit, feature_spec, label_spec, config.get("until")
            )
            split = split_enough(
                candles, data, split_spec, feature_spec, label_spec, market, unit, min_train
            )
        check_member_periods(records, data, split, config["method"])
        loaded = [(r, load_record(r).model) for r in records]

        def on_fold(k: int, n: int) -> None:
            beat(con, run_id)
            notify(Progress("fold", k + 1, n, text="stacking folds"))

        model: Model = fit_ensemble(
            loaded,
            config["method"],
            data,
            split,
            stack_folds=int(config["stack_folds"]),
            on_fold=on_fold,
        )
        params = {**model.get_params(), "stack_folds": config["stack_folds"]}
    else:
        params = {**config["params"], "task": task}
        if task == "regression":
            params.setdefault("threshold", label_spec.threshold)
        if int(config["trials"]) > 0:
            total = int(config["trials"])
            done = [0]

            def on_trial(trial: Trial) -> None:
                done[0] += 1
                score = {"loss": trial.score} if trial.score is not None else {}
                log_epoch(con, run_id, trial.number, {**score}, split="trial")
                update_run(con, run_id, progress=0.5 * done[0] / total)
                notify(Progress("trial", done[0], total, score))

            tuning = tune(
                kind,
                params,
                data,
                split,
                trials=total,
                timeout=config["timeout"],
                n_jobs=int(config["n_jobs"]),
                seed=int(params.get("seed", 0)),
                folds=int(config["tune_folds"]),
                on_trial=on_trial,
            )
            params = tuning.best
        model = create_model(kind, **params)
        checkpoint = None
        fitted = model.get_params()  # torch: epochs; xgboost reports boosting rounds
        total_epochs = int(fitted.get("epochs") or fitted.get("n_estimators") or 1)
        if isinstance(model, SequenceModel):
            checkpoint = _checkpoint_path(run_id)
            update_run(con, run_id, checkpoint=str(checkpoint))

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal epochs_run
            epochs_run = epoch + 1
            log_epoch(con, run_id, epoch, metrics)
            base = 0.5 if tuning is not None else 0.0
            done = min(1.0, epochs_run / total_epochs)
            update_run(con, run_id, progress=base + (1 - base) * 0.9 * done)
            notify(Progress("epoch", epochs_run, total_epochs, metrics))

        try:
            model.fit(
                data.X[split.train],
                y_train,
                data.X[split.validation],
                data.y[split.validation],
                on_epoch=on_epoch,
                checkpoint=checkpoint,
            )
        except CheckpointError as exc:
            raise TrainingError(
                f"run {run_id} cannot resume: {exc}",
                f"run it again from its first epoch: `upquant train --resume {run_id} --restart`",
            ) from exc
        params = model.get_params()

    beat(con, run_id)
    notify(Progress("step", 0, 0, text="evaluating on the test part"))
    metrics, trading = evaluate_parts(
        model,
        data,
        split,
        candles,
        task,
        threshold=float(config["threshold"]),
        fee=float(config["fee"]),
        unit=unit,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp))
        artifact = store_artifact(Path(tmp))
    stored_params = {**params, "split": split_spec.to_dict(), "columns": data.columns}
    if tuning is not None:
        stored_params["search"] = tuning.to_dict()
    do_promote = (
        champion(con, market, unit) is None
        if config["promote"] is None
        else bool(config["promote"])
    )
    record = register_model(
        con,
        name=config["name"] or f"{kind}-{market}-{unit}",
        kind=kind,
        market=market,
        unit=unit,
        feature_spec=feature_spec.to_dict(),
        feature_spec_hash=feature_spec.hash(),
        label_spec=label_spec.to_dict(),
        params=stored_params,
        artifact=str(artifact.path),
        sha256=artifact.sha256,
        size=artifact.size,
        status="candidate",
        metrics=metrics,
        promote=do_promote,
        tags={
            "run_id": run_id,
            "train_from": str(data.ts[split.train[0]]),
            "train_to": str(data.ts[split.train[-1]]),
            "validation_from": str(data.ts[split.validation[0]]),
            "validation_to": str(data.ts[split.validation[-1]]),
            "test_from": str(data.ts[split.test[0]]),
            "test_to": str(data.ts[split.test[-1]]),
        },
        run_id=run_id,
    )
    balance = (
        {"train": class_balance(y_train), "test": class_balance(data.y[split.test])}
        if task == "classification"
        else {}
    )
    return TrainReport(
        model=record,
        run_id=run_id,
        rows={
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
        metrics=metrics,
        class_balance=balance,
        promoted=do_promote,
        features=data.columns,
        trading=trading,
        tuning=tuning,
        epochs=epochs_run,
    )


def evaluate_parts(
    model: Model,
    data: Dataset,
    split: Split,
    candles: pd.DataFrame,
    task: str,
    *,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
    unit: str,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Validation and test metrics beside the baselines, and the trading metrics of the
    model's test-part signals beside sma-cross, buy-and-hold, no-trade and majority class."""
    metrics: dict[str, dict[str, float]] = {}
    y_train = data.y[split.train]
    probs_test = predict_rows(model, data.X, split.test)
    for part, rows in (("validation", split.validation), ("test", split.test)):
        y = data.y[rows]
        if task == "regression":
            metrics[part] = regression_metrics(y, predict_values(model, data.X, rows))
        else:
            proba = probs_test if part == "test" else predict_rows(model, data.X, rows)
            metrics[part] = classification_metrics(y, proba.argmax(axis=1), proba)
    y_test = data.y[split.test]
    if task == "regression":
        metrics["baseline_zero_test"] = regression_metrics(y_test, np.zeros(len(y_test)))
    else:
        metrics["baseline_majority_test"] = majority_baseline(y_train, y_test)
    trading = trading_report(
        candles, data, split, probs_test, threshold=threshold, fee=fee, unit=unit
    )
    for name, values in trading.items():
        metrics[f"trading_{name}"] = {
            k: float(v) for k, v in values.items() if isinstance(v, int | float)
        }
    return metrics, trading


def trading_report(
    candles: pd.DataFrame,
    data: Dataset,
    split: Split,
    probs: np.ndarray,
    *,
    threshold: float,
    fee: float,
    unit: str,
) -> dict[str, dict[str, Any]]:
    """Backtest (after fees) of the model's signals on the test part's candles, with baselines."""
    check_confidence(threshold)
    first, last = data.ts[split.test[0]], data.ts[split.test[-1]]
    ts = pd.DatetimeIndex(candles["ts"])
    part = candles[(ts >= first) & (ts <= last)].reset_index(drop=True)
    actions = candle_actions(part, data.ts[split.test], actions_from_probs(probs, threshold))
    rule = SmaCross()
    results = {
        "model": backtest(part, actions, fee=fee, unit=unit, name="model"),
        "sma_cross": backtest(
            part,
            sma_cross_actions(part["close"].to_numpy(), rule.fast, rule.slow),
            fee=fee,
            unit=unit,
            name=rule.name,
        ),
        **{
            name.replace("-", "_"): result
            for name, result in baseline_results(
                part,
                fee=fee,
                unit=unit,
                y_train=data.y[split.train] if data.y.dtype.kind == "i" else None,
            ).items()
        },
    }
    return {name: dict(result.metrics) for name, result in results.items()}


def clone(record: ModelRecord) -> Model:
    """A fresh, unfitted model of the kind and parameters `record` was trained with."""
    if record.kind == "ensemble":
        raise TrainingError("an ensemble is retrained through its members; clone those")
    return create_model(record.kind, **model_params(record))
