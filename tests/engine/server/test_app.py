"""The server's app over real HTTP on 127.0.0.1 (aiohttp's test server) with a real store:
auth and scopes, JSON errors with their statuses, the route table, OpenAPI and docs, and
operations answering what they answer in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.server import routes as route_table
from engine.server.app import AUTH, create_app, declared_routes
from engine.server.routes import Route, add_routes
from engine.service import OPERATIONS, Workstation
from engine.service.data import DataStatusRequest
from store.candles import upsert_candles
from store.tokens import create_token, revoke_token
from tests.conftest import shared_candles

ERROR_KEYS = {"error", "hint"}


@pytest.fixture
def tokens(con) -> dict[str, str]:  # type: ignore[no-untyped-def]
    upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 500))
    upsert_candles(con, shared_candles("KRW-ETH_1m.csv", 300, market="KRW-ETH"))
    return {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}


async def serve(app: web.Application) -> TestClient:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(con, tokens) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    test_client = await serve(create_app(Workstation(con)))
    yield test_client
    await test_client.close()


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def failure(response: Any, status: int) -> dict[str, Any]:
    """The error body of `response`, checked: the status, {error, hint}, no traceback."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == ERROR_KEYS and body["error"]
    assert "Traceback" not in text and 'File "' not in text
    return body  # type: ignore[no-any-return]


async def test_ping_needs_no_token_and_everything_else_does(client, tokens) -> None:  # type: ignore[no-untyped-def]
    ping = await client.get("/api/v1/ping")
    assert ping.status == 200 and (await ping.json())["ok"] is True
    for method, path in [
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/docs"),
        ("POST", "/api/v1/ops/data_status"),
        ("POST", "/api/v1/ml-models/1/predict"),
    ]:
        bare = await client.request(method, path)
        body = await failure(bare, 401)
        assert "no API token" in body["error"] and "api-token" in body["hint"]
        assert bare.headers["WWW-Authenticate"] == "Bearer"
        bad = await client.request(method, path, headers=auth(tokens["write"] + "x"))
        assert "not valid" in (await failure(bad, 401))["error"]
        basic = await client.request(method, path, headers={"Authorization": "Basic abc"})
        await failure(basic, 401)


async def test_a_revoked_token_is_refused(con, tokens) -> None:  # type: ignore[no-untyped-def]
    token_id, secret = create_token(con, "soon-gone", "read")
    app = create_app(Workstation(con))
    client = await serve(app)
    try:
        ok = await client.post("/api/v1/ops/data_status", headers=auth(secret))
        assert ok.status == 200
        revoke_token(con, token_id)
        app[AUTH].forget()  # not waiting out the cache
        await failure(await client.post("/api/v1/ops/data_status", headers=auth(secret)), 401)
    finally:
        await client.close()


async def test_a_read_token_may_read_but_not_write(client, tokens) -> None:  # type: ignore[no-untyped-def]
    read = await client.post("/api/v1/ops/data_status", headers=auth(tokens["read"]))
    assert read.status == 200
    write_ops = [name for name, op in OPERATIONS.items() if op.scope == "write"]
    assert write_ops
    for name in write_ops:
        refused = await client.post(f"/api/v1/ops/{name}", headers=auth(tokens["read"]), json={})
        body = await failure(refused, 403)
        assert name in body["error"] and "write" in body["hint"]
    # with a write token the same call gets past the scope (and fails on its own terms)
    allowed = await client.post(
        "/api/v1/ops/store_predictions", headers=auth(tokens["write"]), json={"model": "nope"}
    )
    assert (await failure(allowed, 404))["error"].startswith("no model 'nope'")


async def test_bad_bodies_answer_400_and_422_with_the_field(client, tokens) -> None:  # type: ignore[no-untyped-def]
    url, headers = "/api/v1/ops/data_status", auth(tokens["read"])
    wrong_type = await failure(await client.post(url, headers=headers, json={"min_gap": "x"}), 422)
    assert wrong_type["error"].startswith("min_gap: Input should be a valid integer")
    assert "DataStatusRequest" in wrong_type["hint"]
    unknown = await failure(await client.post(url, headers=headers, json={"min_gaps": 2}), 422)
    assert unknown["error"] == "min_gaps: Extra inputs are not permitted"
    too_small = await failure(await client.post(url, headers=headers, json={"min_gap": 0}), 422)
    assert too_small["error"].startswith("min_gap: Input should be greater than or equal to 1")
    broken = await failure(await client.post(url, headers=headers, data=b"{min_gap: 2"), 400)
    assert broken["error"].startswith("the request body is not JSON")
    listed = await failure(await client.post(url, headers=headers, json=[1]), 400)
    assert "not an object" in listed["error"]


async def test_an_oversized_body_answers_413(con, tokens) -> None:  # type: ignore[no-untyped-def]
    client = await serve(create_app(Workstation(con), max_body=1000))
    try:
        body = {"model": "x", "markets": ["KRW-BTC"] * 200}
        big = await client.post(
            "/api/v1/ops/batch_predict", headers=auth(tokens["read"]), json=body
        )
        assert "1,000 bytes" in (await failure(big, 413))["error"]
        small = await client.post(
            "/api/v1/ops/data_status", headers=auth(tokens["read"]), json={"min_gap": 3}
        )
        assert small.status == 200
    finally:
        await client.close()


async def test_unknown_operations_and_paths_answer_404_json(client, tokens) -> None:  # type: ignore[no-untyped-def]
    headers = auth(tokens["write"])
    op = await failure(await client.post("/api/v1/ops/data_statuz", headers=headers), 404)
    assert op["error"] == "no operation 'data_statuz'" and "openapi.json" in op["hint"]
    path = await failure(await client.get("/api/v1/nothing-here", headers=headers), 404)
    assert path["error"] == "no route GET /api/v1/nothing-here"
    wrong_method = await client.get("/api/v1/ops/data_status", headers=headers)
    await failure(wrong_method, 405)
    assert wrong_method.headers["Allow"] == "POST"


async def test_a_bug_answers_500_without_its_traceback(con, tokens, caplog) -> None:  # type: ignore[no-untyped-def]
    root = con.cursor()  # the server's own connection, closed under it below
    client = await serve(create_app(Workstation(root)))
    try:
        headers = auth(tokens["read"])
        assert (await client.post("/api/v1/ops/data_status", headers=headers)).status == 200
        root.close()
        body = await failure(await client.post("/api/v1/ops/data_status", headers=headers), 500)
        assert body["error"] == "internal error" and "server log" in body["hint"]
        assert "POST /api/v1/ops/data_status failed" in caplog.text
        assert tokens["read"] not in caplog.text
    finally:
        await client.close()


async def test_health_says_the_store_answers(client, tokens) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/api/v1/health", headers=auth(tokens["read"]))
    body = await response.json()
    assert response.status == 200 and body["ok"] and body["store"] == "ok"
    assert body["pid"] > 0 and body["uptime_s"] >= 0 and body["operations"] == len(OPERATIONS)


async def test_data_status_over_http_equals_in_process(con, client, tokens) -> None:  # type: ignore[no-untyped-def]
    for gap in (1, 2, 5):
        request = DataStatusRequest(min_gap=gap)
        local = Workstation(con).data_status(request).model_dump(mode="json")
        remote = await client.post(
            "/api/v1/ops/data_status", headers=auth(tokens["read"]), json={"min_gap": gap}
        )
        assert remote.status == 200
        assert await remote.json() == local and len(local) == 2


async def test_declared_routes_merge_path_query_and_body(con, tokens, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    declared_routes()  # the package's own routes declared first, in the real table
    monkeypatch.setattr(route_table, "ROUTES", [])
    add_routes([
        Route("GET", "/api/v1/test/status", op="data_status"),
        Route("GET", "/api/v1/test/status/{gap}", op="data_status", fields={"gap": "min_gap"}),
        Route("POST", "/api/v1/test/status", op="data_status", status=202,
              transform=lambda result: {"series": len(result.root)}),  # type: ignore[attr-defined]
    ])
    with pytest.raises(ValueError, match="declared twice"):
        add_routes([Route("GET", "/api/v1/test/status", op="data_status")])
    client = await serve(create_app(Workstation(con)))
    try:
        headers = auth(tokens["read"])
        expected = Workstation(con).data_status(DataStatusRequest(min_gap=3)).model_dump(mode="json")
        by_query = await client.get("/api/v1/test/status?min_gap=3", headers=headers)
        assert by_query.status == 200 and await by_query.json() == expected
        by_path = await client.get("/api/v1/test/status/3", headers=headers)
        assert await by_path.json() == expected
        bad = await failure(await client.get("/api/v1/test/status/zero", headers=headers), 422)
        assert bad["error"].startswith("min_gap: Input should be a valid integer")
        clash = await client.get("/api/v1/test/status/3?min_gap=4", headers=headers)
        assert "differs" in (await failure(clash, 400))["error"]
        twice = await client.get("/api/v1/test/status?min_gap=3&min_gap=3", headers=headers)
        assert "given 2 times" in (await failure(twice, 400))["error"]
        unknown = await client.get("/api/v1/test/status?gap=3", headers=headers)
        assert (await failure(unknown, 422))["error"] == "gap: Extra inputs are not permitted"
        posted = await client.post("/api/v1/test/status", headers=headers, json={"min_gap": 3})
        assert posted.status == 202 and await posted.json() == {"series": 2}
        doc = await (await client.get("/api/v1/openapi.json", headers=headers)).json()
        by_gap = doc["paths"]["/api/v1/test/status/{gap}"]["get"]
        assert [p["name"] for p in by_gap["parameters"]] == ["gap"]
        assert [p["name"] for p in doc["paths"]["/api/v1/test/status"]["get"]["parameters"]] == [
            "min_gap"
        ]
        assert "202" in doc["paths"]["/api/v1/test/status"]["post"]["responses"]
    finally:
        await client.close()


async def test_openapi_is_3_1_and_lists_every_operation_and_route(client, tokens) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/api/v1/openapi.json", headers=auth(tokens["read"]))
    doc = await response.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"]
    paths = doc["paths"]
    for name, op in OPERATIONS.items():
        entry = paths[f"/api/v1/ops/{name}"]["post"]
        assert entry["x-scope"] == op.scope and entry["summary"] == op.summary
        for code in ("200", "400", "401", "403", "404", "409", "413", "422"):
            assert code in entry["responses"]
    assert {"/api/v1/ml-models/{id}/predict", "/api/v1/ml-models/{id}/batch-predict"} <= set(paths)
    predict = paths["/api/v1/ml-models/{id}/predict"]["post"]
    assert predict["parameters"][0]["name"] == "id"
    body = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = doc["components"]["schemas"]
    assert "model" not in schemas[body.rsplit("/", 1)[-1]]["properties"]  # the path gives it
    assert paths["/api/v1/ping"]["get"]["security"] == []
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert set(schemas["Error"]["properties"]) == ERROR_KEYS

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    for ref in refs(doc):  # every reference resolves
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[-1] in schemas


async def test_docs_page_lists_every_path_offline(client, tokens) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/api/v1/docs", headers=auth(tokens["read"]))
    page = await response.text()
    assert response.status == 200 and response.content_type == "text/html"
    for name in OPERATIONS:
        assert f"/api/v1/ops/{name}" in page
    assert "/api/v1/ml-models/{id}/predict" in page and "Scope: <span class='s'>write" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_tests_do_not_leave_routes_declared() -> None:
    assert not any(r.path.startswith("/api/v1/test/") for r in route_table.ROUTES)
    assert Path(route_table.__file__).name == "routes.py"
