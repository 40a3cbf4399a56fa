"""The uniform model interface every model kind implements, and helpers the kinds share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np

# The one encoding of actions and classes (sell, hold, buy): the order of every classifier's
# predict_proba columns, the class labels (indices 0, 1, 2), the strategies' actions and every
# face that names them. It lives here, the lowest package engine and tui can both import
# (models never imports engine; store has no use for it). Vectorised code alone uses the
# action codes -1, 0, 1 (a class index minus one: engine/trading/backtest.py).
CLASSES = ("sell", "hold", "buy")
TASKS = ("classification", "regression")

# Called after each epoch (torch) with (epoch, metrics); may raise KeyboardInterrupt to stop.
EpochHook = Callable[[int, dict[str, float]], None]


class Model(ABC):
    """sklearn-style: the constructor stores parameters, `fit` returns self, learned state ends in `_`.

    Classifiers predict (n, 3) probabilities for CLASSES; regressors predict the forward log
    return (`predict`) and turn it into probabilities of a move beyond the label threshold
    (`predict_proba`), so strategies and the live engine treat both alike. `context` is the
    number of rows before a row that its prediction reads (window - 1 for sequence models).
    """

    kind: str
    task: str = "classification"
    context: int = 0

    @abstractmethod
    def fit(
        self,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        on_epoch: EpochHook | None = None,
        checkpoint: Path | None = None,
    ) -> Self: ...

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, 3) probabilities for CLASSES."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices for classifiers, predicted forward log returns for regressors."""
        return self.predict_proba(X).argmax(axis=1)

    def predict_last(self, X: np.ndarray) -> np.ndarray:
        """(3,) probabilities for the newest row of X, which holds at least `context + 1` rows:
        the live path. Equal to predict_proba(X)[-1]; kinds override it to skip the rest."""
        return self.predict_proba(X)[-1]

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        """(n, 3) probabilities of each row of X as `predict_last` gives it for a window ending
        there: the batched live path of a tabular model (context 0). Equal to
        predict_proba(X); kinds whose `predict_last` takes a faster path override it so the
        two agree exactly."""
        return np.asarray(self.predict_proba(X), dtype=np.float64)

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
        raise ValueError(
            f"{where} has {array.shape[1]} features; the model was fitted on {n_features}"
        )
    return array


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def check_labels(y: np.ndarray, task: str, n: int, *, where: str = "y") -> np.ndarray:
    """Labels as int64 class indices (classification) or float64 returns (regression)."""
    array = np.asarray(y)
    if array.shape != (n,):
        raise ValueError(f"{where} must hold one label per row ({n}); got shape {array.shape}")
    if task == "regression":
        return array.astype(np.float64)
    if len(array) and (array.min() < 0 or array.max() >= len(CLASSES)):
        raise ValueError(f"{where} must hold class indices 0..{len(CLASSES) - 1}")
    return array.astype(np.int64)


class Standardizer:
    """Column mean/std fitted on the training rows only; saved with the model as JSON."""

    def fit(self, X: np.ndarray) -> Self:
        X64 = np.asarray(X, dtype=np.float64)
        if X64.ndim != 2 or len(X64) == 0:
            raise ValueError(f"scaler needs a non-empty 2-D array of rows, got shape {X64.shape}")
        if not np.isfinite(X64).all():
            raise ValueError("scaler input has NaN or inf: drop undefined rows before fitting")
        self.mean_ = X64.mean(axis=0)
        std = X64.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X64 = np.asarray(X, dtype=np.float64)
        if X64.shape[-1] != len(self.mean_):
            raise ValueError(
                f"scaler was fitted on {len(self.mean_)} columns, got {X64.shape[-1]}: the"
                " features differ from the model's training features"
            )
        return ((X64 - self.mean_) / self.scale_).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        out = cls()
        out.mean_ = np.asarray(data["mean"], dtype=np.float64)
        out.scale_ = np.asarray(data["scale"], dtype=np.float64)
        return out


def return_to_proba(predicted: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    """(n, 3) probabilities that the forward log return is below -threshold, within, or above
    +threshold, taking it as normal around `predicted` with the validation residual `sigma`."""
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    scale = max(float(sigma), 1e-12) * math.sqrt(2.0)
    from scipy.special import erf

    below = 0.5 * (1.0 + erf((-threshold - pred) / scale))
    above = 0.5 * (1.0 - erf((threshold - pred) / scale))
    hold = np.clip(1.0 - below - above, 0.0, 1.0)
    probs = np.stack([below, hold, above], axis=1)
    return probs / probs.sum(axis=1, keepdims=True)
