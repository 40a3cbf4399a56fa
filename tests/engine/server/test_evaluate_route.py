"""The walk-forward evaluate route over real HTTP on 127.0.0.1 (aiohttp's test server, the
server's own app) with real XGBoost models trained on real candles: a quick one answers 200
with its result, `wait: 0` answers 202 and a status URL followed until the stored result
(equal to the in-thread computation), DELETE cancels, a restarted server reads the stored
result, 404 for an unknown run, 403 for a read token."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import Workstation
from engine.service.evaluation import walk_forward_result
from engine.training.evaluation import walk_forward_evaluate
from store.db import connect
from store.tokens import create_token
from tests.engine.server import test_ml_models
from tests.engine.server.test_ml_models import NAME, Api, at

pytestmark = pytest.mark.slow

trained = test_ml_models.trained  # two xgb versions on KRW-BTC 1m, eth on KRW-ETH


@asynccontextmanager
async def serving(tokens: dict[str, str] | None = None) -> AsyncIterator[Api]:
    """The server's app on the store at $UPQUANT_HOME; stopping it stops its jobs."""
    con = connect()
    if tokens is None:
        tokens = {s: create_token(con, f"{s}-test", s)[1] for s in ("read", "write")}
    ws = Workstation(con)
    client = TestClient(TestServer(create_app(ws), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, tokens)
    finally:
        await client.close()
        ws.close()  # as the server's stop does: its jobs end, their runs interrupted
        con.close()


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    return home


async def until_ended(api: Api, url: str) -> dict[str, Any]:
    for _ in range(4000):
        status, body = await api.call("GET", url, "read")
        assert status == 200, body
        if body["status"] not in ("queued", "running"):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never ended")


def expected(ref: str, folds: int) -> dict[str, Any]:
    con = connect()
    try:
        return walk_forward_result(walk_forward_evaluate(con, ref, folds)).model_dump(mode="json")
    finally:
        con.close()


async def test_a_quick_one_answers_200_and_a_long_one_202_then_its_status_url(home: Path) -> None:
    url = at(f"{NAME}@1", "/evaluate")
    async with serving() as api:
        status, quick = await api.call("POST", url, json={"walk_forward": True, "folds": 3, "wait": 300})
        assert status == 200 and quick["mode"] == "walk_forward" and quick["status"] == "finished"
        assert len(quick["walk_forward"]["folds"]) == 3 and quick["run"] == 1
        status, started = await api.call("POST", url, json={"walk_forward": True, "folds": 3, "wait": 0})
        assert status == 202 and started["run"] == 2 and started["walk_forward"] is None
        assert started["status"] in ("queued", "running")
        assert started["status_url"] == "/api/v1/evaluation-runs/2"
        done = await until_ended(api, started["status_url"])
        assert done["status"] == "finished" and done["progress"] == 1.0, done
        assert (done["folds_done"], done["folds_total"], done["model"]) == (3, 3, f"{NAME}@1")
        tokens = api.tokens
    want = expected(f"{NAME}@1", 3)
    assert done["result"] == want and quick["walk_forward"] == want  # same folds, same numbers
    async with serving(tokens) as restarted:  # a new server on the same store
        status, stored = await restarted.call("GET", "/api/v1/evaluation-runs/2", "read")
        assert status == 200 and stored["status"] == "finished" and stored["result"] == want


async def test_cancel_unknown_runs_and_scopes(home: Path) -> None:
    url = at(f"{NAME}@1", "/evaluate")
    async with serving() as api:
        status, started = await api.call("POST", url, json={"walk_forward": True, "folds": 3, "wait": 0})
        assert status == 202
        run_url = started["status_url"]
        status, body = await api.call("DELETE", run_url, "read")
        assert status == 403 and set(body) == {"error", "hint"}
        status, cancelled = await api.call("DELETE", run_url)
        assert status == 200 and cancelled["status"] == "interrupted", cancelled
        assert cancelled["error"] == "cancelled" and cancelled["result"] is None
        status, shown = await api.call("GET", run_url, "read")
        assert status == 200 and shown["status"] == "interrupted"
        for method in ("GET", "DELETE"):
            status, body = await api.call(method, "/api/v1/evaluation-runs/99")
            assert status == 404 and "no evaluation run 99" in body["error"], body
        status, body = await api.call("GET", "/api/v1/evaluation-runs/x", "read")
        assert status == 422
        # a read token evaluates a held-out range, but cannot start a walk-forward job
        status, body = await api.call("POST", url, "read", json={})
        assert status == 200 and body["mode"] == "held_out" and body["run"] is None
        for path in (url, "/api/v1/ops/evaluate"):
            extra = {} if path == url else {"model": f"{NAME}@1"}
            status, body = await api.call(
                "POST", path, "read", json={"walk_forward": True, "wait": 0, **extra}
            )
            assert status == 403 and "write-scope token" in body["hint"], body
        status, body = await api.call("GET", "/api/v1/evaluation-runs/2", "read")
        assert status == 404  # the refused ones started nothing
        status, doc = await api.call("GET", "/api/v1/openapi.json", "read")
        answers = doc["paths"]["/api/v1/ml-models/{id}/evaluate"]["post"]["responses"]
        assert {"200", "202", "403"} <= set(answers)
        assert set(doc["paths"]["/api/v1/evaluation-runs/{run}"]) == {"get", "delete"}
