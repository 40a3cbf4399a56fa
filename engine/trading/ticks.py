"""Upbit's KRW-market price tick: the price steps an order may be placed at.

From 100 KRW up the table is /work/shared/UPBIT.md's (Upbit's `orderbook/instruments`
answers the same): >= 1,000,000: 1,000 · >= 500,000: 500 · >= 100,000: 100 · >= 50,000: 50 ·
>= 10,000: 10 · >= 5,000: 5 · >= 100: 1. Below 100 KRW UPBIT.md says to ask the API; here the
decimal ticks of Upbit's published KRW-market table are used instead (>= 10: 0.1, >= 1: 0.01,
>= 0.1: 0.001, >= 0.01: 0.0001, >= 0.001: 0.00001, >= 0.0001: 0.000001, >= 0.00001:
0.0000001, below: 0.00000001), so the paper broker and the backtest need no network.

Both the paper broker and the vectorised backtest round through `round_to_tick`, so their
fill prices are the same floats. A buy's price rounds up (a trader cannot bid between
ticks and still get the open's level), a sell's down.
"""

from __future__ import annotations

import numpy as np

# (lowest price of the band, tick) from the top; a tick below 1 is written as 1 / 10**digits
# so that a rounded price is `steps / 10**digits`, the nearest double to the decimal price
_BANDS = np.array(
    [1_000_000, 500_000, 100_000, 50_000, 10_000, 5_000, 100, 10, 1, 0.1, 0.01, 1e-3, 1e-4, 1e-5]
)
_TICKS = np.array([1_000, 500, 100, 50, 10, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float64)
_DIGITS = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int64)
_SCALE = 10.0**_DIGITS
# a price this close (in ticks) to a tick is on it: 0.3 / 0.1 is 2.9999999999999996
_ON_TICK = 1e-9


def _band(prices: np.ndarray) -> np.ndarray:
    """Index into _TICKS/_DIGITS of each price's band (the last one below 0.00001)."""
    return np.searchsorted(-_BANDS, -prices, side="left")


def tick_size(price: float | np.ndarray) -> np.ndarray:
    """The tick of each KRW price (float64; 0.1 for a price in [10, 100), ...)."""
    band = _band(np.asarray(price, dtype=np.float64))
    return _TICKS[band] / _SCALE[band]


def round_to_tick(price: float | np.ndarray, up: bool) -> np.ndarray:
    """Each price on its band's tick: up (a buy's fill) or down (a sell's). A price on a
    tick already (within 1e-9 of a tick) stays where it is."""
    prices = np.asarray(price, dtype=np.float64)
    if np.any(prices <= 0) or not np.all(np.isfinite(prices)):
        raise ValueError("a price to round to Upbit's tick must be finite and above 0")
    band = _band(prices)
    tick, scale = _TICKS[band], _SCALE[band]
    steps = prices * scale / tick
    nearest = np.round(steps)
    on_tick = np.abs(steps - nearest) < _ON_TICK
    steps = np.where(on_tick, nearest, np.ceil(steps) if up else np.floor(steps))
    return steps * tick / scale
