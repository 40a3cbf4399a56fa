"""The chart's indicators, computed by the project's own definitions so the chart shows what
the models and rules read: SMA, EMA and Bollinger bands as engine.research's features compute
them (`sma_ratio`, `ema_ratio`, `bbands`), RSI as the strategy rules do (Wilder's, the same
finite window: engine.trading.rules.rsi_values).

Each takes the closes of the candles the chart holds (oldest first) and returns one value per
candle, NaN where the indicator has not enough history yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.research.features import rolling_mean_std
from engine.research.features.kernels import ta_ema
from engine.trading.rules import rsi_values

SMA_LENGTH = 20
EMA_LENGTH = 50
BB_LENGTH, BB_STD = 20, 2.0
RSI_LENGTH = 14


def sma(closes: np.ndarray, length: int = SMA_LENGTH) -> np.ndarray:
    """The simple moving average of each trailing window (research's rolling mean)."""
    mean, _ = rolling_mean_std(np.ascontiguousarray(closes, dtype=np.float64), length)
    return mean


def ema(closes: np.ndarray, length: int = EMA_LENGTH) -> np.ndarray:
    """pandas-ta's SMA-seeded EMA, as the `ema_ratio` feature computes it."""
    return ta_ema(np.asarray(closes, dtype=np.float64), length)


def bollinger(
    closes: np.ndarray, length: int = BB_LENGTH, std: float = BB_STD
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bands: the mean ± `std` sample deviations (the `bbands` feature's)."""
    mean, sd = rolling_mean_std(np.ascontiguousarray(closes, dtype=np.float64), length)
    return mean - std * sd, mean + std * sd


def rsi(closes: np.ndarray, length: int = RSI_LENGTH) -> np.ndarray:
    """Wilder's RSI (0-100) as the rsi rule decides on it."""
    return rsi_values(np.asarray(closes, dtype=np.float64), length)


@dataclass(frozen=True)
class Overlay:
    """One line drawn over the candles: its key (the toggle), legend and style name."""

    key: str
    legend: str
    style: str


OVERLAYS = (
    Overlay("sma", f"SMA{SMA_LENGTH}", "sma"),
    Overlay("ema", f"EMA{EMA_LENGTH}", "ema"),
    Overlay("bb", f"BB{BB_LENGTH},{BB_STD:g}", "bb"),
)


def overlay_lines(key: str, closes: np.ndarray) -> list[np.ndarray]:
    """The line(s) overlay `key` draws over `closes` (Bollinger: the two bands)."""
    if key == "sma":
        return [sma(closes)]
    if key == "ema":
        return [ema(closes)]
    if key == "bb":
        return list(bollinger(closes))
    raise KeyError(f"no overlay {key!r}")


def warm() -> None:
    """Load every kernel the chart draws with (numba loads each one's cached machine code on
    its first call, ~0.3 s in all), so the first chart drawn does not wait for it."""
    closes = np.linspace(100.0, 200.0, 64)
    for overlay in OVERLAYS:
        overlay_lines(overlay.key, closes)
    rsi(closes)
