"""The API's description: the OpenAPI 3.1 document (`GET /api/v1/openapi.json`) and its
offline HTML rendering (`GET /api/v1/docs`), both built from the operations and the route
table, so they cannot drift from what the server answers.

Schemas are pydantic's (`models_json_schema`: one pass over every model, so two models of
one name in different modules get distinct component names), requests in validation mode,
responses in serialization mode. Every operation declares the bearer security scheme (ping
alone is open), its scope as `x-scope`, and its error answers as the `Error` schema.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from engine.server.routes import Route
from engine.service.core import OPERATIONS, Operation

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "Malformed JSON or a bad value",
    "401": "No API token, or an unknown or revoked one",
    "403": "The token's scope does not allow this operation (read token, write operation)",
    "404": "No such route, operation or object",
    "409": "The store's state forbids it",
    "413": "The request body is over the server's limit",
    "422": "The request does not match its schema (the field and why in `error`)",
    "429": "Busy: retry later",
    "500": "A bug: the server log has the traceback",
}


class Error(BaseModel):
    """Every failure's answer: what is wrong (and where), and how to fix it."""

    error: str
    hint: str | None = None


class Ping(BaseModel):
    ok: Literal[True] = True
    version: str


class Health(BaseModel):
    ok: bool = Field(description="Whether the store answers.")
    version: str
    pid: int
    uptime_s: float
    store: str = Field(description="'ok', or why the store does not answer.")
    operations: int = Field(description="How many operations the server offers.")


@cache
def _body_model(model: type[BaseModel], taken: frozenset[str]) -> type[BaseModel]:
    """`model` without the fields a route's path fills (the JSON body's schema)."""
    fields: Any = {
        name: (info.annotation, info)
        for name, info in model.model_fields.items()
        if name not in taken
    }
    return create_model(  # type: ignore[no-any-return,call-overload]
        f"{model.__name__}Body",
        __config__=ConfigDict(extra="forbid"),
        __doc__=model.__doc__,
        **fields,
    )


def _op_id(method: str, path: str) -> str:
    return f"{method.lower()}_" + re.sub(r"\W+", "_", path.removeprefix("/api/v1/")).strip("_")


def _responses(status: int, ref: dict[str, Any], codes: list[str]) -> dict[str, Any]:
    answers: dict[str, Any] = {
        str(status): {"description": "Success", "content": {"application/json": {"schema": ref}}}
    }
    for code in codes:
        answers[code] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
    return answers


def document(routes: list[Route], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation (`POST /api/v1/ops/{name}`), every route
    in `routes`, and the server's own paths."""
    ops: list[Operation] = sorted(OPERATIONS.values(), key=lambda o: o.name)
    bodies = {
        id(r): _body_model(r.operation.request, frozenset(r.field_of(p) for p in r.params))
        for r in routes
        if r.has_body
    }
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Error, "serialization")]
    wanted += [(Ping, "serialization"), (Health, "serialization")]
    for op in ops:
        wanted += [(op.request, "validation"), (op.response, "serialization")]
    wanted += [(m, "validation") for m in bodies.values()]
    wanted += [(r.response, "serialization") for r in routes if r.response is not None]
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return refs[(model, mode)]

    def component(model: type[BaseModel]) -> dict[str, Any]:
        name = ref(model, "validation")["$ref"].rsplit("/", 1)[-1]
        return schemas[name]  # type: ignore[no-any-return]

    codes = ["400", "401", "403", "404", "409", "413", "422", "429", "500"]
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths[f"/api/v1/ops/{op.name}"] = {
            "post": {
                "operationId": op.name,
                "summary": op.summary,
                "tags": ["operations"],
                "x-scope": op.scope,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref(op.request, "validation")}},
                },
                "responses": _responses(200, ref(op.response, "serialization"), codes),
            }
        }
    for route in routes:
        op = route.operation
        request = component(op.request)
        props, required = request.get("properties", {}), set(request.get("required", []))
        params = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {k: v for k, v in props[route.field_of(p)].items() if k != "default"},
            }
            for p in route.params
        ]
        entry: dict[str, Any] = {
            "operationId": _op_id(route.method, route.path),
            "summary": route.summary or op.summary,
            "tags": [route.path.removeprefix("/api/v1/").split("/")[0]],
            "x-scope": op.scope,
            "x-operation": op.name,
        }
        if route.has_body:
            entry["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": ref(bodies[id(route)], "validation")}},
            }
        else:
            taken = {route.field_of(p) for p in route.params}
            params += [
                {"name": name, "in": "query", "required": name in required, "schema": schema}
                for name, schema in props.items()
                if name not in taken
            ]
        if params:
            entry["parameters"] = params
        answer = ref(route.response or op.response, "serialization")
        entry["responses"] = _responses(route.status, answer, codes)
        if route.accepted is not None:  # a job that had not ended when the request stopped waiting
            entry["responses"]["202"] = {
                "description": "Accepted: the job runs on; follow its status_url",
                "content": {"application/json": {"schema": answer}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = entry
    paths["/api/v1/ping"] = {
        "get": {
            "operationId": "ping",
            "summary": "Whether the server answers (no token needed)",
            "tags": ["server"],
            "security": [],
            "responses": _responses(200, ref(Ping, "serialization"), []),
        }
    }
    paths["/api/v1/health"] = {
        "get": {
            "operationId": "health",
            "summary": "The server's health: store reachable, uptime, pid",
            "tags": ["server"],
            "x-scope": "read",
            "responses": {
                **_responses(200, ref(Health, "serialization"), ["401"]),
                "503": {
                    "description": "The store does not answer",
                    "content": {"application/json": {"schema": ref(Health, "serialization")}},
                },
            },
        }
    }
    paths["/api/v1/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["server"],
            "x-scope": "read",
            "responses": _responses(200, {"type": "object"}, ["401"]),
        }
    }
    paths["/api/v1/docs"] = {
        "get": {
            "operationId": "docs",
            "summary": "This document as an HTML page",
            "tags": ["server"],
            "x-scope": "read",
            "responses": {
                "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                **{k: v for k, v in _responses(200, {}, ["401"]).items() if k != "200"},
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "upquant API",
            "version": version,
            "description": "The upquant server: every operation of the Workstation facade, and"
            " the ML-model routes. Errors answer {error, hint}. Scopes: a read token may call"
            " read operations only.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _schema_html(schema: Any) -> str:
    text = html.escape(json.dumps(schema, indent=2))
    # a reference links to its component below
    return re.sub(
        r"&quot;#/components/schemas/([\w.-]+)&quot;",
        r'&quot;<a href="#schema-\1">#/components/schemas/\1</a>&quot;',
        text,
    )


def docs_page(doc: dict[str, Any]) -> str:
    """`doc` as one self-contained HTML page (no scripts, no CDN: offline machines)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(doc['info']['title'])}</title><style>",
        "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}",
        "pre{background:#f4f4f4;padding:.5em;overflow:auto;max-height:30em}",
        ".m{font-weight:bold;font-family:monospace}.s{color:#a50}",
        "</style></head><body>",
        f"<h1>{html.escape(doc['info']['title'])} {html.escape(doc['info']['version'])}</h1>",
        f"<p>{html.escape(doc['info']['description'])}</p>",
        "<p>Every path but ping needs <code>Authorization: Bearer &lt;token&gt;</code>. The"
        + " machine-readable form is <a href='openapi.json'>openapi.json</a>.</p>",
        "<h2>Paths</h2><ul>",
    ]
    entries = [(p, m, e) for p, item in doc["paths"].items() for m, e in item.items()]
    for path, method, entry in entries:
        anchor = html.escape(entry["operationId"])
        parts.append(
            f"<li><a href='#{anchor}'><span class='m'>{method.upper()}</span>"
            f" {html.escape(path)}</a>: {html.escape(entry['summary'])}</li>"
        )
    parts.append("</ul>")
    for path, method, entry in entries:
        scope = html.escape(entry.get("x-scope", "none (open)"))
        anchor = html.escape(entry["operationId"])
        parts += [
            f"<h3 id='{anchor}'><span class='m'>{method.upper()}</span> {html.escape(path)}</h3>",
            f"<p>{html.escape(entry['summary'])}. Scope: <span class='s'>{scope}</span></p>",
        ]
        if entry.get("parameters"):
            parts.append(f"<p>Parameters:</p><pre>{_schema_html(entry['parameters'])}</pre>")
        if "requestBody" in entry:
            body = entry["requestBody"]["content"]["application/json"]["schema"]
            parts.append(f"<p>Request body:</p><pre>{_schema_html(body)}</pre>")
        answers = {code: a.get("content", {}) for code, a in entry["responses"].items()}
        shown = {code: next(iter(c.values()))["schema"] for code, c in answers.items() if c}
        parts.append(f"<p>Responses:</p><pre>{_schema_html(shown)}</pre>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(
            f"<h3 id='schema-{html.escape(name)}'>{html.escape(name)}</h3>"
            f"<pre>{_schema_html(schema)}</pre>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
