"""Inference service: models loaded from verified artifacts, cached, with validated output.

A LoadedModel predicts from a frame of feature rows: tabular models read its last row,
sequence models (and ensembles holding one) the last `context + 1` rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from engine.research.features import FeatureSpec
from models import EnsembleModel, Model, load_model
from store.artifacts import ArtifactError, artifact_path, cache_dir, unpacked_artifact
from store.registry import ModelRecord, champion, fallback_models, get_model


class InferenceError(Exception):
    """The model could not give a usable prediction; the rule strategy takes over."""


@dataclass
class LoadedModel:
    record: ModelRecord
    model: Model
    feature_spec: FeatureSpec

    @property
    def columns(self) -> list[str]:
        return list(self.record.params.get("columns", []))

    @property
    def context(self) -> int:
        """Feature rows before the newest that one prediction reads (window - 1; 0 for trees)."""
        return int(self.model.context)

    @property
    def history_needed(self) -> int:
        """Candles the live engine must keep so the newest `context + 1` feature rows exist."""
        return self.feature_spec.window() + self.context

    def warm(self) -> None:
        """One throwaway prediction on zero rows: compiles and caches what the first live
        candle would otherwise pay for (XGBoost's tree walk compiles in ~1 s on a machine
        without numba's cache, longer than the live inference timeout)."""
        if self.columns:
            self.model.predict_last(np.zeros((self.context + 1, len(self.columns)), np.float32))

    def latest_rows(self, features: pd.DataFrame) -> np.ndarray:
        """The last `context + 1` rows of a feature frame, checked; InferenceError if unusable."""
        need = self.context + 1
        return self.check_rows(
            features.iloc[-need:].to_numpy(dtype=np.float32), list(features.columns)
        )

    def check_rows(self, rows: np.ndarray, columns: list[str]) -> np.ndarray:
        """`rows` (the newest feature rows, `columns` named) as the model reads them: the last
        `context + 1`, float32, every value defined; InferenceError if unusable."""
        if self.columns and columns != self.columns:
            raise InferenceError("feature columns differ from the model's training columns")
        need = self.context + 1
        if len(rows) < need:
            raise InferenceError(f"{len(rows)} feature rows, the model reads {need}")
        rows = np.asarray(rows[-need:], dtype=np.float32)
        if not np.isfinite(rows).all():
            bad = sorted({columns[i] for i in np.flatnonzero(~np.isfinite(rows).all(axis=0))})
            raise InferenceError(f"features not defined for the model's window: {bad}")
        return rows

    def predict_latest(self, features: pd.DataFrame) -> np.ndarray:
        """Validated (3,) probabilities for the newest row of `features`."""
        return validate_probs(self.model.predict_last(self.latest_rows(features)))


def _open(kind: str, artifact: str | None, sha256: str, size: int) -> Any:
    """The model in the artifact `artifact` names, found in the current store. Whatever keeps
    a verified artifact from loading refuses it (ArtifactError), so that callers fall back to
    an earlier version instead of failing: a tar whose sha256 is registered can still have
    been crafted. An encrypted artifact is decrypted only for the time of the load (the model
    holds everything in memory once loaded)."""
    path = artifact_path(artifact, sha256)
    with unpacked_artifact(path, sha256, size, cache_dir() / sha256) as directory:
        try:
            if kind == "ensemble":
                return EnsembleModel.load(directory, load_member=_load_member)
            return load_model(kind, directory)
        except ArtifactError:
            raise
        except Exception as exc:
            raise ArtifactError(
                f"artifact {path} does not load as a {kind} model: {type(exc).__name__}: {exc}"
            ) from exc


def _load_member(ref: dict[str, Any]) -> Model:
    """An ensemble member from its reference in the manifest, found by its sha256 in the store
    that loads the ensemble (older manifests name it by an absolute path in the store that
    trained it)."""
    try:
        return _open(ref["kind"], ref.get("artifact"), ref["sha256"], int(ref["size"]))
    except ArtifactError as exc:
        raise ArtifactError(f"ensemble member {ref.get('ref', ref.get('id'))}: {exc}") from exc


def load_record(record: ModelRecord) -> LoadedModel:
    """Verify the artifact's sha256 (and every ensemble member's) and load it; raises
    ArtifactError if one is missing, truncated or altered."""
    model = _open(record.kind, record.artifact, record.sha256, record.size)
    return LoadedModel(record, model, FeatureSpec.from_dict(record.feature_spec))


def load_with_fallback(
    con: duckdb.DuckDBPyConnection, record: ModelRecord
) -> tuple[LoadedModel | None, str]:
    """`record` loaded, or else the first of its fallbacks that loads (its earlier versions,
    then the earlier champions of its market/unit), with the reason saying which and why."""
    try:
        return load_record(record), f"{record.status} {record.ref}"
    except (ArtifactError, OSError, ValueError) as exc:
        refused = f"{record.status} {record.ref} refused: {exc}"
    for earlier in fallback_models(con, record):
        try:
            return load_record(earlier), f"{refused}; using previous {earlier.ref}"
        except (ArtifactError, OSError, ValueError):
            continue
    return None, refused


def load_ref(con: duckdb.DuckDBPyConnection, ref: str) -> tuple[LoadedModel, str | None]:
    """The model `ref` names (id, `name@version` or `name`), loaded, and a note when it is not
    the one asked for. A bare name means its newest version that passes the integrity check:
    a bad newest artifact falls back to the previous version (the note says so). An exact
    reference is loaded as asked or refused with ArtifactError, naming an intact earlier
    version to use instead."""
    record = get_model(con, ref)
    try:
        return load_record(record), None
    except (ArtifactError, OSError, ValueError) as exc:
        refused = f"{record.ref} refused: {exc}"
    exact = ref.isdigit() or "@" in ref
    for earlier in fallback_models(con, record):
        if earlier.name != record.name:
            break
        try:
            loaded = load_record(earlier)
        except (ArtifactError, OSError, ValueError):
            continue
        if exact:
            raise ArtifactError(f"{refused}; the previous version {earlier.ref} is intact: use it")
        return loaded, f"{refused}; using previous version {earlier.ref}"
    raise ArtifactError(f"{refused}; no earlier version of {record.name} is intact: retrain it")


def load_champion(
    con: duckdb.DuckDBPyConnection, market: str, unit: str
) -> tuple[LoadedModel | None, str]:
    """The champion of market/unit (or the previous one if its artifact is bad), warmed for
    its first live prediction, or None with the reason why not."""
    record = champion(con, market, unit)
    if record is None:
        return None, f"no champion model for {market} unit {unit}"
    loaded, reason = load_with_fallback(con, record)
    if loaded is not None:
        try:
            loaded.warm()
        except Exception:  # noqa: BLE001, S110 - the engine meets it again and falls back, saying why
            pass
    return loaded, reason


def validate_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape != (3,):
        raise InferenceError(f"model returned {probs.shape[0]} probabilities, expected 3")
    if not np.isfinite(probs).all():
        raise InferenceError("model returned NaN or infinite probabilities")
    if abs(probs.sum() - 1.0) > 1e-3 or (probs < 0).any():
        raise InferenceError(
            f"model probabilities do not form a distribution (sum {probs.sum():.4f})"
        )
    return probs


async def predict_one(loaded: LoadedModel, row: np.ndarray, timeout: float = 1.0) -> np.ndarray:
    """Probabilities for the newest of `row` (one feature row, or the model's trailing window
    of rows), off the event loop, within `timeout` seconds."""
    rows = row.reshape(1, -1) if row.ndim == 1 else row
    try:
        probs = await asyncio.wait_for(asyncio.to_thread(loaded.model.predict_last, rows), timeout)
    except TimeoutError as exc:
        raise InferenceError(f"inference timed out after {timeout:.1f}s") from exc
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(f"inference failed: {type(exc).__name__}: {exc}") from exc
    return validate_probs(probs)


async def predict_latest(
    loaded: LoadedModel, features: pd.DataFrame, timeout: float = 1.0
) -> np.ndarray:
    """`loaded.predict_latest(features)` off the event loop, within `timeout` seconds."""
    return await predict_one(loaded, loaded.latest_rows(features), timeout)
