"""The prediction routes over real HTTP on 127.0.0.1 (aiohttp's test server) with a real
XGBoost model trained on real candles: answers, batch = per market, JSON errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.server.predict_routes import add_predict_routes
from engine.service import Workstation
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from store.registry import ModelRecord
from tests.conftest import shared_candles


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, ModelRecord, pd.DataFrame]]:
    home: Path = tmp_path_factory.mktemp("routes")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        btc = shared_candles("KRW-BTC_1m.csv", 3000)
        upsert_candles(con, btc)
        upsert_candles(con, shared_candles("KRW-ETH_1m.csv", 3000, market="KRW-ETH"))
        params = {"n_estimators": 20, "device": "cpu"}
        record = train_model(con, "xgboost", "KRW-BTC", "1", params=params).model
        yield con, record, btc
        con.close()


@pytest.fixture
async def client(store) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    app = web.Application()
    add_predict_routes(app, Workstation(store[0]))
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


async def test_predict_answers_the_decision_and_caches_it(client, store) -> None:  # type: ignore[no-untyped-def]
    _, record, btc = store
    response = await client.post(
        f"/api/v1/ml-models/{record.id}/predict", json={"market": "KRW-BTC"}
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["model"] == record.ref and body["market"] == "KRW-BTC" and body["unit"] == "1"
    assert pd.Timestamp(body["ts"]) == btc["ts"].iloc[-1] and body["fallback"] is None
    assert set(body["probabilities"]) == {"sell", "hold", "buy"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["action"] in {"sell", "hold", "buy"} and body["latency_ms"] > 0
    again = await (await client.post(f"/api/v1/ml-models/{record.ref}/predict", json={})).json()
    assert again["cached"] and again["probabilities"] == body["probabilities"]

    past = btc["ts"].iloc[1000]
    at = await client.post(
        f"/api/v1/ml-models/{record.name}@champion/predict", json={"ts": past.isoformat()}
    )
    assert at.status == 200 and pd.Timestamp((await at.json())["ts"]) == past


async def test_batch_predict_equals_predict_per_market_and_over_a_range(client, store) -> None:  # type: ignore[no-untyped-def]
    _, record, btc = store
    ts = btc["ts"].iloc[2400].isoformat()
    url = f"/api/v1/ml-models/{record.id}"
    batch = await client.post(
        f"{url}/batch-predict", json={"markets": ["KRW-ETH", "KRW-BTC"], "ts": ts}
    )
    assert batch.status == 200, await batch.text()
    body = await batch.json()
    assert body["rows"] == 2 and [p["market"] for p in body["predictions"]] == [
        "KRW-ETH",
        "KRW-BTC",
    ]
    for got in body["predictions"]:
        alone = await (
            await client.post(f"{url}/predict", json={"market": got["market"], "ts": ts})
        ).json()
        assert alone["ts"] == got["ts"] and alone["action"] == got["action"]
        for name, value in got["probabilities"].items():
            assert alone["probabilities"][name] == pytest.approx(value, abs=1e-6)

    start, end = btc["ts"].iloc[2000].isoformat(), btc["ts"].iloc[2030].isoformat()
    ranged = await (
        await client.post(
            f"{url}/batch-predict", json={"market": "KRW-BTC", "start": start, "end": end}
        )
    ).json()
    assert ranged["rows"] == 30 and pd.Timestamp(ranged["predictions"][0]["ts"]) == pd.Timestamp(
        start
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("no-such-model/predict", {}, 404, "no model 'no-such-model'"),
        ("1/predict", {"unit": "60"}, 400, "trained on unit 1"),
        ("1/predict", {"market": "KRW-DOGE"}, 400, "no KRW-DOGE unit 1 candles"),
        ("1/predict", {"threshold": 2}, 422, "threshold"),
        ("1/predict", {"colour": "red"}, 422, "colour"),
        ("1/predict", {"model": "2"}, 400, "differs"),
        ("1/batch-predict", {"markets": ["KRW-BTC"], "start": "2025-09-01"}, 422, "not both"),
        ("1/batch-predict", {"markets": []}, 422, "markets"),
    ],
)
async def test_errors_are_json_with_the_right_status(
    client, store, path, body, status, message
) -> None:  # type: ignore[no-untyped-def]
    response = await client.post(f"/api/v1/ml-models/{path}", json=body)
    answer = await response.json()
    assert response.status == status and message in answer["error"] and "hint" in answer
    assert "Traceback" not in await response.text()


async def test_a_body_that_is_not_a_json_object_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    not_json = await client.post("/api/v1/ml-models/1/predict", data=b"{oops")
    assert not_json.status == 400 and "not JSON" in (await not_json.json())["error"]
    a_list = await client.post("/api/v1/ml-models/1/predict", json=[1])
    assert a_list.status == 400 and "JSON object" in (await a_list.json())["error"]


async def test_the_server_answers_a_repeated_predict_from_memory_until_a_write(store) -> None:  # type: ignore[no-untyped-def]
    """Through `create_app` (auth, the op route and the REST route): a repeated predict is
    answered from the predictor's memory, identical to the first; a candle written through
    the API's owner makes the next answer read the new candle."""
    from engine.server.app import create_app
    from store.tokens import create_token

    con, record, btc = store
    upsert_candles(con, btc.iloc[:-1].assign(market="KRW-SOL"))
    secret = create_token(con, "memory-test", "read")[1]
    headers = {"Authorization": f"Bearer {secret}"}
    ws = Workstation(con)
    async with TestClient(TestServer(create_app(ws), host="127.0.0.1")) as http:
        ask = {"model": f"{record.name}@champion", "market": "KRW-SOL"}
        answers = []
        for path in ("/api/v1/ops/predict", "/api/v1/ops/predict",
                     f"/api/v1/ml-models/{record.name}@champion/predict"):
            body = {k: v for k, v in ask.items() if "ml-models" not in path or k != "model"}
            response = await http.post(path, json=body, headers=headers)
            assert response.status == 200, await response.text()
            answers.append(await response.json())
        assert not answers[0]["cached"] and answers[1]["cached"] and answers[2]["cached"]
        for again in answers[1:]:
            assert {**again, "latency_ms": 0, "cached": False} == {**answers[0], "latency_ms": 0}
        assert pd.Timestamp(answers[0]["ts"]) == btc["ts"].iloc[-2]

        upsert_candles(con, btc.iloc[-1:].assign(market="KRW-SOL"))  # the next candle closes
        response = await http.post("/api/v1/ops/predict", json=ask, headers=headers)
        after = await response.json()
        assert pd.Timestamp(after["ts"]) == btc["ts"].iloc[-1] and not after["cached"]
