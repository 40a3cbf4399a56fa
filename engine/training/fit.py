"""The compute side of a training run: dataset → purged chronological split → (tune) → fit →
evaluate on the test part beside the baselines → artifact file. It never opens the store.

Everything it learns from comes in as `FitInputs` (the candles, the ensemble members' registry
rows), read by the run's owner; everything it reports goes out through a `RunSink` (epoch
metrics, progress, heartbeat, checkpoint, display), and what it made comes back as a
`FitResult` (the artifact already written under `$UPQUANT_HOME/artifacts/`, the metrics and
the registry fields) that the owner registers in one transaction. The same code runs in the
owner's process (`engine.training.train.train_model`, the sink writing to DuckDB) and in a
worker process (`engine.training.worker`, the sink a pipe to the owner).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from engine.live.inference import load_record
from engine.params import check_confidence
from engine.research.dataset import Dataset, build_dataset, split_dataset
from engine.research.features import FeatureSpec
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
from engine.training.ensembles import check_member_periods, fit_ensemble
from engine.training.tuning import Trial, TuneResult, tune
from models import CLASSES, Model, create_model
from models.torch_base import CheckpointError, SequenceModel
from store.artifacts import Artifact, store_artifact
from store.db import home
from store.registry import ModelRecord

TORCH_KINDS = ("lstm", "transformer")


class TrainingError(Exception):
    """Training cannot start or finish; the message says why, `hint` (or the message) what
    to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


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


class RunSink(Protocol):
    """Where a fitting run reports as it goes (the owner records it in `training_runs` and
    `metrics`)."""

    def epoch(self, step: int, metrics: dict[str, float], split: str = "epoch") -> None: ...

    def progress(self, value: float) -> None: ...

    def beat(self) -> None: ...

    def checkpoint(self, path: Path) -> None: ...

    def notify(self, progress: Progress) -> None: ...


@dataclass
class FitInputs:
    """What a run learns from, read from the store by its owner."""

    candles: pd.DataFrame
    members: list[ModelRecord] = field(default_factory=list)


@dataclass
class FitResult:
    """What a run made: its artifact (written), and what the registry row is made of."""

    artifact: Artifact
    feature_spec: dict[str, Any]
    feature_spec_hash: str
    label_spec: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    trading: dict[str, dict[str, Any]]
    tags: dict[str, Any]
    rows: dict[str, int]
    class_balance: dict[str, dict[str, float]]
    features: list[str]
    tuning: TuneResult | None
    epochs: int


def checkpoint_path(run_id: int) -> Path:
    return home() / "runs" / str(run_id) / "checkpoint.pt"


def no_candles(market: str, unit: str) -> TrainingError:
    return TrainingError(
        f"no {market} unit {unit} candles in the store;"
        f" run `upquant data import` or `upquant data fetch {market} --unit {unit}` first"
    )


def min_train_rows(kind: str, params: dict[str, Any]) -> int:
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


def fit_run(run_id: int, config: dict[str, Any], inputs: FitInputs, sink: RunSink) -> FitResult:
    """Fit, evaluate and save the model of run `run_id` (see the module docstring)."""
    kind, market, unit = config["kind"], config["market"], config["unit"]
    feature_spec = FeatureSpec.from_dict(config["feature_spec"])
    label_spec = LabelSpec.from_dict(config["label_spec"])
    split_spec = SplitSpec.from_dict(config["split_spec"])
    task = "classification" if label_spec.is_classification else "regression"
    candles = inputs.candles
    if candles.empty:
        raise no_candles(market, unit)

    data = build_dataset(candles, feature_spec, label_spec, unit=unit)
    sink.beat()
    min_train = min_train_rows(kind, config["params"])
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
        records = inputs.members
        if any(
            r.feature_spec_hash != feature_spec.hash() or r.label_spec != label_spec.to_dict()
            for r in records
        ):
            # the members decide the data: the ensemble trains on their features and labels
            feature_spec = FeatureSpec.from_dict(records[0].feature_spec)
            label_spec = LabelSpec.from_dict(records[0].label_spec)
            data = build_dataset(candles, feature_spec, label_spec, unit=unit)
            split = split_enough(
                candles, data, split_spec, feature_spec, label_spec, market, unit, min_train
            )
        check_member_periods(records, data, split, config["method"])
        loaded = [(r, load_record(r).model) for r in records]

        def on_fold(k: int, n: int) -> None:
            sink.beat()
            sink.notify(Progress("fold", k + 1, n, text="stacking folds"))

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
                sink.epoch(trial.number, {**score}, split="trial")
                sink.progress(0.5 * done[0] / total)
                sink.notify(Progress("trial", done[0], total, score))

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
            checkpoint = checkpoint_path(run_id)
            sink.checkpoint(checkpoint)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal epochs_run
            epochs_run = epoch + 1
            sink.epoch(epoch, metrics)
            base = 0.5 if tuning is not None else 0.0
            done = min(1.0, epochs_run / total_epochs)
            sink.progress(base + (1 - base) * 0.9 * done)
            sink.notify(Progress("epoch", epochs_run, total_epochs, metrics))

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

    sink.beat()
    sink.notify(Progress("step", 0, 0, text="evaluating on the test part"))
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
    balance = (
        {"train": class_balance(y_train), "test": class_balance(data.y[split.test])}
        if task == "classification"
        else {}
    )
    return FitResult(
        artifact=artifact,
        feature_spec=feature_spec.to_dict(),
        feature_spec_hash=feature_spec.hash(),
        label_spec=label_spec.to_dict(),
        params=stored_params,
        metrics=metrics,
        trading=trading,
        tags={
            "run_id": run_id,
            "train_from": str(data.ts[split.train[0]]),
            "train_to": str(data.ts[split.train[-1]]),
            "validation_from": str(data.ts[split.validation[0]]),
            "validation_to": str(data.ts[split.validation[-1]]),
            "test_from": str(data.ts[split.test[0]]),
            "test_to": str(data.ts[split.test[-1]]),
        },
        rows={
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
        class_balance=balance,
        features=data.columns,
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
