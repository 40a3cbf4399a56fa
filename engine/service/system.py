"""Workstation operations on the workstation itself: API tokens, and what the server is.

Tokens are facade operations like any other, so `upquant token ...` works the same in process
(no server: the command opens the store) and over HTTP (a server runs: a write token of its
own asks it). A secret is answered once, by `token_create`; nothing else ever carries it or
its hash. `server_info` says which process answers, since when, from which store, and how
many training jobs it runs.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from pydantic import BaseModel, Field, RootModel

from engine.service.base import StoreHolder
from engine.service.core import NotFound, Request, Response, Scope, ServiceError, operation


class TokenCreateRequest(Request):
    name: str = Field(min_length=1, description="Who or what uses the token, e.g. 'grafana'.")
    scope: Scope = Field("read", description="read: operations that change nothing; write: all.")


class TokenCreated(Response):
    id: int
    name: str
    scope: Scope
    secret: str = Field(description="The token; shown only now, it cannot be read back.")


class TokenListRequest(Request):
    pass


class TokenInfo(BaseModel):
    """A token without its secret (the store keeps only a hash, and never answers that)."""

    id: int
    name: str
    scope: Scope
    created: datetime
    last_used: datetime | None
    revoked: datetime | None


class TokenList(RootModel[list[TokenInfo]]):
    """Every API token, revoked ones included, oldest first."""


class TokenRevokeRequest(Request):
    id: int = Field(ge=1, description="The token's id (`upquant token list`).")


class ServerInfoRequest(Request):
    pass


class ServerInfo(Response):
    url: str | None = Field(description="Where the server answers; None in process.")
    pid: int
    started: datetime
    uptime_s: float
    version: str
    store: str = Field(description="The DuckDB file this process owns.")
    jobs: int = Field(description="Training runs queued or running in the store.")


def _version() -> str:
    try:
        return package_version("upquant")
    except PackageNotFoundError:
        return "0+unknown"


def _token_info(record: object) -> TokenInfo:
    return TokenInfo.model_validate(record, from_attributes=True)


class SystemOps(StoreHolder):
    # set by the server (engine.server.runner) once it listens; None for a one-shot command
    served_at: str | None = None
    _since: tuple[datetime, float] | None = None

    def _started(self) -> tuple[datetime, float]:
        if self._since is None:
            self._since = (datetime.now(UTC), time.monotonic())
        return self._since

    def serving(self, url: str) -> None:
        """Record that this Workstation is served at `url` (from now on)."""
        self.served_at = url
        self._since = (datetime.now(UTC), time.monotonic())

    @operation("write")
    def token_create(self, request: TokenCreateRequest) -> TokenCreated:
        """Create an API token; its secret is answered only this once."""
        from store.tokens import create_token

        name = request.name.strip()
        if not name:
            raise ServiceError("a token needs a name", "name who or what will use it")
        token_id, secret = create_token(self.con(), name, request.scope)
        return TokenCreated(id=token_id, name=name, scope=request.scope, secret=secret)

    @operation("write")
    def token_list(self, request: TokenListRequest) -> TokenList:
        """Every API token (id, name, scope, created, last used, revoked); never a secret."""
        from store.tokens import list_tokens

        # write scope: a read token may not learn which other tokens exist
        return TokenList([_token_info(record) for record in list_tokens(self.con())])

    @operation("write")
    def token_revoke(self, request: TokenRevokeRequest) -> TokenInfo:
        """Revoke an API token: the server refuses it from then on (within its 10 s cache)."""
        from store.tokens import revoke_token

        try:
            record = revoke_token(self.con(), request.id)
        except KeyError:
            raise NotFound(
                f"no API token with id {request.id}", "`upquant token list` shows the ids"
            ) from None
        return _token_info(record)

    @operation("read")
    def server_info(self, request: ServerInfoRequest) -> ServerInfo:
        """Which process answers: URL, pid, start, uptime, version, store, training jobs."""
        from store.db import db_path

        started, since = self._started()
        row = (
            self.con()
            .execute("SELECT count(*) FROM training_runs WHERE status IN ('queued', 'running')")
            .fetchall()[0]  # never fetchone: an unread result keeps a transaction open
        )
        return ServerInfo(
            url=self.served_at,
            pid=os.getpid(),
            started=started,
            uptime_s=round(time.monotonic() - since, 3),
            version=_version(),
            store=str(db_path()),
            jobs=int(row[0]) if row else 0,
        )
