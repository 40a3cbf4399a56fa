"""Drift: performance drift, streaming (ADWIN, Page–Hinkley), and feature drift (PSI, KS).

Each detector takes one value per resolved prediction (1/0 for correct/wrong) or per closed
trade (its return) and answers, per update, whether the stream's mean has changed. State is
small and update cheap: ADWIN keeps an exponential histogram (O(log n) buckets, Bifet and
Gavaldà 2007), Page–Hinkley four numbers. Both are plain Python objects the live engine owns;
neither touches the store.

Feature drift compares each feature column of recent rows with the training reference: the
population stability index over the reference's quantile bins and the two-sample
Kolmogorov–Smirnov test. It is recorded for display; it decides nothing by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import kstwo


class Adwin:
    """ADWIN2 (Bifet and Gavaldà 2007): an adaptive window whose two halves, split at any
    bucket boundary, must not differ in mean by more than a Bernstein-type bound
    eps = sqrt(2 var ln(2/d') / m) + 2 R ln(2/d') / (3 m), m the harmonic mean of the halves'
    sizes, d' = delta / ln(n) (as MOA). On a larger difference the oldest bucket is dropped,
    repeatedly, and the update reports drift.

    `delta`: the confidence (false-alarm control; smaller is more conservative).
    `value_range` R: the width of the interval the values live in (1 for a 0/1 stream; for
    trade returns, about 6 standard deviations of the reference trades').
    `max_buckets`: buckets per size (M in the paper; memory and precision).
    `clock`: check for a cut every this many updates (MOA's 32); a drift is then reported at
    most clock-1 values late, and an update costs O(1) amortized besides the insertion.
    `min_window`: the smallest half either side of a cut.
    """

    def __init__(
        self,
        delta: float = 0.002,
        *,
        value_range: float = 1.0,
        max_buckets: int = 5,
        clock: int = 32,
        min_window: int = 5,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie strictly between 0 and 1, got {delta}")
        if value_range <= 0.0 or max_buckets < 2 or clock < 1 or min_window < 1:
            raise ValueError("value_range > 0, max_buckets >= 2, clock >= 1, min_window >= 1")
        self.delta = delta
        self.value_range = value_range
        self.max_buckets = max_buckets
        self.clock = clock
        self.min_window = min_window
        # rows[i] holds buckets of 2**i values, oldest first: [total, variance] pairs, the
        # variance being the bucket's sum of squared deviations from its own mean.
        self._rows: list[list[list[float]]] = []
        self.width = 0
        self._total = 0.0
        self._variance = 0.0  # sum of squared deviations over the window
        self._ticks = 0
        self.detections = 0

    @property
    def mean(self) -> float:
        """The mean of the values in the window."""
        return self._total / self.width if self.width else 0.0

    @property
    def variance(self) -> float:
        """The (population) variance of the values in the window."""
        return self._variance / self.width if self.width else 0.0

    def update(self, value: float) -> bool:
        """Add one value; True when the window was cut (the mean changed)."""
        if not math.isfinite(value):
            raise ValueError(f"ADWIN takes finite values, got {value}")
        if self.width:
            self._variance += self.width * (value - self.mean) ** 2 / (self.width + 1)
        self.width += 1
        self._total += value
        self._insert(value)
        self._ticks += 1
        if self._ticks % self.clock or self.width < 2 * self.min_window:
            return False
        cut = False
        while self._cut_once():
            cut = True
        self.detections += cut
        return cut

    def _insert(self, value: float) -> None:
        if not self._rows:
            self._rows.append([])
        self._rows[0].append([value, 0.0])
        for i, row in enumerate(self._rows):
            if len(row) <= self.max_buckets:
                break
            (t1, v1), (t2, v2) = row.pop(0), row.pop(0)
            size = 2**i
            merged = [t1 + t2, v1 + v2 + size / 2 * (t1 / size - t2 / size) ** 2]
            if i + 1 == len(self._rows):
                self._rows.append([])
            self._rows[i + 1].append(merged)

    def _cut_once(self) -> bool:
        """Test every bucket boundary, oldest first; on a cut drop the oldest bucket."""
        n = self.width
        variance = self._variance / n
        log_term = math.log(2.0 * math.log(n) / self.delta)
        n0, total0 = 0, 0.0
        for i in range(len(self._rows) - 1, -1, -1):
            size = 2**i
            for bucket_total, _ in self._rows[i]:
                n0 += size
                total0 += bucket_total
                n1 = n - n0
                if n1 < self.min_window:
                    return False
                if n0 < self.min_window:
                    continue
                m = 1.0 / (1.0 / n0 + 1.0 / n1)
                eps = math.sqrt(2.0 * variance * log_term / m) + (
                    2.0 * self.value_range * log_term / (3.0 * m)
                )
                if abs(total0 / n0 - (self._total - total0) / n1) > eps:
                    self._drop_oldest()
                    return True
        return False

    def _drop_oldest(self) -> None:
        i = len(self._rows) - 1
        bucket_total, bucket_variance = self._rows[i].pop(0)
        if not self._rows[i]:
            self._rows.pop()
        size = 2**i
        rest = self.width - size
        rest_mean = (self._total - bucket_total) / rest
        self._variance -= bucket_variance + (
            size * rest / self.width * (bucket_total / size - rest_mean) ** 2
        )
        self._variance = max(self._variance, 0.0)
        self.width = rest
        self._total -= bucket_total

    @property
    def buckets(self) -> int:
        """How many buckets the window holds (O(max_buckets log n))."""
        return sum(len(row) for row in self._rows)


Direction = Literal["both", "down", "up"]


class PageHinkley:
    """Page–Hinkley test (Page 1954; Hinkley 1971) on the cumulative deviation from the
    running mean: an alarm when the deviation beyond a tolerance `delta` accumulates past
    `threshold` (lambda). `direction` "down" watches for a fall of the mean (accuracy or PnL
    worsening), "up" for a rise, "both" for either. After an alarm it starts afresh.

    Units are the stream's: the defaults suit a 0/1 correctness stream (tolerate 0.02, alarm
    at 50 accumulated, about 100 standard deviations of a coin); for trade returns scale both
    by the reference trades' standard deviation sd: delta 0.2 sd and threshold 25 sd keep
    false alarms on 2000 stationary trades under 1% (scripts/bench_gate.py measures it).
    `alpha` < 1 forgets old deviations.
    """

    def __init__(
        self,
        delta: float = 0.02,
        threshold: float = 50.0,
        *,
        direction: Direction = "both",
        min_samples: int = 30,
        alpha: float = 1.0,
    ) -> None:
        if delta < 0.0 or threshold <= 0.0 or min_samples < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError("delta >= 0, threshold > 0, min_samples >= 1, 0 < alpha <= 1")
        if direction not in ("both", "down", "up"):
            raise ValueError(f"direction is both, down or up, got {direction!r}")
        self.delta = delta
        self.threshold = threshold
        self.direction = direction
        self.min_samples = min_samples
        self.alpha = alpha
        self.detections = 0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._up = 0.0  # sum of (x - mean - delta): rises when the mean rises
        self._up_min = 0.0
        self._down = 0.0  # sum of (x - mean + delta): falls when the mean falls
        self._down_max = 0.0

    def update(self, value: float) -> bool:
        """Add one value; True on an alarm (the statistics then restart)."""
        if not math.isfinite(value):
            raise ValueError(f"Page–Hinkley takes finite values, got {value}")
        self.n += 1
        self.mean += (value - self.mean) / self.n
        self._up = self.alpha * self._up + (value - self.mean - self.delta)
        self._down = self.alpha * self._down + (value - self.mean + self.delta)
        self._up_min = min(self._up_min, self._up)
        self._down_max = max(self._down_max, self._down)
        if self.n < self.min_samples:
            return False
        rose = self.direction != "down" and self._up - self._up_min > self.threshold
        fell = self.direction != "up" and self._down_max - self._down > self.threshold
        if rose or fell:
            self.detections += 1
            self._reset()
            return True
        return False


# --- feature drift --------------------------------------------------------------------------
PSI_EPSILON = 1e-4  # the share an empty bin counts as, so its log stays finite


def psi_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (duplicates merged, so a column with few
    distinct values gets fewer bins); bins are (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    values = _finite(reference)
    if bins < 2:
        raise ValueError(f"PSI needs at least 2 bins, got {bins}")
    if len(values) == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def psi(
    reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index: sum (c - r) ln(c / r) over the reference's quantile bins,
    r and c the shares of reference and current values per bin, each at least `epsilon`.
    NaNs are left out; 0 when either side has no values. Rule of thumb: < 0.1 stable,
    0.1-0.25 moderate, > 0.25 a shift."""
    ref, cur = _finite(reference), _finite(current)
    if len(ref) == 0 or len(cur) == 0:
        return 0.0
    edges = psi_edges(ref, bins)
    r = np.bincount(np.searchsorted(edges, ref), minlength=len(edges) + 1) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur), minlength=len(edges) + 1) / len(cur)
    r, c = np.maximum(r, epsilon), np.maximum(c, epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov: (statistic, p-value), the largest gap between the two
    empirical CDFs and its asymptotic two-sided p-value (scipy's ks_2samp, method="asymp").
    NaNs are left out; (0, 1) when either side has no values."""
    ref, cur = np.sort(_finite(reference)), np.sort(_finite(current))
    if len(ref) == 0 or len(cur) == 0:
        return 0.0, 1.0
    both = np.concatenate((ref, cur))
    gap = np.searchsorted(ref, both, side="right") / len(ref) - np.searchsorted(
        cur, both, side="right"
    ) / len(cur)
    statistic = float(np.max(np.abs(gap)))
    en = len(ref) * len(cur) / (len(ref) + len(cur))
    return statistic, float(np.clip(kstwo.sf(statistic, round(en)), 0.0, 1.0))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    ks_statistic: float
    ks_p_value: float
    n_reference: int  # finite values compared
    n_current: int


def feature_drift(
    reference: np.ndarray, current: np.ndarray, features: list[str], bins: int = 10
) -> list[FeatureDrift]:
    """PSI and KS per feature column of two (rows, features) arrays: the training reference
    and recent rows, columns named by `features`."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    width = len(features)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != width or cur.shape[1] != width:
        raise ValueError(
            f"reference and current must be (rows, {len(features)}) arrays, got "
            f"{ref.shape} and {cur.shape}"
        )
    out = []
    for j, name in enumerate(features):
        statistic, p_value = ks_2samp(ref[:, j], cur[:, j])
        out.append(
            FeatureDrift(
                name,
                psi(ref[:, j], cur[:, j], bins),
                statistic,
                p_value,
                int(np.isfinite(ref[:, j]).sum()),
                int(np.isfinite(cur[:, j]).sum()),
            )
        )
    return out


def _finite(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"a feature column is 1-D, got shape {array.shape}")
    return array[np.isfinite(array)]
