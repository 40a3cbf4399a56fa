"""The errors of every Upbit call (REST and WebSocket), and the scrubbing of credentials out of
their messages."""

from __future__ import annotations

import re
from datetime import datetime

# Credentials a configured URL may carry: `scheme://user:password@host` and secret-looking
# query parameters. Messages quote URLs and the exceptions of the libraries below (which quote
# them too), so every message is scrubbed once, where UpbitError is made.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_URL_SECRET = re.compile(
    r"(?P<key>[?&](?:access_key|secret_key|api_key|apikey|key|token|secret|password|auth)=)"
    r"[^&#\s]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the credentials of any URL in it replaced by `***`."""
    return _URL_SECRET.sub(r"\g<key>***", _URL_USERINFO.sub(r"\g<scheme>***@", text))


class UpbitError(Exception):
    """An Upbit call failed; the message says what, for which market, and what to do. The
    message never holds credentials of the configured URLs (see `redact`)."""

    def __init__(self, message: str, *, market: str | None = None, status: int | None = None):
        super().__init__(redact(message))
        self.market = market
        self.status = status


class UpbitUnreachable(UpbitError):
    """Upbit could not be reached at all (refused, DNS, timeout, socket dropped): use replay."""


class UpbitBlocked(UpbitError):
    """HTTP 418: Upbit blocks this IP after continued rate-limit abuse; fetching must stop."""

    def __init__(
        self,
        message: str,
        *,
        market: str | None = None,
        seconds: float | None = None,
        until: datetime | None = None,
    ) -> None:
        super().__init__(message, market=market, status=418)
        self.seconds = seconds
        self.until = until


class UpbitRefused(UpbitError):
    """The WebSocket answered a subscription with an error frame (its `name`, e.g. NO_TICKET)."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name
