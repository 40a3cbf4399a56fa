"""The HTTP transport of the Workstation facade: a face talking to a running `upquant serve`.

`HttpWorkstation(url, token)` offers every operation in `engine.service.OPERATIONS` as a
method of the same name and signature (request model in, response model out), each one
`POST /api/v1/ops/{name}`. It is synchronous and uses the standard library's `http.client`
over one keep-alive connection, so a command routed through the server stays as quick to
start as one that is not (no aiohttp, no DuckDB imported). An error answer raises
`RemoteError` (message, hint, status), which the CLI reports exactly like the same failure
in process: `error: ...`, `hint: ...`, exit 1.
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from engine.service import OPERATIONS

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import BaseModel

    from engine.service.core import Operation

# errors that mean the server closed an idle keep-alive connection before reading the
# request: the request never ran, so it is sent once more on a new connection
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class RemoteError(Exception):
    """The server refused or failed an operation: its `{error, hint}` and HTTP status."""

    def __init__(self, message: str, hint: str | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.hint = hint
        self.status = status


class ServerUnreachable(RemoteError):
    """No server answers at the URL (it stopped, or server.json is stale)."""


class HttpWorkstation:
    """Every facade operation, answered by the server at `url` (see the module docstring).
    Safe to share between threads (one request at a time); close it, or use it as a
    context manager, when done."""

    def __init__(self, url: str, token: str, *, timeout: float = 600.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server URL {url!r} is not http://HOST:PORT")
        self.url = url.rstrip("/")
        self.token = token  # the bearer token (the events WebSocket needs it too)
        self._host, self._port = parts.hostname, parts.port or 80
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # whether the open connection has carried a request already
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[[BaseModel], BaseModel]:
        op = OPERATIONS.get(name)
        if op is None:
            raise AttributeError(f"{type(self).__name__} has no operation {name!r}")

        def method(request: BaseModel) -> BaseModel:
            return self.call(op, request)

        method.__name__ = method.__qualname__ = name
        method.__doc__ = op.summary
        return method

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *OPERATIONS})

    def call(self, op: Operation, request: BaseModel) -> BaseModel:
        """Run `op` on the server with `request`; its response model, or RemoteError."""
        if not isinstance(request, op.request):
            raise TypeError(
                f"{op.name} takes a {op.request.__name__}, not a {type(request).__name__}"
            )
        status, body = self._post(f"/api/v1/ops/{op.name}", request.model_dump_json().encode())
        if status != 200:
            raise self._failure(status, body)
        return op.response.model_validate_json(body)

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            for attempt in (1, 2):
                reused = self._used
                try:
                    if self._conn is None:
                        self._conn = http.client.HTTPConnection(
                            self._host, self._port, timeout=self._timeout
                        )
                        self._used = False
                    self._conn.request("POST", path, body=body, headers=self._headers)
                    response = self._conn.getresponse()
                    data = response.read()
                    self._used = True
                    if response.will_close:
                        self._drop()
                    return response.status, data
                except _STALE:
                    self._drop()
                    if attempt == 2 or not reused:
                        raise self._unreachable() from None
                except OSError:  # refused, unreachable, timed out
                    self._drop()
                    raise self._unreachable() from None
        raise AssertionError("unreachable")

    def _unreachable(self) -> ServerUnreachable:
        return ServerUnreachable(
            f"the upquant server at {self.url} is not answering",
            "check it with `upquant server status`; UPQUANT_SERVER=off runs commands in"
            " process when no server owns the store",
        )

    def _failure(self, status: int, body: bytes) -> RemoteError:
        try:
            answer: Any = json.loads(body)
            return RemoteError(str(answer["error"]), answer.get("hint"), status)
        except (ValueError, TypeError, KeyError):
            text = body.decode(errors="replace").strip()[:200]
            return RemoteError(f"the server at {self.url} answered {status}: {text}", None, status)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._used = False

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()



def server_client() -> HttpWorkstation | None:
    """The client of the server that owns this home's store (`server.json` naming a live
    process, with the local token beside it), or None when none runs."""
    from engine.server.lifecycle import read_token, running_server, token_path

    info = running_server()
    if info is None:
        return None
    token = read_token()
    if token is None:
        raise RemoteError(
            f"the upquant server at {info.url} owns the store, but its token file"
            f" {token_path()} is missing or unreadable",
            "run the command as the user who started `upquant serve`, or restart the server"
            " (it writes the token file on start)",
        )
    return HttpWorkstation(info.url, token)
