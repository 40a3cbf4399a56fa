"""Online updates: a registered model learns from the candles resolved since it was fitted,
and the result is a new version of its name (issue 11 item 6).

XGBoost continues boosting from the rounds the model predicts with (`XGBoostModel.update`: a
bounded number of new rounds, same parameters); a torch model is fine-tuned from its weights
(`SequenceModel.update`: a few epochs at a tenth of its learning rate). The parent is never
changed: the child is registered with `parent_id` = the parent, its params noting
`online_update_of`, and it takes the `challenger` alias, so the promotion gate judges it live
against the champion. Rolling an update back is an alias move (take the challenger alias
from it, or promote the parent again): nothing is deleted or rewritten.

Which rows it learns from: rows strictly after the model's validation period
(`tags.validation_to`; for a model that was itself updated, strictly after the rows that
update learned from, `tags.update_to`), each with a resolved label: the label's horizon has
passed within the stored candles (before `until` when given), so no label reads a candle
from the future. `after="test"` starts after the parent's test part instead and keeps that
part held out. By default (`after="validation"`) the parent's test part is learned from: the
parent's stored test metrics then say nothing about the child (it gets none), and the child
is judged only live, by the gate, on candles after everything it learned from (its
`train_to` tag is the update's last row, which is what the A/B evaluation and expiry read).
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd

from engine.live.inference import load_record
from engine.research.dataset import build_dataset
from engine.research.features import FeatureSpec
from engine.research.labels import LabelSpec
from engine.training.fit import TORCH_KINDS, TrainingError
from store.artifacts import store_artifact
from store.candles import load_candles
from store.model_refs import resolve
from store.registry import ModelRecord, get_model, move_alias, register_model

# below this many resolved rows an update learns noise (and 1440 is one day of 1m candles)
MIN_UPDATE_ROWS = 100
DEFAULT_ROUNDS = 20  # xgboost: new boosting rounds
DEFAULT_EPOCHS = 2  # torch: fine-tuning epochs ...
LR_FACTOR = 0.1  # ... at this fraction of the model's learning rate
UPDATABLE = ("xgboost", *TORCH_KINDS)

After = Literal["validation", "test"]


def boundary(record: ModelRecord, after: After = "validation") -> pd.Timestamp:
    """The last row the model has learned from (or that is held out, with `after="test"`):
    an update learns only from rows strictly after it."""
    tags = record.tags or {}
    key = "test_to" if after == "test" else "validation_to"
    found = [pd.Timestamp(tags[k]) for k in (key, "update_to") if tags.get(k)]
    if not found:
        raise TrainingError(
            f"{record.ref} records no {key}: it was registered from an artifact, so which"
            " candles it has not seen is unknown",
            "retrain it instead (`upquant models retrain MARKET`), which records its split",
        )
    return max(t if t.tzinfo else t.tz_localize("UTC") for t in found)


def _history_start(
    con: duckdb.DuckDBPyConnection, record: ModelRecord, after_ts: pd.Timestamp, rows: int
) -> datetime | None:
    """The stored candle `rows` candles before `after_ts` (None: the history is shorter)."""
    found = con.execute(
        "SELECT ts FROM candles WHERE market = ? AND unit = ? AND ts <= ?"
        " ORDER BY ts DESC LIMIT 1 OFFSET ?",
        [record.market, record.unit, after_ts.to_pydatetime(), rows],
    ).fetchall()
    return found[0][0] if found else None


def online_update(
    con: duckdb.DuckDBPyConnection,
    ref: str,
    *,
    rounds: int | None = None,
    epochs: int | None = None,
    after: After = "validation",
    until: datetime | None = None,
    by: str = "user",
    reason: str | None = None,
    min_rows: int = MIN_UPDATE_ROWS,
) -> ModelRecord:
    """Update model `ref` on its newly resolved rows (see the module docstring) and register
    the child as the next version of its name, holding the `challenger` alias; returns it.
    `rounds` (xgboost) / `epochs` (torch): how much it learns; `until`: use only candles
    before it (default: every stored one). TrainingError (message and hint) when the model
    cannot be updated or too few rows resolved."""
    record = resolve(con, ref)
    if record.kind not in UPDATABLE:
        raise TrainingError(
            f"{record.ref} is a {record.kind} model: online updates continue an xgboost"
            f" booster or fine-tune a torch network ({', '.join(UPDATABLE)})",
            "retrain it instead (`upquant models retrain MARKET`)",
        )
    if record.kind == "xgboost" and epochs is not None:
        raise TrainingError("epochs are for torch models; an xgboost update takes rounds")
    if record.kind in TORCH_KINDS and rounds is not None:
        raise TrainingError("rounds are for xgboost models; a torch update takes epochs")
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    start_after = boundary(record, after)
    feature_spec = FeatureSpec.from_dict(record.feature_spec)
    label_spec = LabelSpec.from_dict(record.label_spec)
    loaded = load_record(record)  # verified before any work
    model: Any = loaded.model
    context = int(loaded.context)
    history = max(feature_spec.window(), feature_spec.warmup(), label_spec.lookback())
    first = _history_start(con, record, start_after, history + context + 1)
    candles = load_candles(
        con, record.market, record.unit, start=first, end=pd.Timestamp(until) if until else None
    )
    # rows whose every feature and label is known: a label is made only when its horizon's
    # candles are stored (before `until`), so none reads a candle from the future
    data = build_dataset(candles, feature_spec, label_spec, unit=record.unit)
    rows = np.flatnonzero(data.ts > start_after)
    newest = f", the newest up to {data.ts[rows[-1]]:%Y-%m-%d %H:%M}" if len(rows) else ""
    if len(rows) < min_rows:
        raise TrainingError(
            f"{record.ref} has {len(rows)} resolved rows after {start_after:%Y-%m-%d %H:%M}"
            f" (its {'test' if after == 'test' else 'validation'} period{newest}); an online"
            f" update needs at least {min_rows}",
            f"wait for more candles (a label resolves {label_spec.horizon} candles after its"
            f" candle) or fetch them: `upquant data fetch {record.market} --unit {record.unit}`",
        )
    if data.columns != record.params.get("columns", data.columns):
        raise TrainingError(
            f"{record.ref}'s features differ from its spec's columns now; retrain it instead"
        )
    how: dict[str, Any]
    if record.kind == "xgboost":
        count = int(rounds if rounds is not None else DEFAULT_ROUNDS)
        child = model.update(data.X[rows], data.y[rows], rounds=count)
        how = {"rounds": count}
    else:
        if rows[0] < context:
            raise TrainingError(
                f"{record.ref} needs {context} rows before its first new row as context;"
                " the store holds fewer: fetch older candles"
            )
        window = np.arange(rows[0] - context, rows[-1] + 1)
        count = int(epochs if epochs is not None else DEFAULT_EPOCHS)
        child = model.update(data.X[window], data.y[window], epochs=count, lr_factor=LR_FACTOR)
        how = {"epochs": count, "lr_factor": LR_FACTOR}
    with tempfile.TemporaryDirectory() as tmp:
        child.save(Path(tmp))
        artifact = store_artifact(Path(tmp))
    update_from, update_to = str(data.ts[rows[0]]), str(data.ts[rows[-1]])
    update = {**how, "rows": len(rows), "from": update_from, "to": update_to, "after": after}
    parent_tags = record.tags or {}
    tags: dict[str, Any] = {
        "train_from": parent_tags.get("train_from"),
        # the newest row it learned from: what the A/B evaluation and expiry read
        "train_to": update_to,
        "update_from": update_from,
        "update_to": update_to,
        "update_rows": len(rows),
        "online_update_of": record.ref,
    }
    if after == "test":  # its parent's test part stays held out
        for key in ("test_from", "test_to"):
            if parent_tags.get(key):
                tags[key] = parent_tags[key]
    child_record = register_model(
        con,
        name=record.name,
        kind=record.kind,
        market=record.market,
        unit=record.unit,
        feature_spec=record.feature_spec,
        feature_spec_hash=record.feature_spec_hash,
        label_spec=record.label_spec,
        params={**record.params, "online_update_of": record.id, "online_update": update},
        artifact=str(artifact.path),
        sha256=artifact.sha256,
        size=artifact.size,
        status="candidate",
        metrics={},
        tags={k: v for k, v in tags.items() if v is not None},
        parent_id=record.id,
    )
    load_record(child_record)  # an alias goes only to an artifact that loads and verifies
    move_alias(
        con,
        child_record.id,
        "challenger",
        by=by,
        reason=reason or f"online update of {record.ref} on {len(rows)} rows",
    )
    return get_model(con, child_record.id)
