"""The training-job routes over real HTTP on 127.0.0.1 (aiohttp's test server, the server's
own app): retrain a registered model's configuration as a job (202, then its status URL until
it is finished, as version 2), its history, a new configuration cancelled by DELETE on its
run, and the JSON errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import Workstation
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from store.tokens import create_token

pytestmark = pytest.mark.slow
BASE = "/api/v1/ml-models"


class Api:
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

    async def until_done(self, url: str) -> dict[str, Any]:
        for _ in range(4000):
            status, body = await self.call("GET", url, "read")
            assert status == 200, body
            if body["status"] not in ("queued", "running"):
                return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"{url} never finished")


@pytest.fixture
async def api(home: Path, btc_1m: pd.DataFrame) -> AsyncIterator[Api]:
    con = connect()
    upsert_candles(con, btc_1m.iloc[:3000])
    train_model(con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 20, "device": "cpu"})
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    ws = Workstation(con)
    client = TestClient(TestServer(create_app(ws), host="127.0.0.1"))
    await client.start_server()
    yield Api(client, tokens)
    await client.close()
    ws.close()  # stops any job left, as the server does on SIGTERM
    con.close()


async def test_retrain_a_model_as_a_job_and_follow_it(api: Api) -> None:
    status, started = await api.call("POST", f"{BASE}/xgboost-KRW-BTC-1/train")
    assert status == 202 and started["run"] == 2 and started["status"] == "running"
    assert started["status_url"] == f"{BASE}/xgboost-KRW-BTC-1/training-status?run=2"
    done = await api.until_done(started["status_url"])
    assert done["status"] == "finished" and done["model"] == "xgboost-KRW-BTC-1@2", done
    status, latest = await api.call("GET", f"{BASE}/xgboost-KRW-BTC-1@2/training-status", "read")
    assert status == 200 and latest["run"] == 2
    status, history = await api.call("GET", f"{BASE}/xgboost-KRW-BTC-1/training-history", "read")
    assert status == 200 and [h["run"] for h in history] == [1, 2]
    assert all(len(h["epochs"]) == 20 for h in history)  # the same configuration again


async def test_a_new_configuration_is_cancelled_by_deleting_its_run(api: Api) -> None:
    body = {"kind": "lstm", "market": "KRW-BTC", "epochs": 30, "device": "cpu", "name": "net"}
    status, started = await api.call("POST", f"{BASE}/xgboost-KRW-BTC-1/train", json=body)
    assert status == 202
    run_url = f"/api/v1/training-runs/{started['run']}"
    status, cancelled = await api.call("DELETE", run_url)
    assert status == 200 and cancelled["status"] == "interrupted", cancelled
    status, shown = await api.call("GET", run_url, "read")
    assert shown["status"] == "interrupted" and shown["error"] == "cancelled"


async def test_errors_answer_json(api: Api) -> None:
    status, body = await api.call("POST", f"{BASE}/no-such-model/train")
    assert status == 404 and body["error"]
    status, body = await api.call("POST", f"{BASE}/xgboost-KRW-BTC-1/train", "read")
    assert status == 403
    status, body = await api.call("GET", "/api/v1/training-runs/99", "read")
    assert status == 404 and "no training run 99" in body["error"]
    status, body = await api.call("POST", f"{BASE}/xgboost-KRW-BTC-1/train", json={"epochs": "x"})
    assert status == 422


async def test_a_diverged_fits_nan_loss_reads_as_null(api: Api) -> None:
    """A NaN or inf loss (a diverged network) is null in a run's status and history, and the
    answer still validates as the HTTP client reads it (it failed on NaN before)."""
    from engine.service.training import TrainHistory, TrainStatus
    from store.registry import log_epoch

    con = connect()
    log_epoch(con, 1, 20, {"loss": float("nan"), "val_loss": float("inf"), "acc": 0.5})
    status, shown = await api.call("GET", "/api/v1/training-runs/1", "read")
    assert status == 200 and shown["latest"]["step"] == 20, shown
    assert shown["latest"]["metrics"] == {"loss": None, "val_loss": None, "acc": 0.5}
    TrainStatus.model_validate(shown)
    status, history = await api.call("GET", f"{BASE}/xgboost-KRW-BTC-1/training-history", "read")
    assert status == 200 and history[0]["epochs"][-1]["metrics"]["loss"] is None
    TrainHistory.model_validate(history)
