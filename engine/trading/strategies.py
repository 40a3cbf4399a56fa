"""Signals and the strategies that make them: the AI threshold and the SMA-crossover rule.

Each strategy has two forms side by side: the per-candle one the live engine calls on each
closed candle (`SmaCross.decide`, `threshold_action`: an action name and a reason), and the
vectorised one that backtests, evaluation and batch prediction run over a whole series at
once (`sma_cross_actions`, `actions_from_probs`: action codes -1 sell, 0 hold, 1 buy, a
models.CLASSES index minus one). tests/test_backtest.py holds each pair to the same decision
on every candle of real BTC candles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from models import CLASSES


@dataclass(frozen=True)
class Signal:
    ts: pd.Timestamp
    market: str
    action: str
    confidence: float
    source: str
    reason: str
    model_id: int | None = None
    strategy: str | None = None  # the sha256 of the strategy spec that decided it


@dataclass(frozen=True)
class SmaCross:
    """Buy when the fast SMA crosses above the slow one, sell when it crosses below."""

    fast: int = 10
    slow: int = 30

    @property
    def name(self) -> str:
        return f"sma-cross({self.fast},{self.slow})"

    def decide(self, closes: np.ndarray) -> tuple[str, str]:
        """Action and reason for the newest candle of `closes` (ascending)."""
        if len(closes) < self.slow + 1:
            return "hold", f"{self.name}: {len(closes)} candles, needs {self.slow + 1}"
        fast_now, fast_prev = closes[-self.fast :].mean(), closes[-self.fast - 1 : -1].mean()
        slow_now, slow_prev = closes[-self.slow :].mean(), closes[-self.slow - 1 : -1].mean()
        if fast_prev <= slow_prev and fast_now > slow_now:
            return "buy", f"{self.name}: fast crossed above slow"
        if fast_prev >= slow_prev and fast_now < slow_now:
            return "sell", f"{self.name}: fast crossed below slow"
        return "hold", f"{self.name}: no cross"


def sma_cross_actions(closes: np.ndarray, fast: int = 10, slow: int = 30) -> np.ndarray:
    """SmaCross(fast, slow).decide for every candle at once, as action codes.

    Each moving average is `closes[window].mean()` of the same windows `decide` takes, so
    the decisions are identical, ties included; candles before the first `slow + 1` hold.
    """
    check_sma_periods(fast, slow)
    values = np.asarray(closes, dtype="float64")
    n = len(values)
    codes = np.zeros(n, dtype=np.int8)
    if n < slow + 1:
        return codes
    # means[i] averages values[i : i + window]; at candle t "now" ends at t, "prev" at t - 1.
    fast_mean = sliding_window_view(values, fast).mean(axis=1)
    slow_mean = sliding_window_view(values, slow).mean(axis=1)
    fast_now, fast_prev = fast_mean[slow - fast + 1 :], fast_mean[slow - fast : n - fast]
    slow_now, slow_prev = slow_mean[1:], slow_mean[: n - slow]
    buy = (fast_prev <= slow_prev) & (fast_now > slow_now)
    sell = (fast_prev >= slow_prev) & (fast_now < slow_now)
    codes[slow:] = buy.view(np.int8) - sell.view(np.int8)
    return codes


def check_sma_periods(fast: int, slow: int) -> None:
    if not 1 <= fast < slow:
        raise ValueError(f"SMA periods need 1 <= fast < slow; got fast={fast}, slow={slow}")


def threshold_action(probs: np.ndarray, threshold: float) -> tuple[str, float, str]:
    """Act on the most likely class only if its probability reaches `threshold`."""
    best = int(np.argmax(probs))
    confidence = float(probs[best])
    action = CLASSES[best]
    if action == "hold":
        return "hold", confidence, f"model: hold is most likely (p={confidence:.2f})"
    if confidence < threshold:
        return (
            "hold",
            confidence,
            f"model: {action} p={confidence:.2f} below threshold {threshold:.2f}",
        )
    return action, confidence, f"model: {action} p={confidence:.2f} >= threshold {threshold:.2f}"


def actions_from_probs(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Action codes (-1 sell, 0 hold, 1 buy): the most likely class when it is not hold and
    its probability reaches `threshold`: `threshold_action` for every row at once."""
    best = probs.argmax(axis=1)
    confident = probs[np.arange(len(probs)), best] >= threshold
    return np.where(confident, best - 1, 0).astype(np.int8)
