"""Classification metrics and the baselines every report shows beside a model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss

from models import CLASSES


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None = None
) -> dict[str, float]:
    labels = list(range(len(CLASSES)))
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    if proba is not None:
        out["log_loss"] = float(log_loss(y_true, np.clip(proba, 1e-12, 1.0), labels=labels))
    return out


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Always predict the class most frequent in the training part (never the test part)."""
    majority = int(np.bincount(y_train.astype(int), minlength=len(CLASSES)).argmax())
    prior = np.bincount(y_train.astype(int), minlength=len(CLASSES)) / len(y_train)
    proba = np.tile(prior, (len(y_test), 1))
    return classification_metrics(y_test, np.full(len(y_test), majority), proba)


def class_balance(y: np.ndarray) -> dict[str, float]:
    counts = np.bincount(y.astype(int), minlength=len(CLASSES))
    return {name: float(c / max(len(y), 1)) for name, c in zip(CLASSES, counts, strict=True)}
