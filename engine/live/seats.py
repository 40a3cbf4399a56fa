"""Who decides and who predicts in shadow: the models holding a market/unit's aliases, loaded.

The champion decides (the rule when there is none or it fails); every `challenger` and
`shadow` predicts on the same closed candles with the same features, its predictions logged
but never acted on. Loading verifies each artifact; a challenger or shadow whose artifact
is refused is left out with a note (the session says so), never a reason to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import duckdb

from engine.live.inference import LoadedModel, load_champion, load_record
from store.registry import alias_holders, get_model
from store.registry import champion as registry_champion

if TYPE_CHECKING:
    from engine.live.inference_service import InferenceService

SHADOW_ROLES = ("challenger", "shadow")


@dataclass(frozen=True)
class Seat:
    """A model predicting in shadow and its alias (challenger or shadow)."""

    model: LoadedModel
    role: str


@dataclass(frozen=True)
class Seats:
    champion: LoadedModel | None
    champion_reason: str  # which model decides, or why none does (load_champion's words)
    shadows: tuple[Seat, ...] = ()
    notes: tuple[str, ...] = field(default=())  # shadows left out, and why

    @property
    def ids(self) -> tuple[int | None, tuple[int, ...]]:
        """What the seats hold (champion id, shadow ids): equal ids, equal seats."""
        champion = self.champion.record.id if self.champion is not None else None
        return champion, tuple(seat.model.record.id for seat in self.shadows)


def holder_ids(
    con: duckdb.DuckDBPyConnection, market: str, unit: str
) -> tuple[int | None, tuple[int, ...]]:
    """The alias holders of market/unit now, as `Seats.ids` names them (one query): a
    session compares the two to see that an alias moved."""
    champion: int | None = None
    shadows: list[int] = []
    for holder in alias_holders(con, market, unit):
        if holder.alias == "champion":
            champion = holder.model_id
        elif holder.alias in SHADOW_ROLES:
            shadows.append(holder.model_id)
    return champion, tuple(shadows)


def load_seats(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    service: InferenceService | None = None,
) -> Seats:
    """The champion (as `load_champion` loads it: an earlier one when its artifact is bad)
    and every challenger and shadow of market/unit, in alias order; through `service` (its
    cache by sha256: a model already loaded for another market or face is reused) when given."""
    if service is None:
        champion, reason = load_champion(con, market, unit)
    else:
        record = registry_champion(con, market, unit)
        if record is None:
            champion, reason = None, f"no champion model for {market} unit {unit}"
        else:
            champion, reason = service.load_with_fallback(con, record)
    shadows: list[Seat] = []
    notes: list[str] = []
    for holder in alias_holders(con, market, unit):
        if holder.alias not in SHADOW_ROLES:
            continue
        try:
            record = get_model(con, holder.model_id)
            if service is None:
                loaded = load_record(record)
                loaded.warm()
            else:
                loaded = service.load_record(record)
        except Exception as exc:  # noqa: BLE001 - a bad shadow is left out, with the reason
            notes.append(f"{holder.alias} {holder.ref} left out: {exc}")
            continue
        shadows.append(Seat(loaded, holder.alias))
    return Seats(champion, reason, tuple(shadows), tuple(notes))
