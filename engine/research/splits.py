"""Chronological train/validation/test splits and walk-forward folds, with purge and embargo.

Rows are a dataset's time-ordered rows. **Purge** drops rows of a part whose label window
reaches into the next part: with label end times (`Dataset.label_end`), a row goes when its
label end is at or after the first timestamp of the next part; without them, the last
`horizon` rows go. **Embargo** then drops the first `embargo` rows of the next part, so
serially correlated neighbours of the boundary stay out of both. Split membership depends
only on timestamps and label ends (t + horizon), never on prices or volumes.

Given `candle_ts` (the timestamps of every candle the rows were built from), the fractions
cut the candles, not the surviving rows, and purge against the cut's own timestamp: whether
a later candle's values leave its row defined (a zero volume, a flagged outlier) then moves
no cut, so changing candles after t cannot move a row at or before t into another part.
Without it the fractions count rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


class TooFewRowsError(ValueError):
    """A part of a split (or a walk-forward fold) would be empty: the data are too short."""


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of the labelled rows, in time order. `purge`: None purges by label end times
    (or the label horizon in rows when there are none); an int purges that many rows.
    `embargo` drops further rows at the start of the next part."""

    train: float = 0.7
    validation: float = 0.15
    purge: int | None = None
    embargo: int = 0

    def __post_init__(self) -> None:
        if not (
            0 < self.train < 1 and 0 < self.validation < 1 and self.train + self.validation < 1
        ):
            raise ValueError(
                f"split fractions train={self.train}, validation={self.validation} must be in"
                " (0, 1) and leave room for a test part"
            )
        _check_purge_embargo(self.purge, self.embargo)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitSpec:
        return cls(**data)


@dataclass(frozen=True)
class WalkForwardSpec:
    """K folds, each testing on the next block of rows after its training window.

    The rows are cut into `folds + 1` equal blocks unless `test_size` (fraction of rows per
    test block) is given; fold k tests on block k + 1. `expanding`: training starts at row 0;
    `sliding`: training keeps the last `train_size` fraction of rows (default: one block).
    The last `validation` fraction of each training window is its validation part (early
    stopping), purged and embargoed like the test boundary.
    """

    folds: int = 5
    mode: str = "expanding"
    test_size: float | None = None
    train_size: float | None = None
    validation: float = 0.15
    purge: int | None = None
    embargo: int = 0

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ValueError(f"walk-forward needs >= 1 fold, got {self.folds}")
        if self.mode not in ("expanding", "sliding"):
            raise ValueError(f"walk-forward mode must be expanding or sliding, got {self.mode!r}")
        for name in ("test_size", "train_size"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"walk-forward {name} must be a fraction in (0, 1), got {value}")
        if self.test_size is not None and self.test_size * self.folds >= 1:
            raise ValueError(
                f"{self.folds} test blocks of {self.test_size} leave no rows to train on"
            )
        if not 0 <= self.validation < 1:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.validation}")
        _check_purge_embargo(self.purge, self.embargo)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_purge_embargo(purge: int | None, embargo: int) -> None:
    if purge is not None and purge < 0:
        raise ValueError(f"purge must be >= 0 rows or None, got {purge}")
    if embargo < 0:
        raise ValueError(f"embargo must be >= 0 rows, got {embargo}")


@dataclass(frozen=True)
class Split:
    """Row positions of each part, ascending."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def part_of(self, n: int) -> np.ndarray:
        """Per row: 0 train, 1 validation, 2 test, -1 dropped (purge, embargo)."""
        out = np.full(n, -1, dtype=np.int8)
        for code, rows in enumerate((self.train, self.validation, self.test)):
            out[rows] = code
        return out


@dataclass(frozen=True)
class Fold(Split):
    """One walk-forward fold: a Split whose test part is the fold's test block."""

    index: int = 0


class _Purger:
    """Decides where a part must stop so no label in it reaches the next part."""

    def __init__(
        self,
        n: int,
        purge: int | None,
        horizon: int | None,
        ts: pd.DatetimeIndex | np.ndarray | None,
        label_end: pd.DatetimeIndex | np.ndarray | None,
    ) -> None:
        self.rows: int | None = purge
        self.ts: np.ndarray | None = None
        self.end: np.ndarray | None = None
        if purge is not None:
            return
        if ts is not None and label_end is not None:
            ts_index, end_index = pd.DatetimeIndex(ts), pd.DatetimeIndex(label_end)
            if len(ts_index) != n or len(end_index) != n:
                raise ValueError(f"ts and label_end must have one entry per row ({n})")
            if end_index.isna().any() or (end_index < ts_index).any():
                raise ValueError("every row needs a label end at or after its own ts")
            self.ts = ts_index.as_unit("ns").asi8
            self.end = end_index.as_unit("ns").asi8
        elif horizon is not None:
            self.rows = horizon
        else:
            raise ValueError("purge needs the label horizon or label end times")

    def stop(self, start: int, boundary: int, cut: int | None = None) -> int:
        """End (exclusive) of the part [start, boundary) once purged against the next part,
        which starts at row `boundary`, or at time `cut` (ns) when the cut is a candle's."""
        if self.rows is not None:
            return max(boundary - self.rows, start)
        assert self.ts is not None and self.end is not None
        if cut is None and boundary >= len(self.ts):
            return boundary
        # label ends (t + horizon) rise with t, so the part stops at the first row that
        # reaches the next part; with any other order, stopping there only purges more
        first = self.ts[boundary] if cut is None else cut
        reaching = np.flatnonzero(self.end[start:boundary] >= first)
        return start + int(reaching[0]) if len(reaching) else boundary


class _Cuts:
    """Turns a position among the cut units (rows, or candles when `candle_ts` is given) into
    the first row at or after it, and the cut's timestamp (ns) for purging."""

    def __init__(
        self,
        n: int,
        ts: pd.DatetimeIndex | np.ndarray | None,
        candle_ts: pd.DatetimeIndex | np.ndarray | None,
    ) -> None:
        self.n = n
        self.grid: np.ndarray | None = None
        if candle_ts is not None:
            if ts is None:
                raise ValueError("cutting by candles needs the rows' ts")
            self.grid = pd.DatetimeIndex(candle_ts).as_unit("ns").asi8
            self.rows_ts = pd.DatetimeIndex(ts).as_unit("ns").asi8
        self.units = n if self.grid is None else len(self.grid)

    def row(self, position: int) -> int:
        if self.grid is None:
            return position
        if position >= self.units:
            return self.n
        return int(np.searchsorted(self.rows_ts, self.grid[position]))

    def time(self, position: int) -> int | None:
        if self.grid is None or position >= self.units:
            return None
        return int(self.grid[position])


def chronological_split(
    n: int,
    spec: SplitSpec,
    horizon: int | None = None,
    *,
    ts: pd.DatetimeIndex | np.ndarray | None = None,
    label_end: pd.DatetimeIndex | np.ndarray | None = None,
    candle_ts: pd.DatetimeIndex | np.ndarray | None = None,
) -> Split:
    """Row positions of train, validation and test for `n` time-ordered rows; the fractions
    cut `candle_ts` when given (see the module docstring), else the rows."""
    purger = _Purger(n, spec.purge, horizon, ts, label_end)
    cuts = _Cuts(n, ts, candle_ts)
    train_cut = int(cuts.units * spec.train)
    val_cut = int(cuts.units * (spec.train + spec.validation))
    train_end, val_end = cuts.row(train_cut), cuts.row(val_cut)
    train = np.arange(0, purger.stop(0, train_end, cuts.time(train_cut)))
    val_start = min(train_end + spec.embargo, val_end)
    validation = np.arange(val_start, purger.stop(val_start, val_end, cuts.time(val_cut)))
    test = np.arange(min(val_end + spec.embargo, n), n)
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        if len(part) == 0:
            raise TooFewRowsError(
                f"the {name} part is empty: {n} labelled rows are too few for this split"
                f" (purge {spec.purge if spec.purge is not None else 'by label end'},"
                f" embargo {spec.embargo}); import more candles"
            )
    return Split(train, validation, test)


def min_candles(spec: SplitSpec, *, warmup: int, horizon: int, min_train: int = 1) -> int:
    """The fewest gap-free candles whose chronological split keeps `min_train` training rows
    and a validation and test row, when the first `warmup` candles have no row (feature
    warm-up) and the last `horizon` none either (no label yet).

    The fractions cut the candles (as `chronological_split` does with `candle_ts`); each cut
    purges the `horizon` rows before it (or `spec.purge`) and embargoes `spec.embargo` after.
    """
    purge = horizon if spec.purge is None else spec.purge
    n = warmup + horizon + max(min_train, 1) + 2
    while True:
        train_cut = int(n * spec.train)
        val_cut = int(n * (spec.train + spec.validation))
        train_rows = train_cut - purge - warmup
        val_rows = val_cut - purge - max(train_cut + spec.embargo, warmup)
        test_rows = n - horizon - max(val_cut + spec.embargo, warmup)
        if train_rows >= min_train and val_rows >= 1 and test_rows >= 1:
            return n
        n += 1


def walk_forward(
    n: int,
    spec: WalkForwardSpec,
    horizon: int | None = None,
    *,
    ts: pd.DatetimeIndex | np.ndarray | None = None,
    label_end: pd.DatetimeIndex | np.ndarray | None = None,
    candle_ts: pd.DatetimeIndex | np.ndarray | None = None,
) -> Iterator[Fold]:
    """Walk-forward folds over `n` time-ordered rows, oldest test block first; blocks cut
    `candle_ts` when given (see the module docstring), else the rows."""
    purger = _Purger(n, spec.purge, horizon, ts, label_end)
    cuts = _Cuts(n, ts, candle_ts)
    units = cuts.units
    block = int(units * spec.test_size) if spec.test_size is not None else units // (spec.folds + 1)
    first_test = units - spec.folds * block
    train_units = int(units * spec.train_size) if spec.train_size is not None else first_test
    if block < 1 or first_test < 1:
        raise TooFewRowsError(f"{n} rows are too few for {spec.folds} walk-forward folds")
    for k in range(spec.folds):
        test_cut = first_test + k * block
        test_start = cuts.row(test_cut)
        test_end = n if k == spec.folds - 1 else cuts.row(test_cut + block)
        start_cut = 0 if spec.mode == "expanding" else max(test_cut - train_units, 0)
        start = cuts.row(start_cut)
        val_cut = test_cut - int((test_cut - start_cut) * spec.validation)
        val_start = cuts.row(val_cut)
        train = np.arange(start, purger.stop(start, val_start, cuts.time(val_cut)))
        if val_start < test_start:
            first_val = min(val_start + spec.embargo, test_start)
            validation = np.arange(
                first_val, purger.stop(first_val, test_start, cuts.time(test_cut))
            )
        else:
            train = np.arange(start, purger.stop(start, test_start, cuts.time(test_cut)))
            validation = np.arange(0)
        test = np.arange(min(test_start + spec.embargo, test_end), test_end)
        if len(train) == 0 or len(test) == 0:
            raise TooFewRowsError(
                f"walk-forward fold {k} has an empty train or test part: {n} rows are too few"
                f" for {spec.folds} folds with embargo {spec.embargo}"
            )
        yield Fold(train, validation, test, index=k)
