"""The uniform model interface every model kind implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Self

import numpy as np

# Class order of every classifier's predict_proba columns; labels are the indices 0, 1, 2.
CLASSES = ("sell", "hold", "buy")


class Model(ABC):
    """sklearn-style: the constructor stores parameters, `fit` returns self, learned state ends in `_`."""

    kind: str

    @abstractmethod
    def fit(
        self, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray
    ) -> Self: ...

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, 3) probabilities for CLASSES."""

    @abstractmethod
    def save(self, directory: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Self: ...

    @property
    def device(self) -> str:
        return "cpu"

    @abstractmethod
    def get_params(self) -> dict[str, Any]: ...

    def feature_importance(self) -> dict[int, float] | None:
        return None


def check_features(X: np.ndarray, n_features: int | None = None, *, where: str = "X") -> np.ndarray:
    """Return X as a 2-D float32 array, or raise saying what was expected and what came."""
    array = np.asarray(X, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{where} must be 2-D (rows, features); got shape {array.shape}")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(f"{where} has {array.shape[1]} features; the model was fitted on {n_features}")
    return array
