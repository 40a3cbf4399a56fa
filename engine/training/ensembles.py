"""Ensembles of registered models: member checks, references, and the out-of-fold member
predictions stacking learns from, made in time order (walk-forward, never shuffled folds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.research.dataset import Dataset
from engine.research.splits import Split, WalkForwardSpec, walk_forward
from engine.training.batch import predict_rows
from models import EnsembleModel, Model, create_model
from store.registry import ModelRecord, get_model

# Keys of a registry row's params that describe the run, not the model's constructor (an
# online update's record of what it learned from, engine.training.online, included).
RUN_KEYS = {
    "split",
    "columns",
    "search",
    "trials",
    "members",
    "method",
    "C",
    "stack_folds",
    "online_update_of",
    "online_update",
}


def model_params(record: ModelRecord) -> dict[str, Any]:
    return {k: v for k, v in record.params.items() if k not in RUN_KEYS}


def member_ref(record: ModelRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "ref": record.ref,
        "kind": record.kind,
        "artifact": record.artifact,
        "sha256": record.sha256,
        "size": record.size,
    }


def resolve_members(
    con: duckdb.DuckDBPyConnection, refs: list[str], market: str, unit: str
) -> list[ModelRecord]:
    """Registry rows of the members; they must be classifiers of market/unit sharing one
    feature spec and one label spec."""
    if len(refs) < 2:
        raise ValueError("an ensemble needs at least two --members (name, name@version or id)")
    records = [get_model(con, ref) for ref in refs]
    first = records[0]
    for r in records:
        if r.kind == "ensemble":
            raise ValueError(f"{r.ref} is itself an ensemble; use its members instead")
        if (r.market, r.unit) != (market, unit):
            raise ValueError(
                f"member {r.ref} is a {r.market} unit {r.unit} model, not {market} {unit}"
            )
        if r.feature_spec_hash != first.feature_spec_hash:
            raise ValueError(f"member {r.ref} uses another feature spec than {first.ref}")
        if r.label_spec != first.label_spec:
            raise ValueError(f"member {r.ref} uses another label spec than {first.ref}")
        if r.params.get("task", "classification") != "classification":
            raise ValueError(f"member {r.ref} is a regressor; ensembles combine classifiers")
    return records


def check_member_periods(
    records: list[ModelRecord], data: Dataset, split: Split, method: str
) -> None:
    """Members must not have learned from the rows the ensemble is judged on: their training
    and early-stopping rows end before its test part, and for the combiners fitted on the
    validation part (weighted, blend) their training rows end before that part."""
    test_from = data.ts[split.test[0]]
    validation_from = data.ts[split.validation[0]]
    for r in records:
        tags = r.tags or {}
        if "train_to" not in tags:
            continue  # registered before training periods were recorded
        seen_to = pd.Timestamp(tags.get("validation_to") or tags["train_to"])
        if seen_to >= test_from:
            raise ValueError(
                f"member {r.ref} was trained or early-stopped on candles up to {seen_to}, inside"
                f" the ensemble's test part (from {test_from}); train the members with the"
                " ensemble's split (--train/--validation) or give the ensemble a later one"
            )
        train_to = pd.Timestamp(tags["train_to"])
        if method in ("weighted", "blend") and train_to >= validation_from:
            raise ValueError(
                f"member {r.ref} was trained on candles up to {train_to}, inside the"
                f" validation part (from {validation_from}) that {method} fits its combiner on"
            )


@dataclass(frozen=True)
class OutOfFold:
    """Member probabilities for the rows `rows` (positions in the dataset), each made by
    members trained only on rows before it; `folds` holds (train rows, predicted rows)."""

    probs: np.ndarray  # (len(rows), members, 3)
    rows: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def time_ordered_oof(
    factories: list[Callable[[], Model]],
    data: Dataset,
    rows: np.ndarray,
    folds: int = 3,
    on_fold: Callable[[int, int], None] | None = None,
) -> OutOfFold:
    """Walk-forward over `rows` (the training part): fold k trains fresh members on the rows
    before its test block (purged by label end times, so no label reaches the block) and
    predicts the block. The first block has no earlier rows and is never predicted."""
    rows = np.asarray(rows)
    spec = WalkForwardSpec(folds=folds, validation=0.15)
    ts, label_end = data.ts[rows], data.label_end[rows] if data.label_end is not None else None
    X, y = data.X[rows], data.y[rows]
    parts: list[np.ndarray] = []
    covered: list[np.ndarray] = []
    record: list[tuple[np.ndarray, np.ndarray]] = []
    for fold in walk_forward(len(rows), spec, ts=ts, label_end=label_end):
        fit_rows = np.concatenate([fold.train, fold.validation])
        member_probs = []
        for factory in factories:
            model = factory()
            validation = fold.validation if len(fold.validation) else fold.train[-1:]
            model.fit(X[fold.train], y[fold.train], X[validation], y[validation])
            member_probs.append(predict_rows(model, X, fold.test))
        parts.append(np.stack(member_probs, axis=1))
        covered.append(rows[fold.test])
        record.append((rows[fit_rows], rows[fold.test]))
        if on_fold is not None:
            on_fold(fold.index, folds)
    return OutOfFold(np.concatenate(parts), np.concatenate(covered), record)


def fit_ensemble(
    members: list[tuple[ModelRecord, Model]],
    method: str,
    data: Dataset,
    split: Split,
    *,
    stack_folds: int = 3,
    on_fold: Callable[[int, int], None] | None = None,
) -> EnsembleModel:
    """An ensemble of fitted members, its combiner fitted as `method` asks: weights and the
    blend meta-learner on the validation part, the stack meta-learner on time-ordered
    out-of-fold predictions over the training part."""
    ensemble = EnsembleModel(method, [m for _, m in members], [member_ref(r) for r, _ in members])
    X_val, y_val = data.X[split.validation], data.y[split.validation]
    if method in ("weighted", "blend"):
        # members see their context rows before the validation part, as when serving
        P_val = np.stack([predict_rows(m, data.X, split.validation) for _, m in members], axis=1)
        return ensemble.fit(X_val, y_val, X_val, y_val, val_probs=P_val)
    oof = None
    if method == "stack":
        factories: list[Callable[[], Model]] = [
            partial(create_model, r.kind, **model_params(r)) for r, _ in members
        ]
        result = time_ordered_oof(factories, data, split.train, stack_folds, on_fold)
        oof = (result.probs, data.y[result.rows])
    return ensemble.fit(X_val, y_val, X_val, y_val, oof=oof)
