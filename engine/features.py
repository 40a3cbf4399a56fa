"""FeatureSpec and the one function that turns candles into features, in training and live.

Every feature is scale-free (returns, ratios to close, bounded oscillators) so a model
trained on one market or period transfers. Rows inside an indicator's warm-up are NaN and
are dropped by the caller; nothing is ever back-filled from later candles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandas_ta as ta


@dataclass(frozen=True)
class FeatureSpec:
    """Declarative, JSON-serialisable list of features; `talib` pins pandas-ta's backend."""

    features: tuple[dict[str, Any], ...]
    talib: bool = False
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "talib": self.talib, "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        features = tuple(dict(f) for f in data["features"])
        for i, feature in enumerate(features):
            if feature.get("kind") not in FEATURE_KINDS:
                raise ValueError(
                    f"feature #{i} has unknown kind {feature.get('kind')!r};"
                    f" known kinds: {sorted(FEATURE_KINDS)}"
                )
        return cls(features=features, talib=bool(data.get("talib", False)), version=int(data.get("version", 1)))

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def warmup(self) -> int:
        """Candles needed before the first row where every feature is defined."""
        return max(_KIND_WARMUP[f["kind"]](_params(f)) for f in self.features)

    def window(self) -> int:
        """Trailing candles the live engine keeps to compute the newest row.

        Several times the warm-up, so recursive indicators (EMA, RMA) have converged.
        """
        return max(10 * self.warmup(), 300)


def _params(feature: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in feature.items() if k != "kind"}


# --- feature kinds -----------------------------------------------------------------------
FeatureFn = Callable[..., pd.DataFrame]


def _log_return(c: pd.DataFrame, talib: bool, lags: list[int]) -> pd.DataFrame:
    log_close = np.log(c["close"])
    return pd.DataFrame({f"logret_{lag}": log_close - log_close.shift(lag) for lag in lags})


def _candle_shape(c: pd.DataFrame, talib: bool) -> pd.DataFrame:
    span = (c["high"] - c["low"]).replace(0.0, np.nan)
    return pd.DataFrame(
        {
            "range": (c["high"] - c["low"]) / c["close"],
            "body": (c["close"] - c["open"]) / c["close"],
            "upper_wick": ((c["high"] - c[["open", "close"]].max(axis=1)) / span).fillna(0.0),
            "lower_wick": ((c[["open", "close"]].min(axis=1) - c["low"]) / span).fillna(0.0),
        }
    )


def _volume_ratio(c: pd.DataFrame, talib: bool, length: int) -> pd.DataFrame:
    mean = c["volume"].rolling(length, min_periods=length).mean()
    return pd.DataFrame({f"volume_ratio_{length}": c["volume"] / mean.replace(0.0, np.nan)})


def _sma_ratio(c: pd.DataFrame, talib: bool, lengths: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {f"sma_ratio_{n}": c["close"] / ta.sma(c["close"], length=n, talib=talib) - 1.0 for n in lengths}
    )


def _rsi(c: pd.DataFrame, talib: bool, length: int) -> pd.DataFrame:
    return pd.DataFrame({f"rsi_{length}": ta.rsi(c["close"], length=length, talib=talib) / 100.0})


def _macd(c: pd.DataFrame, talib: bool, fast: int, slow: int, signal: int) -> pd.DataFrame:
    out = ta.macd(c["close"], fast=fast, slow=slow, signal=signal, talib=talib)
    suffix = f"{fast}_{slow}_{signal}"
    return pd.DataFrame(
        {
            f"macd_{suffix}": out[f"MACD_{suffix}"] / c["close"],
            f"macd_hist_{suffix}": out[f"MACDh_{suffix}"] / c["close"],
        }
    )


def _bbands(c: pd.DataFrame, talib: bool, length: int, std: float) -> pd.DataFrame:
    out = ta.bbands(c["close"], length=length, std=std, talib=talib)
    pct = out.filter(like="BBP_").iloc[:, 0]
    width = out.filter(like="BBB_").iloc[:, 0]
    return pd.DataFrame({f"bb_pct_{length}": pct, f"bb_width_{length}": width / 100.0})


def _atr(c: pd.DataFrame, talib: bool, length: int) -> pd.DataFrame:
    atr = ta.atr(c["high"], c["low"], c["close"], length=length, talib=talib)
    return pd.DataFrame({f"atr_{length}": atr / c["close"]})


FEATURE_KINDS: dict[str, FeatureFn] = {
    "log_return": _log_return,
    "candle_shape": _candle_shape,
    "volume_ratio": _volume_ratio,
    "sma_ratio": _sma_ratio,
    "rsi": _rsi,
    "macd": _macd,
    "bbands": _bbands,
    "atr": _atr,
}

_KIND_WARMUP: dict[str, Callable[[dict[str, Any]], int]] = {
    "log_return": lambda p: max(p["lags"]),
    "candle_shape": lambda p: 0,
    "volume_ratio": lambda p: p["length"] - 1,
    "sma_ratio": lambda p: max(p["lengths"]) - 1,
    "rsi": lambda p: p["length"],
    "macd": lambda p: p["slow"] + p["signal"] - 2,
    "bbands": lambda p: p["length"] - 1,
    "atr": lambda p: p["length"],
}

DEFAULT_SPEC = FeatureSpec(
    features=(
        {"kind": "log_return", "lags": [1, 2, 3, 5, 10, 30]},
        {"kind": "candle_shape"},
        {"kind": "volume_ratio", "length": 20},
        {"kind": "sma_ratio", "lengths": [10, 30]},
        {"kind": "rsi", "length": 14},
        {"kind": "macd", "fast": 12, "slow": 26, "signal": 9},
        {"kind": "bbands", "length": 20, "std": 2.0},
        {"kind": "atr", "length": 14},
    )
)


def compute_features(candles: pd.DataFrame, spec: FeatureSpec = DEFAULT_SPEC) -> pd.DataFrame:
    """Features for every candle, indexed by `ts`; warm-up rows hold NaN (drop them, never fill).

    `candles` is one series (one market and unit) in the canonical candle format, ascending.
    """
    if candles.empty:
        raise ValueError("no candles to compute features from")
    frame = candles.set_index("ts")[["open", "high", "low", "close", "volume"]].astype("float64")
    parts = [FEATURE_KINDS[f["kind"]](frame, spec.talib, **_params(f)) for f in spec.features]
    features = pd.concat(parts, axis=1)
    features.index = frame.index
    return features.replace([np.inf, -np.inf], np.nan)


def warm_up() -> None:
    """Run every indicator once on a tiny series so numba JIT compiles now, not on a live candle."""
    n = max(DEFAULT_SPEC.warmup() * 2, 100)
    ts = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    close = 100.0 + np.cumsum(np.sin(np.arange(n)))
    compute_features(
        pd.DataFrame(
            {"ts": ts, "open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1.0}
        )
    )
