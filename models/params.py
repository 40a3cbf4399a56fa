"""Range checks of numeric parameters, shared by the model kinds and the engine: an error
names the parameter, the bad value and the valid range. NaN is outside every range (a plain
`x < low` comparison lets it through, and a NaN threshold or rate silently misbehaves)."""

from __future__ import annotations

import math
from dataclasses import dataclass


class ParameterError(ValueError):
    """A numeric parameter is outside its valid range; the message says which range."""


@dataclass(frozen=True)
class Range:
    """Valid values: a whole number (`integer`) or a finite number between `low` and `high`
    (either may be None: unbounded), each end included unless `*_open`."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return kind

    def contains(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not (isinstance(value, int) or float(value).is_integer()):
            return False
        number = float(value)
        if not math.isfinite(number):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or (number < self.high if self.high_open else number <= self.high)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_range(name: str, value: object, valid: Range, *, also: str = "") -> None:
    """Raise ParameterError (`name value is out of range: use ...`) unless `value` is in
    `valid`; `also` names a special value allowed besides the range."""
    if not valid.contains(value):
        alternative = f", or {also}" if also else ""
        raise ParameterError(
            f"{name} {value!r} is out of range: use {valid.describe()}{alternative}"
        )


def check_ranges(kind: str, params: dict[str, object], ranges: dict[str, Range]) -> None:
    """Check every parameter of a model kind that has a range (None: not set, allowed)."""
    for name, valid in ranges.items():
        value = params.get(name)
        if value is not None:
            check_range(f"{kind} {name}", value, valid)


COUNT = Range(low=1, integer=True)  # epochs, rounds, batch size, window, ...
NON_NEGATIVE = Range(low=0)
POSITIVE = Range(low=0, low_open=True)
UNIT_INTERVAL = Range(low=0, high=1)  # probabilities and confidence thresholds
