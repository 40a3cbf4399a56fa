"""Headless training: candles -> dataset -> chronological split -> fit -> evaluate -> registry."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from engine.dataset import build_dataset
from engine.features import DEFAULT_SPEC, FeatureSpec
from engine.labels import LabelSpec
from engine.metrics import class_balance, classification_metrics, majority_baseline
from engine.splits import SplitSpec, chronological_split
from models import CLASSES, create_model
from store.artifacts import store_artifact
from store.candles import load_candles
from store.registry import ModelRecord, champion, get_model, register_model, set_champion


class TrainingError(Exception):
    """Training cannot start or finish; the message says why and what to do."""


@dataclass
class TrainReport:
    model: ModelRecord
    rows: dict[str, int]
    metrics: dict[str, dict[str, float]]
    class_balance: dict[str, dict[str, float]]
    promoted: bool
    features: list[str] = field(default_factory=list)


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
) -> TrainReport:
    """Train one model on the stored candles of `market`/`unit` and register it.

    `promote=None` makes it champion only when its market/unit has none yet.
    """
    label_spec = label_spec or LabelSpec()
    split_spec = split_spec or SplitSpec()
    candles = load_candles(con, market, unit)
    if candles.empty:
        raise TrainingError(
            f"no {market} unit {unit} candles in the store;"
            f" run `upquant data import` or `upquant data fetch {market} --unit {unit}` first"
        )
    data = build_dataset(candles, feature_spec, label_spec)
    split = chronological_split(len(data.y), split_spec, label_spec.horizon)
    X_train, y_train = data.X[split.train], data.y[split.train]
    X_val, y_val = data.X[split.validation], data.y[split.validation]
    X_test, y_test = data.X[split.test], data.y[split.test]
    missing = [CLASSES[c] for c in range(len(CLASSES)) if not (y_train == c).any()]
    if missing:
        raise TrainingError(
            f"the training part has no {', '.join(missing)} labels;"
            f" lower the label threshold ({label_spec.threshold}) or use more candles"
        )

    model = create_model(kind, **(params or {}))
    model.fit(X_train, y_train, X_val, y_val)

    metrics: dict[str, dict[str, float]] = {}
    for part, X, y in (("validation", X_val, y_val), ("test", X_test, y_test)):
        proba = model.predict_proba(X)
        metrics[part] = classification_metrics(y, proba.argmax(axis=1), proba)
    metrics["baseline_majority_test"] = majority_baseline(y_train, y_test)

    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp))
        artifact = store_artifact(Path(tmp))
    has_champion = champion(con, market, unit) is not None
    do_promote = (not has_champion) if promote is None else promote
    record = register_model(
        con,
        name=name or f"{kind}-{market}-{unit}",
        kind=kind,
        market=market,
        unit=unit,
        feature_spec=feature_spec.to_dict(),
        feature_spec_hash=feature_spec.hash(),
        label_spec=label_spec.to_dict(),
        params={**model.get_params(), "split": split_spec.to_dict(), "columns": data.columns},
        artifact=str(artifact.path),
        sha256=artifact.sha256,
        size=artifact.size,
        status="candidate",
        metrics=metrics,
        tags={
            "train_from": str(data.ts[split.train[0]]),
            "test_from": str(data.ts[split.test[0]]),
            "test_to": str(data.ts[split.test[-1]]),
        },
    )
    if do_promote:
        set_champion(con, record.id)
        record = get_model(con, record.id)
    return TrainReport(
        model=record,
        rows={"train": len(y_train), "validation": len(y_val), "test": len(y_test)},
        metrics=metrics,
        class_balance={
            "train": class_balance(y_train),
            "test": class_balance(y_test),
        },
        promoted=do_promote,
        features=data.columns,
    )
