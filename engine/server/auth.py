"""Who may call the server: bearer tokens checked against the store (`store.tokens`).

Every route but `GET /api/v1/ping` needs `Authorization: Bearer <secret>`. A verified token
is cached in memory by the sha256 of its secret for `ttl` seconds, so a busy client costs one
store lookup per `ttl`, not one per request; a revoked token is therefore refused within
`ttl` (10 s). The cache is keyed by the hash, never the secret, and compared in constant
time. Each lookup in the store stamps the token's `last_used`.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import TYPE_CHECKING

import duckdb

from engine.service.core import ServiceError
from store.tokens import TokenRecord, mark_used, secret_hash, verify_token

if TYPE_CHECKING:
    from engine.service import Workstation

TOKEN_HINT = (
    "send 'Authorization: Bearer <token>'; the server's write token is in"
    " $UPQUANT_HOME/api-token, `upquant token create` makes another"
)


class Unauthorized(ServiceError):
    """No token, or one the store does not know (or revoked)."""

    status = 401


class Forbidden(ServiceError):
    """A valid token whose scope does not allow the operation."""

    status = 403


def bearer(header: str | None) -> str:
    """The secret of an `Authorization: Bearer <secret>` header (Unauthorized otherwise)."""
    scheme, _, secret = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("no API token in the request", TOKEN_HINT)
    return secret.strip()


class Authenticator:
    """Verifies secrets against the Workstation's store, with a short-lived cache."""

    def __init__(self, workstation: Workstation, ttl: float = 10.0) -> None:
        self._ws = workstation
        self._ttl = ttl
        self._cache: dict[str, tuple[str, TokenRecord, float]] = {}
        self._lock = threading.Lock()

    def cached(self, secret: str) -> TokenRecord | None:
        """The token of `secret` if verified within `ttl` (no store access: safe on the
        event loop); None means "ask the store" (`verify`)."""
        digest = secret_hash(secret)
        hit = self._cache.get(digest)
        if hit is None or not hmac.compare_digest(hit[0], digest) or hit[2] < time.monotonic():
            return None
        return hit[1]

    def verify(self, secret: str) -> TokenRecord:
        """The live token of `secret`, from the store (blocking: run it on a worker thread);
        Unauthorized when there is none."""
        con = self._ws.con()
        token = verify_token(con, secret)
        if token is None:
            raise Unauthorized("the API token is not valid (unknown or revoked)", TOKEN_HINT)
        try:
            mark_used(con, token.id)
        except duckdb.TransactionException:
            # requests verified at the same moment on other threads stamp the same row, and
            # DuckDB refuses all but one ("Conflict on update"): the stamp is best-effort,
            # one of them stands; the request must not fail for it
            pass
        with self._lock:
            self._cache[secret_hash(secret)] = (
                secret_hash(secret), token, time.monotonic() + self._ttl
            )
        return token

    def forget(self) -> None:
        """Drop every cached token (the next request of each is checked in the store)."""
        with self._lock:
            self._cache.clear()
