"""Model zoo behind one interface: `fit`, `predict_proba` (sell, hold, buy), `save`, `load`.

Importing `models` is light (numpy only): each model kind is named here with the module that
defines it and imported on first use, so a command that never touches a model (help, data
status, a rule backtest) never loads torch or xgboost."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from models.base import CLASSES, Model
from models.ensemble import EnsembleModel

# kind -> (module, class): the only list of single-model kinds
_KIND_MODULES: dict[str, tuple[str, str]] = {
    "xgboost": ("models.xgb", "XGBoostModel"),
    "lstm": ("models.lstm", "LSTMModel"),
    "transformer": ("models.transformer", "TransformerModel"),
}


class _KindRegistry(Mapping[str, type[Model]]):
    """kind -> model class; a kind's module is imported when its class is first looked up
    (membership and iteration read only the names)."""

    def __getitem__(self, kind: str) -> type[Model]:
        module_name, class_name = _KIND_MODULES[kind]
        model_class: type[Model] = getattr(importlib.import_module(module_name), class_name)
        return model_class

    def __contains__(self, kind: object) -> bool:
        return kind in _KIND_MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(_KIND_MODULES)

    def __len__(self) -> int:
        return len(_KIND_MODULES)


MODEL_KINDS: Mapping[str, type[Model]] = _KindRegistry()
ALL_KINDS = (*_KIND_MODULES, "ensemble")


def _check_kind(kind: str) -> type[Model]:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(ALL_KINDS)}")
    return MODEL_KINDS[kind]


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
