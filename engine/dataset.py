"""Candles -> (features, labels) rows that training and evaluation share; train-only scalers.

Rows are dropped, never filled: the feature warm-up (and rows whose window crosses a long
gap), candles without a label (the last `horizon`, or a label window crossing a gap), and
optionally flagged outlier candles. Anything learned from data (`FittedScaler`) is fitted on
the training part only and records the period it was fitted on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.features import (
    FeatureSpec,
    OutlierRule,
    compute_features,
    outlier_mask,
    recursive_warmup,
)
from engine.labels import LabelSpec, make_label_frame
from engine.splits import Fold, Split, SplitSpec, WalkForwardSpec, chronological_split, walk_forward
from store.candles import load_candles


@dataclass(frozen=True)
class Dataset:
    """Aligned rows: features X, labels y (class index, or forward log return for
    regression), their candle ts, and `label_end` (ts of the last candle each label may look
    at, for purging). `dropped` counts the rows left out, by reason."""

    X: np.ndarray
    y: np.ndarray
    ts: pd.DatetimeIndex
    columns: list[str]
    label_end: pd.DatetimeIndex | None = None
    dropped: dict[str, int] = field(default_factory=dict)


def build_dataset(
    candles: pd.DataFrame,
    feature_spec: FeatureSpec,
    label_spec: LabelSpec,
    *,
    outliers: OutlierRule | None = None,
    unit: str | None = None,
) -> Dataset:
    """Rows where every feature and the label are known (warm-up and the last `horizon`
    candles are dropped, never filled); with `outliers`, flagged candles are dropped too."""
    features = compute_features(candles, feature_spec, unit=unit)
    labels = make_label_frame(candles, label_spec, unit=unit)
    defined = features.notna().all(axis=1).to_numpy()
    labelled = labels["label"].notna().to_numpy()
    keep = defined & labelled
    dropped = {
        "features undefined": int((~defined).sum()),
        "unlabelled": int((defined & ~labelled).sum()),
    }
    if outliers is not None:
        flagged = outlier_mask(candles, outliers).to_numpy()
        dropped["outlier"] = int((keep & flagged).sum())
        keep &= ~flagged
    y = labels["label"].to_numpy()[keep]
    return Dataset(
        X=features.to_numpy(dtype=np.float32)[keep],
        y=y.astype(np.int64) if label_spec.is_classification else y.astype(np.float64),
        ts=features.index[keep],
        columns=list(features.columns),
        label_end=pd.DatetimeIndex(labels["end"].to_numpy()[keep]),
        dropped=dropped,
    )


def split_dataset(data: Dataset, spec: SplitSpec) -> Split:
    """Chronological train/validation/test, purged by the rows' label end times."""
    return chronological_split(len(data.y), spec, ts=data.ts, label_end=data.label_end)


def walk_forward_dataset(data: Dataset, spec: WalkForwardSpec) -> Iterator[Fold]:
    """Walk-forward folds, purged by the rows' label end times."""
    return walk_forward(len(data.y), spec, ts=data.ts, label_end=data.label_end)


class FittedScaler:
    """Standardises features with the mean and std of the training rows only.

    Follows scikit-learn's conventions (learned state ends with `_`, `fit` returns self) and
    Qlib's: the fit period is recorded (`fit_from_`, `fit_to_`) and stored with the scaler.
    Constant columns keep scale 1, so they stay constant rather than turning into NaN.
    """

    def fit(self, X: np.ndarray, ts: pd.DatetimeIndex | None = None) -> Self:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"scaler needs a non-empty 2-D array of rows, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("scaler input has NaN or inf: drop undefined rows before fitting")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        self.n_rows_ = len(X)
        self.fit_from_ = None if ts is None or len(ts) == 0 else pd.Timestamp(ts[0]).isoformat()
        self.fit_to_ = None if ts is None or len(ts) == 0 else pd.Timestamp(ts[-1]).isoformat()
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise ValueError("scaler is not fitted: call fit on the training rows first")
        X = np.asarray(X, dtype=np.float64)
        if X.shape[-1] != len(self.mean_):
            raise ValueError(f"scaler was fitted on {len(self.mean_)} columns, got {X.shape[-1]}")
        return ((X - self.mean_) / self.scale_).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "rows": self.n_rows_,
            "fit_from": self.fit_from_,
            "fit_to": self.fit_to_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FittedScaler:
        scaler = cls()
        scaler.mean_ = np.asarray(data["mean"], dtype=np.float64)
        scaler.scale_ = np.asarray(data["scale"], dtype=np.float64)
        scaler.n_rows_ = int(data["rows"])
        scaler.fit_from_, scaler.fit_to_ = data.get("fit_from"), data.get("fit_to")
        return scaler


def fit_scaler(data: Dataset, split: Split) -> FittedScaler:
    """A scaler fitted on the training part of `split` only."""
    return FittedScaler().fit(data.X[split.train], data.ts[split.train])


# --- feature files and stored-candle reports (for `upquant features`) -------------------------
@dataclass(frozen=True)
class FeatureFile:
    path: Path
    market: str
    unit: str
    rows: int
    columns: int
    dropped: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    spec_hash: str
    seconds: float


def _stored(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> pd.DataFrame:
    candles = load_candles(con, market, unit)
    if candles.empty:
        raise ValueError(
            f"no {market} unit {unit} candles in the store;"
            f" run `upquant data import` or `upquant data fetch {market} --unit {unit}` first"
        )
    return candles


def build_feature_file(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, spec: FeatureSpec, out: Path
) -> FeatureFile:
    """Features of the stored candles written to a Parquet file (rows with every feature
    defined; `ts` first; the spec, market and unit in the file's metadata)."""
    if out.suffix != ".parquet":
        raise ValueError(f"--out {out} must end in .parquet")
    candles = _stored(con, market, unit)
    started = time.perf_counter()
    features = compute_features(candles, spec, unit=unit)
    seconds = time.perf_counter() - started
    defined = features.dropna()
    table = pa.Table.from_pandas(defined.rename_axis("ts").reset_index(), preserve_index=False)
    table = table.replace_schema_metadata(
        {
            **(table.schema.metadata or {}),
            b"upquant.feature_spec": json.dumps(spec.to_dict()).encode(),
            b"upquant.feature_spec_hash": spec.hash().encode(),
            b"upquant.market": market.encode(),
            b"upquant.unit": unit.encode(),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return FeatureFile(
        path=out,
        market=market,
        unit=unit,
        rows=len(defined),
        columns=len(defined.columns),
        dropped=len(features) - len(defined),
        first=defined.index[0] if len(defined) else None,
        last=defined.index[-1] if len(defined) else None,
        spec_hash=spec.hash(),
        seconds=seconds,
    )


def stored_warmup(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, spec: FeatureSpec
) -> dict[str, int]:
    """`recursive_warmup` measured on the stored candles of one market/unit."""
    candles = _stored(con, market, unit)
    if len(candles) < 4 * spec.window():
        raise ValueError(
            f"{len(candles)} stored {market} candles are too few to measure warm-up;"
            f" need at least {4 * spec.window()}"
        )
    return recursive_warmup(candles, spec, unit=unit)
