"""Signals and the strategies that make them: the AI threshold and the SMA-crossover rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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
