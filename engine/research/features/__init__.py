"""Candles → feature rows, for training and live alike: one package, one module per group of
feature kinds.

- `spec`: FeatureSpec (declarative, JSON, hashed), its (warm-up, memory) per column, and the
  registry FEATURE_KINDS assembled from the group modules.
- `kind`: what a feature kind declares: columns, batch computation, live computation.
- `kernels`: the shared numba/numpy window kernels.
- group modules, each kind declared next to its code: `returns`, `candle`, `volume`,
  `trend` (SMA, EMA, MACD, ADX), `momentum` (RSI, Stochastic, MFI, CCI, ROC), `volatility`
  (Bollinger, ATR), `series` (return statistics, lags), `calendar`.
- `batch`: `compute_features`, the one function for training, backtest and replay.
- `live`: `compute_latest`, the fast newest-row path (held equal to the batch path by tests).
- `outliers`, `warmup`: the outlier mask; measuring warm-up and warming numba up.
"""

from engine.research.features.batch import compute_features
from engine.research.features.kernels import rolling_mean_std
from engine.research.features.kind import Arrays, ColumnInfo, FeatureKind
from engine.research.features.live import compute_latest
from engine.research.features.outliers import OutlierRule, outlier_mask
from engine.research.features.spec import (
    DEFAULT_SPEC,
    FEATURE_KINDS,
    TOLERANCE,
    FeatureSpec,
    describe_spec,
    load_feature_spec,
)
from engine.research.features.warmup import agree, column_floors, recursive_warmup, warm_up

__all__ = [
    "DEFAULT_SPEC",
    "FEATURE_KINDS",
    "TOLERANCE",
    "Arrays",
    "ColumnInfo",
    "FeatureKind",
    "FeatureSpec",
    "OutlierRule",
    "agree",
    "column_floors",
    "compute_features",
    "compute_latest",
    "describe_spec",
    "load_feature_spec",
    "outlier_mask",
    "recursive_warmup",
    "rolling_mean_std",
    "warm_up",
]
