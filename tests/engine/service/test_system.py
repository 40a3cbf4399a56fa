"""The system operations in process (no server): API tokens created, listed without their
secret, revoked; server_info of a one-shot Workstation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.service import OPERATIONS, NotFound, ServiceError, Workstation
from engine.service.system import (
    ServerInfoRequest,
    TokenCreateRequest,
    TokenListRequest,
    TokenRevokeRequest,
)
from store.tokens import verify_token


def test_token_operations_need_write_scope_and_server_info_read() -> None:
    scopes = {name: OPERATIONS[name].scope for name in ("token_create", "token_list", "token_revoke")}
    assert scopes == {"token_create": "write", "token_list": "write", "token_revoke": "write"}
    assert OPERATIONS["server_info"].scope == "read"


def test_a_token_is_created_listed_without_its_secret_and_revoked(con) -> None:  # type: ignore[no-untyped-def]
    ws = Workstation(con)
    created = ws.token_create(TokenCreateRequest(name=" grafana ", scope="read"))
    assert created.name == "grafana" and created.scope == "read"
    assert verify_token(con, created.secret) is not None

    listed = ws.token_list(TokenListRequest())
    text = json.dumps(listed.model_dump(mode="json"))
    assert created.secret not in text and "sha256" not in text
    (row,) = listed.root
    assert (row.id, row.name, row.scope, row.revoked) == (created.id, "grafana", "read", None)

    revoked = ws.token_revoke(TokenRevokeRequest(id=created.id))
    assert revoked.revoked is not None
    assert verify_token(con, created.secret) is None
    assert ws.token_list(TokenListRequest()).root[0].revoked == revoked.revoked


def test_revoking_an_unknown_token_is_not_found(con) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound, match="no API token with id 42") as failure:
        Workstation(con).token_revoke(TokenRevokeRequest(id=42))
    assert "upquant token list" in (failure.value.hint or "")


def test_a_blank_name_or_unknown_scope_is_refused(con) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TokenCreateRequest(name="x", scope="admin")  # type: ignore[arg-type]
    with pytest.raises(ServiceError, match="needs a name"):
        Workstation(con).token_create(TokenCreateRequest(name="   "))


def test_server_info_in_process_names_this_process_and_its_store(home: Path, con) -> None:  # type: ignore[no-untyped-def]
    info = Workstation(con).server_info(ServerInfoRequest())
    assert info.url is None and info.pid == os.getpid()
    assert Path(info.store) == home / "upquant.duckdb"
    assert info.jobs == 0 and info.uptime_s >= 0
