"""Evaluation of a registered model on held-out candles: every research metric beside the
baselines, a calibration (reliability) table, feature importance, and walk-forward
retraining with mean ± std over folds."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import load_ref
from engine.research.dataset import walk_forward_dataset
from engine.research.features import FeatureSpec
from engine.research.labels import LabelSpec
from engine.research.metrics import (
    classification_metrics,
    confusion_matrix,
    majority_baseline,
    regression_metrics,
)
from engine.research.splits import Split, WalkForwardSpec
from engine.trading.backtest import DEFAULT_FEE
from engine.training.batch import predict_rows, predict_values
from engine.training.train import TrainingError, clone, load_data, trading_report
from store.registry import ModelRecord, get_model


@dataclass
class Evaluation:
    model: str
    model_id: int
    task: str
    first: pd.Timestamp
    last: pd.Timestamp
    rows: int
    overlaps_training: bool
    metrics: dict[str, dict[str, float]]
    trading: dict[str, dict[str, Any]]
    confusion: pd.DataFrame | None = None
    reliability: pd.DataFrame | None = None
    importance: list[tuple[str, float]] = field(default_factory=list)
    note: str | None = None  # set when a bad artifact made it load the previous version


def reliability_table(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Rows by confidence (top-class probability) bin: count, mean confidence, accuracy, gap."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(1 / probs.shape[1], 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            rows.append(
                (f"{edges[b]:.2f}–{edges[b + 1]:.2f}", int(mask.sum()), conf, acc, acc - conf)
            )
    return pd.DataFrame(rows, columns=["bin", "rows", "confidence", "accuracy", "gap"])


def calibration_metrics(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, float]:
    table = reliability_table(y, probs, bins)
    onehot = np.eye(probs.shape[1])[y]
    return {
        "ece": float((table["rows"] * table["gap"].abs()).sum() / max(len(y), 1)),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
    }


def _rows_between(ts: pd.DatetimeIndex, start: Any, end: Any, inclusive_end: bool) -> np.ndarray:
    mask = np.ones(len(ts), dtype=bool)
    if start is not None:
        mask &= ts >= pd.Timestamp(start)
    if end is not None:
        mask &= ts <= pd.Timestamp(end) if inclusive_end else ts < pd.Timestamp(end)
    return np.flatnonzero(mask)


def evaluate_model(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
) -> Evaluation:
    """Evaluate `ref` on its own test part, or on start <= ts < end when given (flagged if
    that reaches into the rows it was trained on)."""
    loaded, note = load_ref(con, ref)
    record = loaded.record
    spec, labels = (
        FeatureSpec.from_dict(record.feature_spec),
        LabelSpec.from_dict(record.label_spec),
    )
    candles, data = load_data(con, record.market, record.unit, spec, labels)
    tags = record.tags or {}
    if start is None and end is None:
        rows = _rows_between(data.ts, tags.get("test_from"), tags.get("test_to"), True)
    else:
        rows = _rows_between(data.ts, start, end, False)
    rows = rows[rows >= loaded.context] if len(rows) else rows
    if len(rows) == 0:
        raise ValueError(f"no labelled rows to evaluate {record.ref} on in that range")
    train = _rows_between(data.ts, tags.get("train_from"), tags.get("train_to"), True)
    overlaps = bool(len(np.intersect1d(rows, train)))
    task = "regression" if not labels.is_classification else "classification"
    y = data.y[rows]
    probs = predict_rows(loaded.model, data.X, rows)
    metrics: dict[str, dict[str, float]] = {}
    confusion = reliability = None
    if task == "regression":
        metrics["held_out"] = regression_metrics(y, predict_values(loaded.model, data.X, rows))
        metrics["baseline_zero"] = regression_metrics(y, np.zeros(len(y)))
    else:
        pred = probs.argmax(axis=1)
        metrics["held_out"] = {
            **classification_metrics(y, pred, probs),
            **calibration_metrics(y, probs),
        }
        if len(train):
            metrics["baseline_majority"] = majority_baseline(data.y[train], y)
        confusion = confusion_matrix(y, pred)
        reliability = reliability_table(y, probs)
    split = Split(train if len(train) else rows[:1], np.arange(0), rows)
    trading = trading_report(
        candles, data, split, probs, threshold=threshold, fee=fee, unit=record.unit
    )
    importance = loaded.model.feature_importance() or {}
    columns = data.columns
    ranked = sorted(((columns[i], v) for i, v in importance.items()), key=lambda kv: -kv[1])
    return Evaluation(
        model=record.ref,
        model_id=record.id,
        task=task,
        first=data.ts[rows[0]],
        last=data.ts[rows[-1]],
        rows=len(rows),
        overlaps_training=overlaps,
        metrics=metrics,
        trading=trading,
        confusion=confusion,
        reliability=reliability,
        importance=ranked[:15],
        note=note,
    )


FOLD_TRADING_METRICS = ("total_return", "sharpe", "max_drawdown", "trades", "win_rate")


@dataclass
class WalkForwardEvaluation:
    model: str
    folds: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]


@dataclass
class WalkForwardInputs:
    """What a walk-forward retrains on, read from the store by its owner (`gather_walk_forward`)
    and handed to `fit_walk_forward`, which never opens the store (a job's worker process)."""

    record: ModelRecord
    labels: LabelSpec
    candles: pd.DataFrame
    data: Any  # engine.research.dataset's feature matrix and labels
    folds: int
    threshold: float
    fee: float


def gather_walk_forward(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    folds: int = 5,
    *,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
) -> WalkForwardInputs:
    """The candles and feature matrix `ref`'s walk-forward retrains on (its whole history)."""
    record = get_model(con, ref)
    if record.kind == "ensemble":
        raise TrainingError("walk-forward retrains single models; evaluate each ensemble member")
    spec, labels = (
        FeatureSpec.from_dict(record.feature_spec),
        LabelSpec.from_dict(record.label_spec),
    )
    candles, data = load_data(con, record.market, record.unit, spec, labels)
    return WalkForwardInputs(record, labels, candles, data, folds, threshold, fee)


def fit_walk_forward(
    inputs: WalkForwardInputs,
    on_fold: Callable[[int, int, dict[str, float]], object] | None = None,
) -> WalkForwardEvaluation:
    """Retrain on each fold (expanding window, purged) and score its test block: model and
    baseline metrics, then mean ± std. `on_fold(done, total, row)` after each fold."""
    record, labels, candles, data = inputs.record, inputs.labels, inputs.candles, inputs.data
    splits = list(walk_forward_dataset(data, WalkForwardSpec(folds=inputs.folds)))
    out: list[dict[str, float]] = []
    for fold in splits:
        model = clone(record)
        validation = fold.validation if len(fold.validation) else fold.train[-1:]
        model.fit(data.X[fold.train], data.y[fold.train], data.X[validation], data.y[validation])
        y = data.y[fold.test]
        probs = predict_rows(model, data.X, fold.test)
        row: dict[str, float] = {"fold": float(fold.index), "test_rows": float(len(fold.test))}
        if labels.is_classification:
            scored = classification_metrics(y, probs.argmax(axis=1), probs)
            base = majority_baseline(data.y[fold.train], y)
            row.update(
                accuracy=scored["accuracy"],
                f1_macro=scored["f1_macro"],
                log_loss=scored["log_loss"],
                majority_accuracy=base["accuracy"],
                majority_f1_macro=base["f1_macro"],
            )
        else:
            scored = regression_metrics(y, predict_values(model, data.X, fold.test))
            row.update(mse=scored["mse"], ic=scored["ic"], rank_ic=scored["rank_ic"])
        trading = trading_report(
            candles, data, fold, probs, threshold=inputs.threshold, fee=inputs.fee, unit=record.unit
        )
        for name, metrics in trading.items():  # the model and every baseline, same metrics
            for metric in FOLD_TRADING_METRICS:
                row[f"{name}_{metric}"] = float(metrics[metric])
        out.append(row)
        if on_fold is not None:
            on_fold(len(out), len(splits), row)
    keys = [k for k in out[0] if k not in ("fold", "test_rows")]
    with warnings.catch_warnings():  # a metric undefined in every fold (no trade) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {k: float(np.nanmean([r[k] for r in out])) for k in keys}
        std = {
            k: float(np.nanstd([r[k] for r in out], ddof=1)) if len(out) > 1 else 0.0 for k in keys
        }
    return WalkForwardEvaluation(record.ref, out, mean, std)


def walk_forward_evaluate(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    folds: int = 5,
    *,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
) -> WalkForwardEvaluation:
    """Retrain `ref`'s kind and parameters on each walk-forward fold (expanding window,
    purged) and score its test block, in this thread: `gather_walk_forward` then
    `fit_walk_forward` (a job runs the second in a worker, `walk_forward_worker`)."""
    return fit_walk_forward(gather_walk_forward(con, ref, folds, threshold=threshold, fee=fee))


def walk_forward_worker(
    conn: Connection, parent: int, run_id: int, inputs: WalkForwardInputs
) -> None:
    """The target of a walk-forward job's spawned process (`engine.service.evaluation`): fit
    every fold of `inputs`, never opening the store, and answer over `conn` with ("fold",
    done, total) after each fold, then one final ("done", WalkForwardEvaluation), ("failed",
    type, message, hint) or ("interrupted", reason). It stops on SIGTERM (a cancel) and ends
    with its owner, as a training job's worker does (`engine.training.worker`)."""
    import signal
    import threading

    from engine.training import worker

    threading.Thread(target=worker._watch_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGTERM, worker._stop)
    sink = worker.PipeSink(conn)
    try:
        worker.lower_priority()
        result = fit_walk_forward(inputs, lambda done, total, _row: sink.send("fold", done, total))
    except KeyboardInterrupt:
        sink.send("interrupted", "stopped by Ctrl-C or a signal")
    except Exception as exc:  # noqa: BLE001  the owner records it as the run's error
        sink.send("failed", type(exc).__name__, str(exc), getattr(exc, "hint", None))
    else:
        if worker._stopping.is_set():
            sink.send("interrupted", "stopped by Ctrl-C or a signal")
        else:
            sink.send("done", result)
    finally:
        conn.close()


def compare_models(con: duckdb.DuckDBPyConnection, refs: list[str]) -> pd.DataFrame:
    """Stored test metrics of several models side by side (rows: metric, columns: model)."""
    from store.registry import model_metrics

    columns: dict[str, dict[str, float]] = {}
    for ref in refs:
        record = get_model(con, ref)
        stored = model_metrics(con, record.id)
        flat = {f"{k}": v for k, v in stored.get("test", {}).items()}
        for key in ("baseline_majority_test", "baseline_zero_test"):
            for k, v in stored.get(key, {}).items():
                flat[f"baseline {k}"] = v
        for k, v in stored.get("trading_model", {}).items():
            flat[f"trading {k}"] = v
        columns[f"{record.ref} ({record.kind})"] = flat
    return pd.DataFrame(columns)
