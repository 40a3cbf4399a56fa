"""The ML-model registry routes over real HTTP on 127.0.0.1 (aiohttp's test server, the
server's own app) with real XGBoost models trained on real candles: every route's answer,
model references in the path, 404/409/403/422 and JSON errors."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import Workstation
from store.db import connect
from store.tokens import create_token
from tests.engine.service.test_registry_ops import NAME, train_store

BASE = "/api/v1/ml-models"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("trained")
    train_store(home)
    return home


class Api:
    """A client holding a read and a write token."""

    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    async def call(
        self, method: str, path: str, scope: str = "write", **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"}
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            text = await response.text()
            assert "Traceback" not in text
            return response.status, await response.json()


@pytest.fixture
async def api(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    con = connect()
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    client = TestClient(TestServer(create_app(Workstation(con)), host="127.0.0.1"))
    await client.start_server()
    yield Api(client, tokens)
    await client.close()
    con.close()


def at(ref: str, tail: str = "") -> str:
    return f"{BASE}/{quote(ref, safe='')}{tail}"


async def test_list_filters_and_pages(api: Api) -> None:
    status, body = await api.call("GET", BASE, "read")
    assert status == 200 and body["total"] == 3
    assert [m["ref"] for m in body["items"]] == [f"{NAME}@1", f"{NAME}@2", "eth@1"]
    status, body = await api.call(
        "GET", BASE, "read", params={"market": "KRW-BTC", "status": "champion", "kind": "xgboost"}
    )
    assert status == 200 and [m["ref"] for m in body["items"]] == [f"{NAME}@1"]
    status, body = await api.call("GET", BASE, "read", params={"limit": "1", "offset": "2"})
    assert [m["ref"] for m in body["items"]] == ["eth@1"] and body["total"] == 3
    for bad in ({"limit": "0"}, {"limit": "many"}, {"offset": "-1"}):
        status, body = await api.call("GET", BASE, "read", params=bad)
        assert status == 422 and set(body) == {"error", "hint"}, bad


async def test_show_by_every_reference_and_404(api: Api) -> None:
    for ref, expected in [("1", f"{NAME}@1"), (NAME, f"{NAME}@2"), (f"{NAME}@2", f"{NAME}@2"),
                          (f"{NAME}@champion", f"{NAME}@1")]:
        status, body = await api.call("GET", at(ref), "read")
        assert status == 200 and body["ref"] == expected, ref
    assert body["integrity"] == "verified" and body["tags"]["test_from"]
    status, body = await api.call("GET", at("nosuch"), "read")
    assert status == 404 and "no model 'nosuch'" in body["error"] and body["hint"]
    for tail in ("", "/metrics", "/backtest"):
        status, _ = await api.call("GET", at("nosuch", tail), "read")
        assert status == 404, tail


async def test_put_moves_the_alias_and_edits(api: Api) -> None:
    status, body = await api.call("PUT", at(f"{NAME}@2"), "read", json={"alias": "champion"})
    assert status == 403 and "write" in body["hint"]
    status, body = await api.call("PUT", at(f"{NAME}@2"), json={"alias": "champion"})
    assert status == 200 and body["status"] == "champion"
    assert body["moved"]["previous"] == f"{NAME}@1" and body["moved"]["previous_status"] == "retired"
    status, body = await api.call("GET", at(f"{NAME}@champion"), "read")
    assert body["ref"] == f"{NAME}@2"
    status, body = await api.call("PUT", at(f"{NAME}@champion"), json={"rollback": True})
    assert status == 200 and body["status"] == "rolled_back" and body["moved"]["model"] == f"{NAME}@1"
    status, body = await api.call(
        "PUT", at(f"{NAME}@2"), json={"description": "seed 2", "tags": {"desk": "a"}}
    )
    assert status == 200 and body["description"] == "seed 2" and body["tags"]["desk"] == "a"
    status, body = await api.call("PUT", at(f"{NAME}@1"), json={"status": "retired"})
    assert status == 409 and "champion" in body["error"]
    status, body = await api.call("PUT", at(f"{NAME}@1"), json={"alias": "best"})
    assert status == 422


async def test_delete_refuses_the_champion_with_409(api: Api) -> None:
    status, body = await api.call("DELETE", at(f"{NAME}@champion"), "read")
    assert status == 403
    status, body = await api.call("DELETE", at(f"{NAME}@champion"))
    assert status == 409 and body["hint"] == "promote another model or roll back first"
    status, body = await api.call("DELETE", at(f"{NAME}@2"))
    assert status == 200 and body == {"id": 2, "ref": f"{NAME}@2", "artifact_removed": True}
    status, _ = await api.call("GET", at(f"{NAME}@2"), "read")
    assert status == 404


async def test_post_registers_an_artifact_already_in_the_store(api: Api) -> None:
    _, shown = await api.call("GET", at("eth@1"), "read")
    body = {
        key: shown[key]
        for key in ("kind", "market", "unit", "sha256", "feature_spec", "label_spec", "params")
    }
    body.update(name="imported", description="from the store")
    status, answer = await api.call("POST", BASE, "read", json=body)
    assert status == 403
    status, answer = await api.call("POST", BASE, json=body)
    assert status == 201, answer
    assert answer["ref"] == "imported@1" and answer["status"] == "candidate"
    assert answer["sha256"] == shown["sha256"] and answer["description"] == "from the store"
    status, answer = await api.call("POST", BASE, json={**body, "sha256": "0" * 64})
    assert status == 404 and "nothing is uploaded" in answer["hint"]
    status, answer = await api.call("POST", BASE, json={**body, "artifact": "/etc/passwd"})
    assert status == 422  # no field but the registry's: no path, no upload
    status, answer = await api.call("POST", BASE, json={**body, "sha256": "not-a-sha"})
    assert status == 422


async def test_metrics_evaluate_and_backtest(api: Api) -> None:
    status, body = await api.call("GET", at(f"{NAME}@champion", "/metrics"), "read")
    assert status == 200 and body["model"] == f"{NAME}@1"
    assert "accuracy" in body["test"] and body["validation"] and "live" in body
    status, body = await api.call("POST", at(f"{NAME}@1", "/evaluate"), "read", json={})
    assert status == 200 and body["mode"] == "held_out"
    assert body["held_out"]["rows"] > 0 and "accuracy" in body["held_out"]["metrics"]["held_out"]
    _, shown = await api.call("GET", at(f"{NAME}@1"), "read")
    train_from = shown["tags"]["train_from"]
    status, body = await api.call(
        "POST", at(f"{NAME}@1", "/evaluate"), "read",
        json={"start": shown["tags"]["test_from"], "end": shown["tags"]["test_to"]},
    )
    assert status == 200 and body["held_out"]["overlaps_training"] is False
    status, body = await api.call(
        "POST", at(f"{NAME}@1", "/evaluate"), "read", json={"start": train_from}
    )
    assert status == 200 and body["held_out"]["overlaps_training"] is True
    status, body = await api.call(  # a walk-forward is a job: a write token, 200 once done
        "POST", at(f"{NAME}@1", "/evaluate"), json={"walk_forward": True, "folds": 2, "wait": 600}
    )
    assert status == 200 and body["mode"] == "walk_forward"
    assert len(body["walk_forward"]["folds"]) == 2
    status, body = await api.call(
        "GET", at(f"{NAME}@champion", "/backtest"), "read",
        params={"fee": "0.001", "slippage": "1", "threshold": "0.4"},
    )
    assert status == 200 and body["strategy"] == f"{NAME}@1" and body["fee"] == 0.001
    assert {"buy-and-hold", "no-trade", f"{NAME}@1"} <= set(body["results"])
    assert set(body["trades"]) == set(body["results"])
    trades = body["trades"]["buy-and-hold"]
    assert len(trades) == 1 and {"entry_ts", "exit_ts", "return", "pnl"} <= set(trades[0])
    for bad in ({"threshold": "2"}, {"threshold": "abc"}, {"fee": "x"}, {"start": "yesterday"}):
        status, body = await api.call("GET", at(f"{NAME}@1", "/backtest"), "read", params=bad)
        assert status == 422 and set(body) == {"error", "hint"}, bad
