"""Evaluation of a registered model on held-out candles: every research metric beside the
baselines, a calibration (reliability) table, feature importance, and walk-forward
retraining with mean ± std over folds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
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
from store.registry import get_model


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


def walk_forward_evaluate(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    folds: int = 5,
    *,
    threshold: float = 0.5,
    fee: float = DEFAULT_FEE,
) -> WalkForwardEvaluation:
    """Retrain `ref`'s kind and parameters on each walk-forward fold (expanding window,
    purged) and score its test block: model and baseline metrics, then mean ± std."""
    record = get_model(con, ref)
    if record.kind == "ensemble":
        raise TrainingError("walk-forward retrains single models; evaluate each ensemble member")
    spec, labels = (
        FeatureSpec.from_dict(record.feature_spec),
        LabelSpec.from_dict(record.label_spec),
    )
    candles, data = load_data(con, record.market, record.unit, spec, labels)
    out: list[dict[str, float]] = []
    for fold in walk_forward_dataset(data, WalkForwardSpec(folds=folds)):
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
            candles, data, fold, probs, threshold=threshold, fee=fee, unit=record.unit
        )
        for name, metrics in trading.items():  # the model and every baseline, same metrics
            for metric in FOLD_TRADING_METRICS:
                row[f"{name}_{metric}"] = float(metrics[metric])
        out.append(row)
    keys = [k for k in out[0] if k not in ("fold", "test_rows")]
    with warnings.catch_warnings():  # a metric undefined in every fold (no trade) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {k: float(np.nanmean([r[k] for r in out])) for k in keys}
        std = {
            k: float(np.nanstd([r[k] for r in out], ddof=1)) if len(out) > 1 else 0.0 for k in keys
        }
    return WalkForwardEvaluation(record.ref, out, mean, std)


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
