"""What every operation of the Workstation facade is made of, whatever carries it.

An operation is one method of `Workstation` taking one pydantic request and returning one
pydantic response, registered with `@operation(scope)`. The registry (`OPERATIONS`) is what
the transports are built from: the server exposes each as `POST /api/v1/ops/{name}` (and its
OpenAPI entry), the HTTP client in `tui/` calls each by name, and the CLI calls the same
method on whichever transport `tui.cli.options.workstation()` hands it. One definition of an
operation's inputs, outputs and required scope, three faces.

Errors an operation reports to its caller are `ServiceError`s (message, hint, HTTP status):
the CLI prints them as `error: ...` / `hint: ...` with exit 1, the API answers
`{"error", "hint"}` with the status. Errors raised below (ValueError, KeyError, the engine's
and store's own) are mapped by `status_of`, so the engine does not need to know about HTTP.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

Scope = Literal["read", "write"]


class Request(BaseModel):
    """An operation's input: unknown fields are refused (a typo is an error, not a default)."""

    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    """An operation's output; its JSON form is what `--json` prints and the API answers."""


class ServiceError(Exception):
    """A failure the caller can fix: what is wrong, where, and how to fix it (`hint`)."""

    status = 400

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """The request is valid but the store's state forbids it (delete the champion, ...)."""

    status = 409


class Busy(ServiceError):
    """The resource is taken (a job queue full, a device busy): retry later."""

    status = 429


def status_of(exc: BaseException) -> int:
    """The HTTP status a failure of an operation answers with (500 for a bug)."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, (KeyError, LookupError)):
        return 404
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, ValueError) or module in {"engine", "store", "models"}:
        return 400
    return 500


def message_of(exc: BaseException) -> str:
    """The one-line message of a failure (a KeyError's text without its quotes)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


@dataclass(frozen=True)
class Operation:
    """One facade operation: its name (the method's), request/response models, scope."""

    name: str
    request: type[Request]
    response: type[BaseModel]
    scope: Scope
    summary: str


OPERATIONS: dict[str, Operation] = {}

F = TypeVar("F", bound=Callable[..., Any])


def operation(scope: Scope) -> Callable[[F], F]:
    """Register a Workstation method `(self, request: XRequest) -> XResponse` as an
    operation that needs `scope` ("read" changes nothing; "write" may)."""

    def register(method: F) -> F:
        hints = typing.get_type_hints(method)
        params = list(inspect.signature(method).parameters)
        if len(params) != 2 or "return" not in hints:
            raise TypeError(f"operation {method.__name__} must be (self, request) -> response")
        request, response = hints[params[1]], hints["return"]
        if not (isinstance(request, type) and issubclass(request, Request)):
            raise TypeError(f"operation {method.__name__}: its request must be a Request")
        if not (isinstance(response, type) and issubclass(response, BaseModel)):
            raise TypeError(f"operation {method.__name__}: its response must be a model")
        doc = inspect.getdoc(method) or method.__name__
        OPERATIONS[method.__name__] = Operation(
            method.__name__, request, response, scope, doc.splitlines()[0]
        )
        return method

    return register
