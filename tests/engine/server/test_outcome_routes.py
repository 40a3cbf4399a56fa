"""The live prediction log's routes over real HTTP on 127.0.0.1 (the server's own app), on a
real XGBoost model's live rows: the predictions route (newest first, filters, 404), resolve
(write scope: a read token gets 403), and `metrics` answering the live metrics."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import Workstation
from store.db import connect
from store.tokens import create_token
from tests.engine.server.test_ml_models import Api
from tests.engine.service.test_outcome_ops import LIVE_ROWS, NAME, live_store

MODEL = f"/api/v1/ml-models/{quote(NAME, safe='')}"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("live")
    live_store(home)
    return home


@pytest.fixture
async def api(stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    home = tmp_path / "home"
    shutil.copytree(stored, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    con = connect()
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    client = TestClient(TestServer(create_app(Workstation(con)), host="127.0.0.1"))
    await client.start_server()
    yield Api(client, tokens)
    await client.close()
    con.close()


async def test_predictions_resolve_and_live_metrics(api: Api) -> None:
    status, body = await api.call("GET", f"{MODEL}/predictions", "read", params={"limit": "3"})
    assert status == 200 and body["model"] == f"{NAME}@1" and len(body["rows"]) == 3
    assert body["rows"][0]["ts"] > body["rows"][1]["ts"] > body["rows"][2]["ts"]
    assert body["rows"][0]["label_resolved"] is None and len(body["rows"][0]["probs"]) == 3
    status, body = await api.call("POST", "/api/v1/predictions/resolve", "read", json={})
    assert status == 403
    status, body = await api.call("POST", "/api/v1/predictions/resolve", json={})
    assert status == 200 and body["resolved"] == LIVE_ROWS - 10 and body["pending"] == 10
    status, body = await api.call(
        "GET", f"{MODEL}/predictions", "read", params={"resolved": "true", "limit": "1000"}
    )
    assert status == 200 and len(body["rows"]) == LIVE_ROWS - 10
    assert all(r["label_resolved"] in ("sell", "hold", "buy") for r in body["rows"])
    status, body = await api.call("GET", f"{MODEL}/metrics", "read", params={"last": "50"})
    assert status == 200 and body["test"]  # stored metrics beside the live ones
    live = body["live"]
    assert live["n_predictions"] == 50 and live["n_resolved"] == 40 and live["n_pending"] == 10
    assert sum(b["count"] for b in live["calibration"]) == live["n_scored"] == 40
    status, body = await api.call("GET", "/api/v1/ml-models/nope/predictions", "read")
    assert status == 404 and "nope" in body["error"]
    status, body = await api.call("GET", f"{MODEL}/predictions", "read", params={"limit": "0"})
    assert status == 422
