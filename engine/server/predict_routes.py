"""The ML-model prediction routes: `POST /api/v1/ml-models/{id}/predict` and
`POST /api/v1/ml-models/{id}/batch-predict`, each one facade operation (`predict`,
`batch_predict`) with the model taken from the path.

`ROUTES` declares them (method, path, operation, which path parameter fills which request
field) for the server's route table; `add_predict_routes` mounts them on an aiohttp app
with `handler`, which validates the body with the operation's request model (422), runs the
operation off the event loop (a worker thread with its own store cursor), and answers the
response model's JSON or `{"error", "hint"}` with the status `status_of` gives. Auth is the
app's middleware, not this module's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from engine.service import OPERATIONS, Workstation, status_of
from engine.service.core import message_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpRoute:
    """A REST route that is one facade operation: the body is its request, path parameters
    fill the request fields named in `path_fields`."""

    method: str
    path: str
    operation: str
    path_fields: dict[str, str] = field(default_factory=dict)


ROUTES: tuple[OpRoute, ...] = (
    OpRoute("POST", "/api/v1/ml-models/{id}/predict", "predict", {"id": "model"}),
    OpRoute("POST", "/api/v1/ml-models/{id}/batch-predict", "batch_predict", {"id": "model"}),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, hint: str | None = None) -> web.Response:
    return web.json_response({"error": message, "hint": hint}, status=status)


def handler(route: OpRoute, ws: Workstation) -> Handler:
    """The aiohttp handler of `route` over the in-process Workstation `ws`."""
    op = OPERATIONS[route.operation]
    method = getattr(ws, op.name)

    async def handle(request: web.Request) -> web.StreamResponse:
        body: Any = {}
        if request.body_exists:
            try:
                body = await request.json()
            except json.JSONDecodeError as exc:
                return error(400, f"the body is not JSON: {exc}", "send a JSON object")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object", f"see {op.request.__name__}")
        for param, name in route.path_fields.items():
            value = request.match_info[param]
            if name in body and str(body[name]) != value:
                return error(
                    400,
                    f"{name} {body[name]!r} in the body differs from {value!r} in the path",
                    f"leave {name} out of the body",
                )
            body[name] = value
        try:
            parsed = op.request.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error(422, f"{where}: {first['msg']}", f"see the {op.request.__name__} schema")
        try:
            result = await asyncio.to_thread(method, parsed)
        except Exception as exc:  # every failure answers JSON, never a traceback
            status = status_of(exc)
            if status >= 500:
                log.exception("%s failed", op.name)
                return error(500, f"{op.name} failed: {type(exc).__name__}", "see the server log")
            return error(status, message_of(exc), getattr(exc, "hint", None))
        return web.json_response(result.model_dump(mode="json"))

    return handle


def add_predict_routes(app: web.Application, ws: Workstation) -> None:
    """Mount ROUTES on `app`, answered by `ws`."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, handler(route, ws))
