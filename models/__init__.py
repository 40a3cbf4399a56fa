"""Model zoo behind one interface: `fit`, `predict_proba` (sell, hold, buy), `save`, `load`."""

from __future__ import annotations

from pathlib import Path

from models.base import CLASSES, Model
from models.ensemble import EnsembleModel
from models.lstm import LSTMModel
from models.transformer import TransformerModel
from models.xgb import XGBoostModel

MODEL_KINDS: dict[str, type[Model]] = {
    "xgboost": XGBoostModel,
    "lstm": LSTMModel,
    "transformer": TransformerModel,
}
ALL_KINDS = (*MODEL_KINDS, "ensemble")


def _check_kind(kind: str) -> type[Model]:
    try:
        return MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown model kind {kind!r}; choose one of {', '.join(ALL_KINDS)}"
        ) from None


def create_model(kind: str, **params: object) -> Model:
    return _check_kind(kind)(**params)


def load_model(kind: str, directory: Path) -> Model:
    """Load a single (non-ensemble) model; ensembles load through engine.live.inference."""
    return _check_kind(kind).load(directory)


__all__ = [
    "ALL_KINDS",
    "CLASSES",
    "MODEL_KINDS",
    "EnsembleModel",
    "Model",
    "create_model",
    "load_model",
]
