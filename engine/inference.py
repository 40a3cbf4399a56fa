"""Inference service: the champion model, verified and cached, with validated output."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import duckdb
import numpy as np

from engine.features import FeatureSpec
from models import Model, load_model
from store.artifacts import ArtifactError, open_artifact
from store.db import home
from store.registry import ModelRecord, champion


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


def load_record(record: ModelRecord) -> LoadedModel:
    """Verify the artifact's sha256 and load it; raises ArtifactError if it is bad."""
    directory = open_artifact(
        record.artifact, record.sha256, record.size, home() / "cache" / record.sha256
    )
    return LoadedModel(
        record, load_model(record.kind, directory), FeatureSpec.from_dict(record.feature_spec)
    )


def load_champion(
    con: duckdb.DuckDBPyConnection, market: str, unit: str
) -> tuple[LoadedModel | None, str]:
    """The champion of market/unit, or None with the reason why not."""
    record = champion(con, market, unit)
    if record is None:
        return None, f"no champion model for {market} unit {unit}"
    try:
        return load_record(record), f"champion {record.ref}"
    except (ArtifactError, OSError, ValueError) as exc:
        return None, f"champion {record.ref} refused: {exc}"


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
    """Probabilities for one feature row, off the event loop, within `timeout` seconds."""
    try:
        probs = await asyncio.wait_for(
            asyncio.to_thread(loaded.model.predict_proba, row.reshape(1, -1)), timeout
        )
    except TimeoutError as exc:
        raise InferenceError(f"inference timed out after {timeout:.1f}s") from exc
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(f"inference failed: {type(exc).__name__}: {exc}") from exc
    return validate_probs(probs)
