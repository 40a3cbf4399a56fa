"""Model zoo behind one interface: `fit`, `predict_proba` (sell, hold, buy), `save`, `load`."""

from __future__ import annotations

from pathlib import Path

from models.base import CLASSES, Model
from models.xgb import XGBoostModel

MODEL_KINDS: dict[str, type[Model]] = {"xgboost": XGBoostModel}


def create_model(kind: str, **params: object) -> Model:
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}") from None
    return cls(**params)


def load_model(kind: str, directory: Path) -> Model:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind].load(directory)


__all__ = ["CLASSES", "MODEL_KINDS", "Model", "create_model", "load_model"]
