"""What a market/unit's model operations do (`ops_settings`, one row per market/unit).

- the promotion gate's thresholds (`GateConfig`) and whether it promotes by itself
  (`auto_promote`; otherwise its verdict is a recommendation shown by `models ab`);
- champion expiry: a champion older than `max_age_hours` stops deciding (the rule decides,
  reason `expired`);
- the dissimilarity gate: a champion whose input lies outside its training distribution
  stops deciding for that candle (reason `out of distribution`);
- retraining: a `schedule` (daily, weekly, monthly or every N hours: `6h`) and/or a retrain
  when performance drift is detected (`retrain_on_drift`); a retrain registers a challenger.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any

import duckdb

from engine.ops.gate import GateConfig
from store.ops_settings import read_settings, write_settings

SCHEDULES = ("daily", "weekly", "monthly")
_EVERY = re.compile(r"^(\d+)h$")


def schedule_period(schedule: str) -> timedelta:
    """The period of a schedule: daily, weekly, monthly (30 days) or `Nh` (every N hours)."""
    if schedule == "daily":
        return timedelta(days=1)
    if schedule == "weekly":
        return timedelta(days=7)
    if schedule == "monthly":
        return timedelta(days=30)
    match = _EVERY.match(schedule)
    if match and 1 <= int(match.group(1)) <= 24 * 366:
        return timedelta(hours=int(match.group(1)))
    raise ValueError(
        f"schedule {schedule!r} is not one of daily, weekly, monthly or every N hours"
        " (e.g. 6h, N from 1 to 8784)"
    )


@dataclass(frozen=True)
class OpsSettings:
    auto_promote: bool = False
    gate: GateConfig = field(default_factory=GateConfig)
    max_age_hours: float | None = None  # None: a champion never expires
    ood_gate: bool = True
    # an input is out of distribution when more than this share of its features lie outside
    # the training reference's range (engine.ops.monitor's dissimilarity gate)
    ood_max_share: float = 0.25
    schedule: str | None = None
    retrain_on_drift: bool = False

    def __post_init__(self) -> None:
        if self.max_age_hours is not None and not self.max_age_hours > 0:
            raise ValueError("max_age_hours must be positive (or unset: never expires)")
        if not 0.0 < self.ood_max_share <= 1.0:
            raise ValueError("ood_max_share must lie in (0, 1]")
        if self.schedule is not None:
            schedule_period(self.schedule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpsSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ops settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if isinstance(values.get("gate"), dict):
            values["gate"] = GateConfig(**values["gate"])
        return cls(**values)


def get_settings(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> OpsSettings:
    return OpsSettings.from_dict(read_settings(con, market, unit))


def set_settings(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, settings: OpsSettings
) -> None:
    write_settings(con, market, unit, settings.to_dict())
