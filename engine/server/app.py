"""The server's aiohttp application: every facade operation over HTTP, with auth and errors.

`create_app(workstation)` serves:
- `GET /api/v1/ping` (no token), `GET /api/v1/health`, `GET /api/v1/openapi.json`,
  `GET /api/v1/docs`;
- `POST /api/v1/ops/{name}` for every operation in `engine.service.OPERATIONS` (the JSON
  body is the operation's request; the answer is its response);
- every REST route declared with `engine.server.routes` by a module of this package.

An operation blocks (DuckDB, models), so it runs on the app's thread pool, never on the event
loop; each worker thread uses its own cursor of the Workstation's store. Two middlewares wrap
every request: `errors` (any failure answers `{"error", "hint"}` with its status, a bug 500
"internal error" with the traceback in the server log only) and `authenticate` (bearer
tokens, `auth.Authenticator`). The scope check is the operation's: a read token calling a
write operation answers 403.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import pkgutil
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from engine.server import routes as route_table
from engine.server.auth import Authenticator, Forbidden, bearer
from engine.server.events_routes import OPENAPI as EVENTS_PATHS
from engine.server.events_routes import add_events_routes
from engine.server.openapi import Health, Ping, docs_page, document
from engine.server.routes import Route, takes_list
from engine.service.core import OPERATIONS, NotFound, Operation, ServiceError, message_of, status_of
from store.tokens import TokenRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from engine.service import Workstation

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB: a batch-predict of 1000 markets is ~30 kB
OPEN_PATHS = frozenset({"/api/v1/ping"})

WORKSTATION: web.AppKey[Workstation] = web.AppKey("workstation")
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
AUTH = web.AppKey("auth", Authenticator)
META: web.AppKey[dict[str, Any]] = web.AppKey("meta")
TOKEN = web.RequestKey("token", TokenRecord)  # the caller's token

class Unprocessable(ServiceError):
    """The request does not match its operation's schema."""

    status = 422


def version() -> str:
    try:
        return package_version("upquant")
    except PackageNotFoundError:
        return "0+unknown"


def error_response(
    status: int, message: str, hint: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    if status == 401:  # RFC 9110: a 401 names the scheme it wants
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return web.json_response({"error": message, "hint": hint}, status=status, headers=headers)


def _http_error(exc: web.HTTPException, request: web.Request) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) as JSON errors."""
    if exc.status == 404:
        return error_response(
            404, f"no route {request.method} {request.path}", "GET /api/v1/docs lists the routes"
        )
    if exc.status == 405:
        return error_response(
            405,
            f"{request.method} is not allowed on {request.path}",
            "see GET /api/v1/docs",
            {"Allow": exc.headers.get("Allow", "")},
        )
    if exc.status == 413:
        limit = request.app[META]["max_body"]
        return error_response(
            413,
            f"the request body is over the server's limit of {limit:,} bytes",
            "send less per request (e.g. fewer markets per batch-predict)",
        )
    return error_response(exc.status, exc.reason)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure answers JSON `{"error", "hint"}`; a bug never shows its traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(exc, request)
    except Exception as exc:
        status = status_of(exc)
        if status >= 500:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(
                500, "internal error", f"{type(exc).__name__}; the server log has the traceback"
            )
        return error_response(status, message_of(exc), getattr(exc, "hint", None))


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer auth on every path but ping; the caller's token lands in `request[TOKEN]`."""
    if request.path not in OPEN_PATHS:
        secret = bearer(request.headers.get("Authorization"))
        auth = request.app[AUTH]
        token = auth.cached(secret)
        if token is None:
            loop = asyncio.get_running_loop()
            token = await loop.run_in_executor(request.app[EXECUTOR], auth.verify, secret)
        request[TOKEN] = token
    response: web.StreamResponse = await handler(request)
    return response


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request's body ({} when there is none)."""
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge (413)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceError(f"the request body is not JSON: {exc}", "send a JSON object") from None
    if not isinstance(body, dict):
        raise ServiceError(
            f"the request body is a JSON {type(body).__name__}, not an object",
            "send the request's fields as a JSON object",
        )
    return body


def _invalid(exc: ValidationError, model: type[BaseModel]) -> Unprocessable:
    """A pydantic refusal as one line naming each bad field and why."""
    problems = [
        f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    ]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return Unprocessable(
        "; ".join(problems[:3]) + more,
        f"see the {model.__name__} schema in GET /api/v1/openapi.json",
    )


async def call(request: web.Request, op: Operation, payload: dict[str, Any]) -> BaseModel:
    """Run `op` with `payload` for the caller of `request`: scope checked (403), request
    validated (422), the method run on the thread pool (unless the Workstation's `from_memory`
    has the answer without blocking)."""
    token = request[TOKEN]
    if op.scope == "write" and token.scope != "write":
        raise Forbidden(
            f"{op.name} changes the store and token {token.name!r} may only read",
            "use a write-scope token (`upquant token create NAME --scope write`)",
        )
    try:
        parsed = op.request.model_validate(payload)
    except ValidationError as exc:
        raise _invalid(exc, op.request) from None
    if token.scope != "write" and getattr(parsed, "writes", False):  # e.g. a walk-forward job
        raise Forbidden(
            f"this {op.name} changes the store and token {token.name!r} may only read",
            "use a write-scope token (`upquant token create NAME --scope write`)",
        )
    ws = request.app[WORKSTATION]
    ready = getattr(ws, "from_memory", None)  # a repeated predict: answered on the loop
    if op.scope == "read" and ready is not None:
        answer: BaseModel | None = ready(op.name, parsed)
        if answer is not None:
            return answer
    method = getattr(ws, op.name)
    loop = asyncio.get_running_loop()
    result: BaseModel = await loop.run_in_executor(request.app[EXECUTOR], method, parsed)
    return result


def _answer(result: Any, status: int = 200) -> web.Response:
    text = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result)
    return web.Response(text=text, status=status, content_type="application/json")


async def op_handler(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    op = OPERATIONS.get(name)
    if op is None:
        raise NotFound(
            f"no operation {name!r}", "GET /api/v1/openapi.json lists the operations"
        )
    return _answer(await call(request, op, await _body(request)))


def _put(payload: dict[str, Any], name: str, value: Any, where: str) -> None:
    if name in payload and str(payload[name]) != str(value):
        raise ServiceError(
            f"{name} {payload[name]!r} differs from {value!r} in the {where}",
            f"give {name} once",
        )
    payload[name] = value


def route_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of a declared route: path, query and body merged into the request."""
    op = route.operation

    async def handle(request: web.Request) -> web.StreamResponse:
        payload = await _body(request) if route.has_body else {}
        for key in dict.fromkeys(request.query):
            values = request.query.getall(key)
            if len(values) > 1 and not takes_list(op.request, key):
                raise ServiceError(f"query parameter {key} is given {len(values)} times", "give it once")
            _put(payload, key, values if takes_list(op.request, key) else values[0], "query")
        for param in route.params:
            _put(payload, route.field_of(param), request.match_info[param], "path")
        result: Any = await call(request, op, payload)
        status = 202 if route.accepted is not None and route.accepted(result) else route.status
        if route.transform is not None:
            result = route.transform(result)
        return _answer(result, status)

    return handle


def declared_routes() -> list[Route]:
    """Every route the package's modules declare (each module imported once, so its
    `add_routes` runs), plus the prediction routes of `predict_routes.ROUTES`."""
    import engine.server as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    from engine.server.predict_routes import ROUTES as PREDICT

    declared = {(r.method, r.path) for r in route_table.ROUTES}
    # predict_routes declares its routes in its own form (OpRoute); the same table serves them
    extra = [
        Route(r.method, r.path, r.operation, fields=dict(r.path_fields))
        for r in PREDICT
        if (r.method, r.path) not in declared
    ]
    return [*route_table.ROUTES, *extra]


async def ping(request: web.Request) -> web.StreamResponse:
    return _answer(Ping(version=request.app[META]["version"]))


def _store_check(ws: Workstation) -> str:
    try:
        ws.con().execute("SELECT 1").fetchall()
    except Exception as exc:  # noqa: BLE001 (health reports it instead of failing)
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def health(request: web.Request) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    meta = request.app[META]
    store = await loop.run_in_executor(
        request.app[EXECUTOR], partial(_store_check, request.app[WORKSTATION])
    )
    answer = Health(
        ok=store == "ok",
        version=meta["version"],
        pid=os.getpid(),
        uptime_s=round(time.monotonic() - meta["started"], 3),
        store=store,
        operations=len(OPERATIONS),
    )
    return _answer(answer, 200 if answer.ok else 503)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[META]["openapi"], content_type="application/json")


async def docs(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[META]["docs"], content_type="text/html")


def create_app(
    workstation: Workstation, *, max_body: int = MAX_BODY, workers: int = 8
) -> web.Application:
    """The API over `workstation` (whose owner opens and closes it); `max_body` bytes the
    most a request body may carry (413 beyond), `workers` threads running operations."""
    app = web.Application(client_max_size=max_body, middlewares=[errors, authenticate])
    executor = ThreadPoolExecutor(workers, thread_name_prefix="upquant-op")
    routes = declared_routes()
    doc = document(routes, version())
    doc["paths"].update(EVENTS_PATHS)  # the WebSocket is no operation: documented by its module
    app[WORKSTATION] = workstation
    app[EXECUTOR] = executor
    app[AUTH] = Authenticator(workstation)
    app[META] = {
        "version": version(),
        "started": time.monotonic(),
        "max_body": max_body,
        "openapi": json.dumps(doc),
        "docs": docs_page(doc),
    }
    app.router.add_get("/api/v1/ping", ping)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/api/v1/docs", docs)
    app.router.add_post("/api/v1/ops/{name}", op_handler)
    for route in routes:
        app.router.add_route(route.method, route.path, route_handler(route))
    add_events_routes(app)

    async def stop_workers(_app: web.Application) -> None:
        executor.shutdown(wait=True, cancel_futures=True)

    app.on_cleanup.append(stop_workers)
    return app
