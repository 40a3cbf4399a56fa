"""Candles -> (features, labels) rows that training and evaluation share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.features import FeatureSpec, compute_features
from engine.labels import LabelSpec, make_labels


@dataclass(frozen=True)
class Dataset:
    X: np.ndarray
    y: np.ndarray
    ts: pd.DatetimeIndex
    columns: list[str]


def build_dataset(candles: pd.DataFrame, feature_spec: FeatureSpec, label_spec: LabelSpec) -> Dataset:
    """Rows where every feature and the label are known: warm-up and the last `horizon`
    candles (no future yet) are dropped, never filled."""
    features = compute_features(candles, feature_spec)
    labels = make_labels(candles, label_spec)
    keep = features.notna().all(axis=1) & labels.notna()
    return Dataset(
        X=features[keep].to_numpy(dtype=np.float32),
        y=labels[keep].to_numpy(dtype=np.int64),
        ts=features.index[keep],
        columns=list(features.columns),
    )
