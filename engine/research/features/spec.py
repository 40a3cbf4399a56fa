"""FeatureSpec: the declarative, JSON-serialisable, hashed list of features stored with every
model; its normalisation against each kind's defaults, its columns with (warm-up, memory),
and the registry of kinds (FEATURE_KINDS) assembled from the group modules.

Two numbers describe each column (`FeatureSpec.column_info`):
- **warm-up**: rows from the start of a series before the column is defined (NaN before).
- **memory**: trailing candles its value depends on, to 1e-9 relative. Finite windows need
  warm-up + 1; recursive indicators (EMA, Wilder's RMA, MACD, RSI, ATR, ADX) have infinite
  memory in theory, so theirs is the length after which the start of history no longer moves
  the value (`recursive_warmup` measures it on real data; tests hold it under `memory`).
  The live engine keeps `FeatureSpec.window()` >= every memory, so its trailing-window
  features equal the full-history (training) features.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from engine.research.features import (
    calendar,
    candle,
    momentum,
    returns,
    series,
    trend,
    volatility,
    volume,
)
from engine.research.features.kind import ColumnInfo, FeatureKind

TOLERANCE = 1e-9  # relative agreement that "no longer depends on the start of history" means

FEATURE_KINDS: dict[str, FeatureKind] = {
    kind.name: kind
    for kind in (  # the order `upquant features kinds` lists them in
        returns.LOG_RETURN,
        returns.RETURN,
        candle.CANDLE_SHAPE,
        candle.OPEN_GAP,
        volume.VOLUME_RATIO,
        volume.VOLUME_ZSCORE,
        volume.VOLUME_MA_RATIO,
        volume.VALUE,
        volume.OBV,
        trend.SMA_RATIO,
        trend.EMA_RATIO,
        trend.MACD,
        momentum.RSI,
        volatility.BBANDS,
        volatility.ATR,
        momentum.STOCH,
        trend.ADX,
        momentum.MFI,
        momentum.CCI,
        momentum.ROC,
        series.RETURN_STATS,
        series.LAG,
        calendar.CALENDAR,
    )
}

# Kinds whose definition changed: specs older than the version keep the old definition, so a
# stored model's features stay what it was trained on. Version 3: MFI counts a repeated
# typical price as neither flow (the standard definition, TA-Lib's), not as negative.
_BEFORE: dict[str, tuple[int, FeatureKind]] = {"mfi": (3, momentum.MFI_BEFORE_V3)}


@dataclass(frozen=True)
class FeatureSpec:
    """Declarative, JSON-serialisable list of features; `talib` pins pandas-ta's backend.

    `max_gap`: the longest step between consecutive candles, in candles of the unit, that
    windows bridge (None: never break). Feature dicts are normalised with their kind's
    defaults, so equal specs hash equally however they were written. `version` keeps old
    models' features: 1 bridges every gap, 2 breaks series at `max_gap`, 3 computes MFI by
    the standard definition (`_BEFORE` maps a kind to its older definition).
    """

    features: tuple[dict[str, Any], ...]
    talib: bool = False
    version: int = 3
    max_gap: int | None = 5

    def __post_init__(self) -> None:
        normalised = tuple(_normalise(i, f) for i, f in enumerate(self.features))
        object.__setattr__(self, "features", normalised)
        if self.max_gap is not None and self.max_gap < 1:
            raise ValueError(f"max_gap must be >= 1 candle or None, got {self.max_gap}")
        _ = self._plan  # validates lag references and column name clashes

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "talib": self.talib,
            "max_gap": self.max_gap,
            "features": [dict(f) for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Rebuild a spec. Missing fields take today's defaults, except that a version-1 spec
        (stored with a model before `max_gap` existed) keeps bridging every gap, as it did
        when its model was trained."""
        if "features" not in data:
            raise ValueError("feature spec has no 'features' list")
        version = int(data.get("version", cls.version))
        return cls(
            features=tuple(dict(f) for f in data["features"]),
            talib=bool(data.get("talib", False)),
            version=version,
            max_gap=data.get("max_gap", cls.max_gap if version > 1 else None),
        )

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @cached_property
    def _plan(self) -> _Plan:
        """What computing needs, worked out once per spec (the live path runs it per candle)."""
        info: ColumnInfo = {}
        steps = []
        depth = 1  # trailing values each column must supply so lags of it can be read
        for feature in self.features:
            kind, params = self.kind(feature["kind"]), params_of(feature)
            cols = kind.columns(info, **params)
            clash = sorted(set(cols) & set(info))
            if clash:
                raise ValueError(f"feature {feature} repeats columns {clash}")
            info.update(cols)
            steps.append((kind, params))
            if kind.name == "lag":
                depth = max(depth, max(params["lags"]) + 1)
        return _Plan(info, steps, depth, pd.Index(list(info), dtype=object))

    def kind(self, name: str) -> FeatureKind:
        """The kind `name` as this spec's version defines it."""
        since, older = _BEFORE.get(name, (0, None))
        return older if older is not None and self.version < since else FEATURE_KINDS[name]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_plan"}  # rebuilt on demand

    def column_info(self) -> ColumnInfo:
        """Every output column in order, with its (warm-up, memory) in candles."""
        return dict(self._plan.info)

    def columns(self) -> list[str]:
        return list(self._plan.info)

    def warmup(self) -> int:
        """Candles before the first row that compute_features keeps: every feature defined
        and no longer moved by where the history starts (to 1e-9 relative)."""
        return max(max(w, m - 1) for w, m in self.column_info().values())

    def memory(self) -> int:
        """Trailing candles the newest row depends on (to 1e-9 relative)."""
        return max(m for _, m in self.column_info().values())

    def window(self) -> int:
        """Trailing candles the live engine keeps to compute the newest row: the memory
        plus a 10 % margin, so live features equal full-history features."""
        return max(math.ceil(self.memory() * 1.1), 60)


@dataclass(frozen=True)
class _Plan:
    info: ColumnInfo
    steps: list[tuple[FeatureKind, dict[str, Any]]]
    depth: int
    index: pd.Index


def load_feature_spec(path: Path) -> FeatureSpec:
    """A spec from a JSON file (the `to_dict` form); errors name the file and the problem."""
    if not path.is_file():
        raise ValueError(f"feature spec file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"feature spec file {path} is not valid JSON: {exc.msg} (line {exc.lineno},"
            f" column {exc.colno})"
        ) from None
    if (data.get("features") if isinstance(data, dict) else None) is None:
        raise ValueError(f"feature spec file {path} must hold a JSON object with 'features'")
    try:
        return FeatureSpec.from_dict(data)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"feature spec file {path}: {exc}") from None


def params_of(feature: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in feature.items() if k != "kind"}


def _normalise(i: int, feature: Mapping[str, Any]) -> dict[str, Any]:
    name = feature.get("kind")
    if name not in FEATURE_KINDS:
        raise ValueError(
            f"feature #{i} has unknown kind {name!r}; known kinds: {sorted(FEATURE_KINDS)}"
        )
    kind = FEATURE_KINDS[name]
    params = params_of(feature)
    unknown = sorted(set(params) - set(kind.defaults))
    if unknown:
        raise ValueError(
            f"feature #{i} ({name}) has unknown parameters {unknown};"
            f" {name} takes {sorted(kind.defaults) or 'none'}"
        )
    merged = {**kind.defaults, **params}
    missing = sorted(k for k, v in merged.items() if v is None)
    if missing:
        raise ValueError(f"feature #{i} ({name}) needs parameters {missing}")
    for key, value in merged.items():
        numbers = value if isinstance(value, list) else [value]
        if key in _POSITIVE_INT and any(not isinstance(v, int) or v < 1 for v in numbers):
            raise ValueError(f"feature #{i} ({name}): {key} must be positive integers, got {value}")
    return {"kind": name, **merged}


_POSITIVE_INT = {"length", "lengths", "lags", "fast", "slow", "signal", "k", "d", "smooth_k"}

DEFAULT_SPEC = FeatureSpec(
    features=(
        {"kind": "log_return", "lags": [1, 2, 3, 5, 10, 30]},
        {"kind": "candle_shape"},
        {"kind": "open_gap"},
        {"kind": "volume_ratio", "length": 20},
        {"kind": "volume_zscore", "length": 60},
        {"kind": "volume_ma_ratio", "fast": 5, "slow": 60},
        {"kind": "obv", "length": 20},
        {"kind": "sma_ratio", "lengths": [10, 30]},
        {"kind": "ema_ratio", "lengths": [20]},
        {"kind": "macd", "fast": 12, "slow": 26, "signal": 9},
        {"kind": "rsi", "length": 14},
        {"kind": "bbands", "length": 20, "std": 2.0},
        {"kind": "atr", "length": 14},
        {"kind": "stoch", "k": 14, "d": 3, "smooth_k": 3},
        {"kind": "adx", "length": 14},
        {"kind": "mfi", "length": 14},
        {"kind": "cci", "length": 20, "c": 0.015},
        {"kind": "return_stats", "length": 30, "stats": ["std", "skew", "z"]},
        {"kind": "lag", "of": ["rsi_14"], "lags": [1, 5]},
        {"kind": "calendar", "cyclic": True, "raw": False},
    )
)


def describe_spec(spec: FeatureSpec = DEFAULT_SPEC) -> list[dict[str, Any]]:
    """One row per column: its feature kind, group, parameters, warm-up and memory."""
    rows = []
    info = spec.column_info()
    for feature in spec.features:
        kind = FEATURE_KINDS[feature["kind"]]
        for col in kind.columns(info, **params_of(feature)):
            warmup, memory = info[col]
            rows.append(
                {
                    "column": col,
                    "kind": kind.name,
                    "group": kind.group,
                    "params": params_of(feature),
                    "warmup": warmup,
                    "memory": memory,
                }
            )
    return rows
