"""Candles -> (features, labels) rows that training and evaluation share; train-only scalers.

Rows are dropped, never filled: the feature warm-up (and rows whose window crosses a long
gap), candles without a label (the last `horizon`, or a label window crossing a gap), and
optionally flagged outlier candles. Anything learned from data (the models' Standardizer,
thresholds) is fitted on the training part only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.research.features import (
    FeatureSpec,
    OutlierRule,
    compute_features,
    outlier_mask,
    recursive_warmup,
)
from engine.research.labels import LabelSpec, make_label_frame
from engine.research.splits import (
    Fold,
    Split,
    SplitSpec,
    WalkForwardSpec,
    chronological_split,
    walk_forward,
)
from store.candles import load_candles


@dataclass(frozen=True)
class Dataset:
    """Aligned rows: features X, labels y (class index, or forward log return for
    regression), their candle ts, and `label_end` (ts of the last candle each label may look
    at, for purging). `dropped` counts the rows left out, by reason. `candle_ts`: every
    candle the rows were built from, so splits cut candles and no later candle's values can
    move a cut (engine.research.splits)."""

    X: np.ndarray
    y: np.ndarray
    ts: pd.DatetimeIndex
    columns: list[str]
    label_end: pd.DatetimeIndex | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    candle_ts: pd.DatetimeIndex | None = None


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
        # the index keeps the UTC zone; .to_numpy() makes an object array, which loses it
        # when no row is kept (and the purger then compared naive with aware times)
        label_end=pd.DatetimeIndex(labels["end"])[keep],
        dropped=dropped,
        candle_ts=features.index,
    )


def split_dataset(data: Dataset, spec: SplitSpec) -> Split:
    """Chronological train/validation/test of the dataset's candles, purged by the rows'
    label end times."""
    return chronological_split(
        len(data.y), spec, ts=data.ts, label_end=data.label_end, candle_ts=data.candle_ts
    )


def walk_forward_dataset(data: Dataset, spec: WalkForwardSpec) -> Iterator[Fold]:
    """Walk-forward folds over the dataset's candles, purged by the rows' label end times."""
    return walk_forward(
        len(data.y), spec, ts=data.ts, label_end=data.label_end, candle_ts=data.candle_ts
    )


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
