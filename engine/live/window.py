"""A market's trailing candle window, held as numpy arrays for the live engine.

The engine appends one closed candle per market per pass and reads the window's arrays for
the features of its newest row (`engine.research.features.latest_values` takes them as they
are). A DataFrame per candle (pd.concat of the window and one row) cost more than the
features and the tree walk together; this appends in place into a buffer twice the window's
size and moves the window back to the buffer's start only when the buffer is full (a copy
into a new buffer, so arrays handed out before stay valid). `frame()` builds the window's
DataFrame on demand (cached until the next change) for the batch feature path and the faces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.research.features.kind import Candles
from store.candles import CANDLE_COLUMNS

PRICES = ("open", "high", "low", "close", "volume", "value")


class CandleWindow:
    """The newest `size` candles of one market/unit, ascending by ts (one row per ts)."""

    def __init__(self, market: str, unit: str, size: int) -> None:
        self.market, self.unit = market, unit
        self.size = max(1, int(size))
        self._alloc(2 * self.size)
        self._start = self._end = 0
        self._frame: pd.DataFrame | None = None

    def _alloc(self, capacity: int) -> None:
        self._ts = np.empty(capacity, dtype=np.int64)
        self._cols = {name: np.empty(capacity, dtype=np.float64) for name in PRICES}

    def __len__(self) -> int:
        return self._end - self._start

    # ---------------------------------------------------------------------------- reading
    @property
    def ts_ns(self) -> np.ndarray:
        """Open times, int64 ns since the epoch (UTC), a view."""
        return self._ts[self._start : self._end]

    def array(self, name: str) -> np.ndarray:
        """One float64 column (open, high, low, close, volume, value), a view."""
        return self._cols[name][self._start : self._end]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name) for name in PRICES}

    @property
    def last_ts(self) -> pd.Timestamp | None:
        return pd.Timestamp(int(self._ts[self._end - 1]), tz="UTC") if len(self) else None

    def candles(self) -> Candles:
        """The window as the features' `Candles` (views, no copy)."""
        return Candles.of_arrays(self.arrays(), self.ts_ns)

    def frame(self) -> pd.DataFrame:
        """The window as a canonical candle frame (built once per change)."""
        if self._frame is None:
            data: dict[str, Any] = {
                "market": self.market,
                "unit": self.unit,
                "ts": pd.DatetimeIndex(self.ts_ns.astype("datetime64[ns]")).tz_localize("UTC"),
            }
            data.update({name: self.array(name).copy() for name in PRICES})
            self._frame = pd.DataFrame(data, columns=CANDLE_COLUMNS)
        return self._frame

    # ---------------------------------------------------------------------------- writing
    def load(self, frame: pd.DataFrame) -> None:
        """Replace the window with the newest `size` candles of `frame` (canonical, ascending)."""
        tail = frame.tail(self.size)
        n = len(tail)
        self._alloc(max(2 * self.size, n))
        self._start, self._end = 0, n
        if n:
            stamps = pd.DatetimeIndex(tail["ts"])
            stamps = stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
            self._ts[:n] = stamps.as_unit("ns").asi8
            for name in PRICES:
                values = tail[name] if name in tail else np.full(n, np.nan)
                self._cols[name][:n] = np.asarray(values, dtype=np.float64)
        self._frame = None

    def resize(self, size: int) -> None:
        """Keep up to `size` candles from now on (a longer window fills as candles come)."""
        size = max(1, int(size))
        if size != self.size:
            frame = self.frame()
            self.size = size
            self.load(frame)

    def append(self, candle: dict[str, Any]) -> bool:
        """Add a closed candle as the newest; the same ts as the newest replaces it (the
        socket's final values over what REST stored). False (nothing changes) for an older
        candle."""
        ts = pd.Timestamp(candle["ts"])
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        stamp = int(ts.value)
        if len(self) and stamp < self._ts[self._end - 1]:
            return False
        if len(self) and stamp == self._ts[self._end - 1]:
            at = self._end - 1
        else:
            if self._end == len(self._ts):
                self._compact()
            at = self._end
            self._end += 1
        self._ts[at] = stamp
        for name in PRICES:
            value = candle.get(name)
            self._cols[name][at] = np.nan if value is None else float(value)
        if len(self) > self.size:
            self._start = self._end - self.size
        self._frame = None
        return True

    def _compact(self) -> None:
        """Move the window to the start of a new buffer (arrays handed out stay valid)."""
        keep = min(len(self), self.size)
        ts, cols = self._ts, self._cols
        lo, hi = self._end - keep, self._end
        self._alloc(2 * self.size)
        self._ts[:keep] = ts[lo:hi]
        for name in PRICES:
            self._cols[name][:keep] = cols[name][lo:hi]
        self._start, self._end = 0, keep
