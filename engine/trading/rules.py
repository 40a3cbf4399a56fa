"""The rules a strategy spec combines (sma-cross, rsi, bollinger) and its regime measures.

Each rule and measure is one vectorised function of the closes (`codes`, `values`); the
per-candle form (`decide`) runs the same function on the window's tail, so live decisions and
backtests agree to the bit. Settings are checked on construction: a `SpecError` names the key
and what it takes (engine.trading.spec prefixes the file and the rule's place).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine.trading.strategies import SmaCross, sma_cross_actions
from models import CLASSES

MEASURES = ("volatility", "trend")
RSI_SPAN = 10  # RSI smooths over the last RSI_SPAN * period changes (see rsi_values)
CHUNK = 1 << 16  # rows per block of the windowed stds, to bound their memory


class SpecError(ValueError):
    """A strategy spec that cannot be used; the message names the key and how to fix it."""


# --- checks -------------------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(key: str, value: Any, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise SpecError(f"{key}: an integer >= {minimum}, got {value!r}")


def check_float(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SpecError(f"{key}: a finite number, got {value!r}")


def check_probability(key: str, value: Any) -> None:
    check_float(key, value)
    if not 0 <= value <= 1:
        raise SpecError(f"{key}: a confidence in [0, 1], got {value!r}")


def check_weight(value: Any, key: str = "weight") -> None:
    check_float(key, value)
    if not value > 0:
        raise SpecError(f"{key}: above 0, got {value!r}")


# --- vectorised indicators (each value reads only its own window) -------------------------------
def _windowed_std(view: np.ndarray) -> np.ndarray:
    """The population std of each window of a sliding-window view, a block at a time."""
    out = np.empty(len(view))
    for start in range(0, len(view), CHUNK):
        out[start : start + CHUNK] = view[start : start + CHUNK].std(axis=1)
    return out


@functools.lru_cache(maxsize=64)
def _wilder_weights(period: int, span: int) -> np.ndarray:
    """Weights of Wilder's smoothing over `span` values seeded by the mean of the first
    `period`: the recursion a = (a * (period - 1) + x) / period written as one sum."""
    decay = (period - 1) / period
    weights = np.empty(span)
    weights[:period] = decay ** (span - period) / period
    weights[period:] = decay ** np.arange(span - period - 1, -1, -1) / period
    weights.flags.writeable = False  # shared by every call (cached)
    return weights


def rsi_values(closes: np.ndarray, period: int) -> np.ndarray:
    """Wilder's RSI at every candle, over the last `RSI_SPAN * period` close-to-close changes
    (TA-Lib's RSI on exactly those closes); NaN before that many changes and where nothing
    moved. A finite window (the seed's weight is below 1e-4) keeps live equal to backtest:
    einsum sums each window on its own, in one order, so a value does not depend on how
    many windows are computed with it (the per-candle tail and the whole series agree to
    the bit; the tests hold them)."""
    values = np.asarray(closes, dtype="float64")
    span = RSI_SPAN * period
    out = np.full(len(values), np.nan)
    if len(values) <= span:
        return out
    changes = np.diff(values)
    moves = np.stack([np.maximum(changes, 0.0), np.maximum(-changes, 0.0)])
    windows = sliding_window_view(moves, span, axis=1)
    gain, loss = np.einsum("kij,j->ki", windows, _wilder_weights(period, span))
    total = gain + loss
    with np.errstate(invalid="ignore", divide="ignore"):
        out[span:] = np.where(total > 0, 100.0 * gain / total, np.nan)
    return out


def bollinger_bands(closes: np.ndarray, period: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper Bollinger bands (SMA ± k population std over `period`), NaN before."""
    values = np.asarray(closes, dtype="float64")
    lower = np.full(len(values), np.nan)
    upper = np.full(len(values), np.nan)
    if len(values) < period:
        return lower, upper
    view = sliding_window_view(values, period)
    mid = view.mean(axis=1)
    spread = k * _windowed_std(view)
    lower[period - 1 :], upper[period - 1 :] = mid - spread, mid + spread
    return lower, upper


# --- rules --------------------------------------------------------------------------------------
def _needs(name: str, closes: np.ndarray, history: int) -> tuple[str, str] | None:
    if len(closes) < history:
        return "hold", f"{name}: {len(closes)} candles, needs {history}"
    return None


@dataclass(frozen=True)
class SmaCrossRule:
    """strategies.SmaCross as a spec rule."""

    kind: ClassVar[str] = "sma-cross"
    fast: int = 10
    slow: int = 30
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_int("fast", self.fast, 1)
        check_int("slow", self.slow, 2)
        if self.fast >= self.slow:
            raise SpecError(f"slow: above fast ({self.fast}), got {self.slow}")
        check_weight(self.weight)

    @property
    def name(self) -> str:
        return SmaCross(self.fast, self.slow).name

    def history(self) -> int:
        return self.slow + 1

    def codes(self, closes: np.ndarray) -> np.ndarray:
        return sma_cross_actions(closes, self.fast, self.slow)

    def decide(self, closes: np.ndarray) -> tuple[str, str]:
        return SmaCross(self.fast, self.slow).decide(closes)


@dataclass(frozen=True)
class RsiRule:
    """Buy when RSI crosses up through `lower`, sell when it crosses down through `upper`."""

    kind: ClassVar[str] = "rsi"
    period: int = 14
    lower: float = 30.0
    upper: float = 70.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_int("period", self.period, 2)
        check_float("lower", self.lower)
        check_float("upper", self.upper)
        if not 0 < self.lower < self.upper < 100:
            raise SpecError(
                f"lower, upper: need 0 < lower < upper < 100, got {self.lower}, {self.upper}"
            )
        check_weight(self.weight)

    @property
    def name(self) -> str:
        return f"rsi({self.period})"

    def history(self) -> int:
        return RSI_SPAN * self.period + 2

    def _codes(self, rsi: np.ndarray) -> np.ndarray:
        codes = np.zeros(len(rsi), dtype=np.int8)
        prev, now = rsi[:-1], rsi[1:]  # NaN compares false: hold
        up = (prev <= self.lower) & (now > self.lower)
        down = (prev >= self.upper) & (now < self.upper)
        codes[1:] = up.astype(np.int8) - down.astype(np.int8)
        return codes

    def codes(self, closes: np.ndarray) -> np.ndarray:
        return self._codes(rsi_values(closes, self.period))

    def decide(self, closes: np.ndarray) -> tuple[str, str]:
        short = _needs(self.name, closes, self.history())
        if short:
            return short
        rsi = rsi_values(closes[-self.history() :], self.period)
        action = CLASSES[int(self._codes(rsi)[-1]) + 1]
        said = f"{self.name}: {rsi[-2]:.1f} -> {rsi[-1]:.1f}"
        if action == "buy":
            return action, f"{said}, crossed up through {self.lower:g}"
        if action == "sell":
            return action, f"{said}, crossed down through {self.upper:g}"
        return action, f"{said}, no cross of {self.lower:g}/{self.upper:g}"


@dataclass(frozen=True)
class BollingerRule:
    """Buy on a close back above the lower band, sell on a close back below the upper one."""

    kind: ClassVar[str] = "bollinger"
    period: int = 20
    k: float = 2.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_int("period", self.period, 2)
        check_float("k", self.k)
        if not self.k > 0:
            raise SpecError(f"k: above 0 (the band's width in stds), got {self.k}")
        check_weight(self.weight)

    @property
    def name(self) -> str:
        return f"bollinger({self.period},{self.k:g})"

    def history(self) -> int:
        return self.period + 1

    def _codes(self, closes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = np.asarray(closes, dtype="float64")
        lower, upper = bollinger_bands(values, self.period, self.k)
        codes = np.zeros(len(values), dtype=np.int8)
        prev, now = values[:-1], values[1:]
        up = (prev <= lower[:-1]) & (now > lower[1:])
        down = (prev >= upper[:-1]) & (now < upper[1:])
        codes[1:] = up.astype(np.int8) - down.astype(np.int8)
        return codes, lower, upper

    def codes(self, closes: np.ndarray) -> np.ndarray:
        return self._codes(closes)[0]

    def decide(self, closes: np.ndarray) -> tuple[str, str]:
        short = _needs(self.name, closes, self.history())
        if short:
            return short
        codes, lower, upper = self._codes(closes[-self.history() :])
        action = CLASSES[int(codes[-1]) + 1]
        close = closes[-1]
        if action == "buy":
            return action, f"{self.name}: close {close:g} back above the lower band {lower[-1]:g}"
        if action == "sell":
            return action, f"{self.name}: close {close:g} back below the upper band {upper[-1]:g}"
        return action, f"{self.name}: close {close:g} in [{lower[-1]:g}, {upper[-1]:g}], no cross"


type Rule = SmaCrossRule | RsiRule | BollingerRule
RULES: dict[str, type[SmaCrossRule | RsiRule | BollingerRule]] = {
    cls.kind: cls for cls in (SmaCrossRule, RsiRule, BollingerRule)
}


# --- regime measures ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Regime:
    measure: str = "volatility"
    enter: float = 0.002
    exit: float = 0.0015
    high: str = "rule"  # the part that decides while the regime is high: "ai" or "rule"
    period: int | None = None  # volatility: log returns per std (default 20)
    fast: int | None = None  # trend: SMA lengths (default 10, 30)
    slow: int | None = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise SpecError(f"measure: one of {', '.join(MEASURES)}, got {self.measure!r}")
        if self.high not in ("ai", "rule"):
            raise SpecError(f"high: 'ai' or 'rule' (decides while high), got {self.high!r}")
        check_float("enter", self.enter)
        check_float("exit", self.exit)
        if not 0 <= self.exit < self.enter:
            raise SpecError(
                f"exit: needs 0 <= exit < enter (the hysteresis band), got enter={self.enter},"
                f" exit={self.exit}"
            )
        volatility = self.measure == "volatility"
        for key, default in (("period", 20), ("fast", 10), ("slow", 30)):
            if (key == "period") != volatility:
                if getattr(self, key) is not None:
                    raise SpecError(
                        f"{key}: not a setting of the {self.measure} measure; remove it"
                    )
            elif getattr(self, key) is None:
                object.__setattr__(self, key, default)
        if volatility:
            check_int("period", self.period, 2)
        else:
            check_int("fast", self.fast, 1)
            check_int("slow", self.slow, 2)
            if self.fast >= self.slow:  # type: ignore[operator]
                raise SpecError(f"slow: above fast ({self.fast}), got {self.slow}")

    @property
    def label(self) -> str:
        if self.measure == "volatility":
            return f"volatility({self.period})"
        return f"trend({self.fast},{self.slow})"

    def _lengths(self) -> tuple[int, int, int]:
        """period, fast, slow (0 where the measure has none)."""
        return self.period or 0, self.fast or 0, self.slow or 0

    def history(self) -> int:
        period, _, slow = self._lengths()
        return period + 1 if self.measure == "volatility" else slow

    def values(self, closes: np.ndarray) -> np.ndarray:
        """The measure at every candle (NaN before its window is full)."""
        values = np.asarray(closes, dtype="float64")
        out = np.full(len(values), np.nan)
        if len(values) < self.history():
            return out
        period, fast, slow = self._lengths()
        if self.measure == "volatility":
            out[period:] = _windowed_std(sliding_window_view(np.diff(np.log(values)), period))
        else:
            fast_mean = sliding_window_view(values, fast).mean(axis=1)[slow - fast :]
            slow_mean = sliding_window_view(values, slow).mean(axis=1)
            out[slow - 1 :] = np.abs(fast_mean - slow_mean) / values[slow - 1 :]
        return out

    def step(self, high: bool, value: float) -> bool:
        """The regime after a candle whose measure is `value` (NaN keeps it)."""
        if value > self.enter:
            return True
        if value < self.exit:
            return False
        return high

    def states(self, values: np.ndarray, high: bool = False) -> np.ndarray:
        """`step` over a series at once: the last crossing of a band decides."""
        events = np.where(values > self.enter, 1, np.where(values < self.exit, -1, 0))
        index = np.where(events != 0, np.arange(len(values)), -1)
        last = np.maximum.accumulate(index) if len(index) else index
        return np.where(last >= 0, events[np.maximum(last, 0)] == 1, high)
