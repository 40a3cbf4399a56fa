"""The REST route table: which HTTP method and path is which facade operation.

Every operation is reachable as `POST /api/v1/ops/{name}`; a `Route` gives one a REST face
as well. A route names its operation only: the scope it needs, its request and response
models and its summary are the operation's. Path parameters, query parameters and the JSON
body are merged into one dict and validated by the operation's request model, so a bad value
anywhere answers 422 with the field's name (a name given twice with different values: 400).
`fields` renames a path parameter to the request field it fills (`{id}` -> `model`).

A module of this package declares its routes at import time, one line each; `create_app`
imports every module of the package, so declaring is all it takes::

    # engine/server/ml_models.py
    from engine.server.routes import Route, add_routes

    add_routes([
        Route("GET", "/api/v1/ml-models", op="model_list"),
        Route("GET", "/api/v1/ml-models/{id}", op="model_show", fields={"id": "model"}),
        Route("POST", "/api/v1/ml-models/{id}/train", op="train", fields={"id": "model"},
              status=202),
    ])

`status` is the success status (202 for a job started); `accepted` says when an answer is
202 instead (a job that did not end while the request waited); `transform` turns the
operation's response into what the route answers (documented with `response` when its shape
differs).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from engine.service.core import OPERATIONS, Operation

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Route:
    """One REST path that calls the facade operation `op` (see the module docstring)."""

    method: str
    path: str
    op: str
    fields: dict[str, str] = field(default_factory=dict)
    status: int = 200
    accepted: Callable[[Any], bool] | None = None
    transform: Callable[[BaseModel], Any] | None = None
    response: type[BaseModel] | None = None
    summary: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"route {self.path}: method {self.method!r} is not one of {METHODS}")
        if not self.path.startswith("/api/v1/"):
            raise ValueError(f"route {self.path}: paths start with /api/v1/")
        unknown = set(self.fields) - set(self.params)
        if unknown:
            raise ValueError(f"route {self.path}: fields names no path parameter {unknown}")

    @property
    def params(self) -> list[str]:
        """The path's parameters, in order."""
        return _PARAM.findall(self.path)

    def field_of(self, param: str) -> str:
        """The request field path parameter `param` fills."""
        return self.fields.get(param, param)

    @property
    def operation(self) -> Operation:
        try:
            return OPERATIONS[self.op]
        except KeyError:
            raise KeyError(f"route {self.method} {self.path}: no operation {self.op!r}") from None

    @property
    def has_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH")


ROUTES: list[Route] = []


def add_routes(routes: Iterable[Route]) -> None:
    """Declare `routes` (refusing a method and path declared twice)."""
    taken = {(r.method, r.path) for r in ROUTES}
    for route in routes:
        if (route.method, route.path) in taken:
            raise ValueError(f"route {route.method} {route.path} is declared twice")
        taken.add((route.method, route.path))
        ROUTES.append(route)


def takes_list(model: type[BaseModel], name: str) -> bool:
    """Whether request field `name` holds a list (a query parameter given once or more)."""
    info = model.model_fields.get(name)
    if info is None:
        return False
    kinds = [info.annotation, *typing.get_args(info.annotation)]
    return any(typing.get_origin(kind) in (list, tuple, set) or kind in (list, tuple, set) for kind in kinds)
