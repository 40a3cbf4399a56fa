"""API tokens: secrets hashed at rest, verified by secret, scoped, revocable."""

from __future__ import annotations

from pathlib import Path

import pytest

from store.db import connect, db_path
from store.tokens import create_token, list_tokens, mark_used, revoke_token, verify_token


def test_a_secret_is_never_stored_only_its_hash(home: Path) -> None:
    con = connect()
    token_id, secret = create_token(con, "laptop", "write")
    assert secret.startswith("upq_") and len(secret) > 40
    con.execute("CHECKPOINT")
    con.close()
    raw = b"".join(p.read_bytes() for p in home.iterdir() if p.name.startswith(db_path().name))
    assert secret.encode() not in raw and secret[4:].encode() not in raw
    con = connect()
    stored = con.execute("SELECT * FROM api_tokens").fetchall()
    found = verify_token(con, secret)
    con.close()
    assert stored and not any(secret in str(value) for value in stored[0])
    assert found is not None and found.id == token_id


def test_verify_knows_the_token_by_its_secret_only(con) -> None:
    read_id, read = create_token(con, "dashboard", "read")
    _, write = create_token(con, "me", "write")
    assert read != write
    found = verify_token(con, read)
    assert found is not None and (found.id, found.name, found.scope) == (read_id, "dashboard", "read")
    assert verify_token(con, write).scope == "write"  # type: ignore[union-attr]
    assert verify_token(con, read[:-1]) is None and verify_token(con, "") is None
    assert verify_token(con, read + "x") is None


def test_revoke_refuses_the_token_and_keeps_the_row(con) -> None:
    token_id, secret = create_token(con, "old", "read")
    revoked = revoke_token(con, token_id)
    assert revoked.revoked is not None
    assert verify_token(con, secret) is None
    assert revoke_token(con, token_id).revoked == revoked.revoked  # twice: the first stamp
    assert [t.id for t in list_tokens(con)] == [token_id]
    with pytest.raises(KeyError, match="no API token with id 99"):
        revoke_token(con, 99)


def test_scope_and_name_are_checked(con) -> None:
    with pytest.raises(ValueError, match="scope 'admin' is not one of read, write"):
        create_token(con, "x", "admin")
    with pytest.raises(ValueError, match="needs a name"):
        create_token(con, "  ", "read")
    assert list_tokens(con) == []


def test_mark_used_stamps_last_use(con) -> None:
    token_id, _ = create_token(con, "cli", "write")
    assert list_tokens(con)[0].last_used is None
    mark_used(con, token_id)
    assert list_tokens(con)[0].last_used is not None


def test_verifying_a_token_leaves_no_transaction_open(con) -> None:
    """The server verifies its local token on its long-lived root connection at start; a
    result left unread there kept that connection's transaction open for the server's life,
    and every CHECKPOINT after a write was refused (found by a restart in tests/e2e)."""
    token_id, secret = create_token(con, "local", "write")
    assert verify_token(con, secret) is not None  # on the long-lived connection
    other = con.cursor()
    mark_used(other, token_id)  # a write from a request's thread
    other.execute("CHECKPOINT")  # refused ("other write transactions active") before
    other.close()
