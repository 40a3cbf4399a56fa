"""Workstation operations on the store's own upkeep: `store_check` (every artifact's
integrity, and what crashes left behind under $UPQUANT_HOME) and `store_fix` (the same, then
remove what is left behind, make files private, compact a grown database file).

The work is `store.upkeep.check_store`, which opens the store itself. Compacting replaces
the database file, which no connection may hold: a Workstation that has the store open (a
server, or a session that ran other operations) fixes everything else, and refuses only a
fix that would compact, saying how to get the store to itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from engine.service.base import StoreHolder
from engine.service.core import Conflict, Request, Response, operation

if TYPE_CHECKING:
    from store.upkeep import StoreReport


class StoreCheckRequest(Request):
    """Nothing to choose: the store checked is the one this Workstation owns."""


class ArtifactState(BaseModel):
    model: str
    id: int
    path: str
    status: str  # ok, missing, damaged, wrong-key (encrypted with another key), key-error
    detail: str


class LeftBehind(BaseModel):
    kind: str
    path: str  # under the store's home
    detail: str
    size: int
    fixable: bool
    fixed: bool


class DatabaseFile(BaseModel):
    file_bytes: int
    used_bytes: int
    free_bytes: int
    compacted_bytes: int | None
    grown: bool


class StoreCheck(Response):
    """Artifacts (ok, missing, damaged, wrong-key, key-error), what is left behind (found, fixed, kept), the
    database file's size; `problems` counts what is still wrong (the command exits 1)."""

    home: str
    artifacts: list[ArtifactState]
    findings: list[LeftBehind]
    database: DatabaseFile | None
    problems: int


def _answer(report: StoreReport) -> StoreCheck:
    return StoreCheck.model_validate(report.to_dict())


class UpkeepOps(StoreHolder):
    def _store_open(self) -> bool:
        """Whether this Workstation holds the store open (another connection is then in
        the way of compacting it)."""
        return self._root is not None

    @operation("read")
    def store_check(self, request: StoreCheckRequest) -> StoreCheck:
        """Check every model's artifact and find what crashes left behind (nothing changed)."""
        from store.upkeep import check_store

        return _answer(check_store(fix=False))

    @operation("write")
    def store_fix(self, request: StoreCheckRequest) -> StoreCheck:
        """Check the store, remove what is left behind, make files private and compact a
        grown database file (keeping a backup until the copy is verified)."""
        from store.upkeep import check_store

        if self._store_open():
            grown = check_store(fix=False).database
            if grown is not None and grown.grown:
                raise Conflict(
                    "the database file needs compacting, which replaces the file, and this"
                    " process holds the store open",
                    "stop `upquant serve` (and any `upquant tui`), then run `upquant store"
                    " check --fix`",
                )
        return _answer(check_store(fix=True))
