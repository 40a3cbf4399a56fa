"""API tokens of the server (`api_tokens`): created, verified, listed and revoked.

A token is a random secret (`upq_` + 32 random bytes, URL-safe) shown once, when created; the
store keeps only its sha256, so a copy of the store file grants no access. Verifying hashes the
secret offered, looks the hash up, and compares it in constant time. A token has a scope:
`read` may only call operations that change nothing, `write` may call every operation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

import duckdb

Scope = Literal["read", "write"]
SCOPES: tuple[str, ...] = get_args(Scope)
PREFIX = "upq_"


@dataclass(frozen=True)
class TokenRecord:
    """A token's row: everything but its secret, which the store never had."""

    id: int
    name: str
    scope: Scope
    created: datetime
    last_used: datetime | None
    revoked: datetime | None


_COLUMNS = "id, name, scope, created, last_used, revoked"


def secret_hash(secret: str) -> str:
    """The hex sha256 the store keeps of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scope(scope: str) -> Scope:
    if scope not in SCOPES:
        raise ValueError(f"token scope {scope!r} is not one of {', '.join(SCOPES)}")
    return scope  # type: ignore[return-value]


def create_token(con: duckdb.DuckDBPyConnection, name: str, scope: str) -> tuple[int, str]:
    """A new token `name` with `scope`: (its id, its secret). The secret is returned only
    here; it cannot be read back later."""
    check_scope(scope)
    if not name.strip():
        raise ValueError("a token needs a name (who or what uses it)")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = con.execute(
        "INSERT INTO api_tokens (name, scope, sha256) VALUES (?, ?, ?) RETURNING id",
        [name.strip(), scope, secret_hash(secret)],
    ).fetchall()[0]
    return int(row[0]), secret


def verify_token(con: duckdb.DuckDBPyConnection, secret: str) -> TokenRecord | None:
    """The live (not revoked) token whose secret this is, or None."""
    digest = secret_hash(secret)
    # fetchall, never fetchone: a result left unread keeps the connection's transaction
    # open, and a long-lived connection (the server's) then blocks every CHECKPOINT (the WAL
    # grows for the server's whole life, `store check` fails)
    rows = con.execute(
        f"SELECT {_COLUMNS}, sha256 FROM api_tokens WHERE sha256 = ?", [digest]
    ).fetchall()
    row = rows[0] if rows else None
    # the lookup is by hash; the constant-time compare guards against a store whose index
    # would answer a near match (and costs nothing)
    if row is None or not hmac.compare_digest(row[-1], digest) or row[5] is not None:
        return None
    return TokenRecord(*row[:-1])


def mark_used(con: duckdb.DuckDBPyConnection, token_id: int) -> None:
    """Stamp a token's last use (the server does so at most once a minute per token)."""
    con.execute(
        "UPDATE api_tokens SET last_used = ? WHERE id = ?", [datetime.now(UTC), token_id]
    )


def list_tokens(con: duckdb.DuckDBPyConnection) -> list[TokenRecord]:
    """Every token, revoked ones included, oldest first."""
    rows = con.execute(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY id").fetchall()
    return [TokenRecord(*row) for row in rows]


def revoke_token(con: duckdb.DuckDBPyConnection, token_id: int) -> TokenRecord:
    """Revoke token `token_id` (KeyError when there is none); revoking twice keeps the first
    stamp."""
    rows = con.execute(
        f"UPDATE api_tokens SET revoked = coalesce(revoked, ?) WHERE id = ? RETURNING {_COLUMNS}",
        [datetime.now(UTC), token_id],
    ).fetchall()
    if not rows:
        raise KeyError(f"no API token with id {token_id}")
    return TokenRecord(*rows[0])
