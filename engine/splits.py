"""Chronological train/validation/test split with purge and embargo."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of the labelled rows, in time order. `purge` drops the last rows of a part
    whose label window reaches into the next part (set to the label horizon); `embargo`
    drops further rows at the start of the next part."""

    train: float = 0.7
    validation: float = 0.15
    purge: int | None = None
    embargo: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.train < 1 and 0 < self.validation < 1 and self.train + self.validation < 1):
            raise ValueError(
                f"split fractions train={self.train}, validation={self.validation} must be in (0, 1)"
                " and leave room for a test part"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def chronological_split(n: int, spec: SplitSpec, horizon: int) -> Split:
    """Row positions of each part for `n` time-ordered rows."""
    purge = horizon if spec.purge is None else spec.purge
    train_end = int(n * spec.train)
    val_end = int(n * (spec.train + spec.validation))
    train = np.arange(0, max(train_end - purge, 0))
    validation = np.arange(train_end + spec.embargo, max(val_end - purge, 0))
    test = np.arange(val_end + spec.embargo, n)
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        if len(part) == 0:
            raise ValueError(
                f"the {name} part is empty: {n} labelled rows are too few for this split"
                f" (purge {purge}, embargo {spec.embargo}); import more candles"
            )
    return Split(train, validation, test)
