"""Model-operation settings and drift through every face: the facade operations in process
(partial updates, defaults, refusals that name the field), the REST routes over real HTTP on
127.0.0.1 (GET/PUT ops-settings, 422 and 403, GET drift, POST feature-drift on a real XGBoost
model trained on real candles), and `upquant models settings / drift` as a user runs them."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from engine.server.app import create_app
from engine.service import ServiceError, Workstation, status_of
from engine.service.monitoring import (
    DriftRequest,
    FeatureDriftRequest,
    OpsSettingsRequest,
    OpsSettingsSetRequest,
)
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from store.drift import insert_drift_event
from store.tokens import create_token
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant_many


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xgb@1 of KRW-BTC 1m (3000 real candles, 10 trees) and two drift events of it."""
    home = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
        train_model(
            con, "xgboost", "KRW-BTC", "1", name="xgb", params={"n_estimators": 10, "device": "cpu"}
        )
        for minute, stream in ((1, "correctness"), (2, "pnl")):
            insert_drift_event(
                con,
                ts=datetime(2025, 1, 1, 0, minute, tzinfo=UTC),
                market="KRW-BTC",
                unit="1",
                model_id=1,
                stream=stream,
                detector="adwin",
                before_mean=0.6,
                after_mean=0.4,
                observations=300,
                detail=f"{stream} fell",
            )
        con.close()
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    monkeypatch.setenv("UPQUANT_SERVER", "off")
    return copy


@pytest.fixture
def ws(home: Path) -> Iterator[Workstation]:
    with Workstation() as workstation:
        yield workstation


def test_settings_round_trip_in_process(ws: Workstation) -> None:
    shown = ws.ops_settings(OpsSettingsRequest(market="KRW-BTC"))
    assert not shown.stored and shown.settings == shown.defaults
    assert shown.settings.max_age_hours is None and shown.settings.ood_max_share == 0.25
    changed = ws.ops_settings_set(
        OpsSettingsSetRequest(
            market="KRW-BTC",
            unit="1",
            max_age_hours=48,
            schedule="6h",
            auto_promote=True,
            min_trades=50,
            dm_level=0.01,
        )
    )
    assert changed.stored and changed.settings.max_age_hours == 48
    assert (changed.settings.schedule, changed.settings.auto_promote) == ("6h", True)
    assert (changed.settings.gate.min_trades, changed.settings.gate.dm_level) == (50, 0.01)
    assert changed.settings.gate.min_resolved == changed.defaults.gate.min_resolved
    assert ws.ops_settings(OpsSettingsRequest(market="KRW-BTC", unit="1")) == changed
    # a partial update keeps the rest; no_max_age / no_schedule remove them
    again = ws.ops_settings_set(OpsSettingsSetRequest(market="KRW-BTC", ood_max_share=0.5))
    assert (again.settings.ood_max_share, again.settings.max_age_hours) == (0.5, 48)
    assert again.settings.gate.min_trades == 50
    cleared = ws.ops_settings_set(
        OpsSettingsSetRequest(market="KRW-BTC", no_max_age=True, no_schedule=True)
    )
    assert (cleared.settings.max_age_hours, cleared.settings.schedule) == (None, None)
    assert cleared.settings.auto_promote and cleared.settings.ood_max_share == 0.5
    # other market/units keep the defaults
    assert not ws.ops_settings(OpsSettingsRequest(market="KRW-BTC", unit="5")).stored
    assert not ws.ops_settings(OpsSettingsRequest(market="KRW-ETH")).stored


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ood_max_share", 1.5),
        ("ood_max_share", 0),
        ("max_age_hours", -1),
        ("max_age_hours", float("inf")),
        ("schedule", "hourly"),
        ("schedule", "0h"),
        ("min_trades", 2),
        ("dm_level", 1.0),
        ("dsr_level", 0),
        ("drawdown_margin", -0.1),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        OpsSettingsSetRequest.model_validate({"market": "KRW-BTC", field: value})
    assert refused.value.errors()[0]["loc"] == (field,)


def test_bad_markets_units_and_contradictions(ws: Workstation) -> None:
    for request in (
        OpsSettingsRequest(market="krw-btc"),
        OpsSettingsRequest(market="KRW-BTC", unit="7"),
    ):
        with pytest.raises(ValueError) as bad:
            ws.ops_settings(request)
        assert status_of(bad.value) == 400
    with pytest.raises(ValidationError, match="max_age_hours or no_max_age"):
        OpsSettingsSetRequest(market="KRW-BTC", max_age_hours=5, no_max_age=True)
    with pytest.raises(ValidationError, match="extra"):
        OpsSettingsSetRequest.model_validate({"market": "KRW-BTC", "max_age": 5})
    assert not ws.ops_settings(OpsSettingsRequest(market="KRW-BTC")).stored


def test_drift_events_and_feature_drift_in_process(ws: Workstation) -> None:
    listed = ws.drift_events(DriftRequest(market="KRW-BTC"))
    assert [(e.stream, e.model) for e in listed.events] == [
        ("pnl", "xgb@1"),
        ("correctness", "xgb@1"),
    ]
    assert listed.feature_drift == []
    assert len(ws.drift_events(DriftRequest(market="KRW-BTC", limit=1)).events) == 1
    assert ws.drift_events(DriftRequest(market="KRW-ETH")).events == []
    with pytest.raises(ServiceError, match="is a model of KRW-BTC unit 1"):
        ws.drift_events(DriftRequest(market="KRW-ETH", model="xgb@1"))

    computed = ws.feature_drift(FeatureDriftRequest(model="xgb@champion", last=500))
    assert computed.model == "xgb@1" and computed.rows == 500
    assert len(computed.features) == 39 and computed.reference_rows > 1000
    assert computed.flagged == [f.feature for f in computed.features if f.psi > 0.2]
    assert all(f.ks_p_value is not None and 0 <= f.ks <= 1 for f in computed.features)
    assert computed.train_from < computed.train_to < computed.ts
    shown = ws.drift_events(DriftRequest(market="KRW-BTC", model="1"))
    [latest] = shown.feature_drift
    assert (latest.model, latest.ts, latest.flagged) == ("xgb@1", computed.ts, computed.flagged)
    assert [(f.feature, f.psi) for f in latest.features] == [  # in the model's column order
        (f.feature, f.psi) for f in computed.features
    ]


# --- REST --------------------------------------------------------------------------------------
@pytest.fixture
async def api(home: Path) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    con = connect()
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    client = TestClient(TestServer(create_app(Workstation(con)), host="127.0.0.1"))
    await client.start_server()
    yield client, tokens
    await client.close()
    con.close()


async def test_settings_and_drift_over_http(api) -> None:
    client, tokens = api

    async def call(method: str, path: str, scope: str = "write", **kwargs) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {tokens[scope]}"}
        async with client.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    settings = "/api/v1/markets/KRW-BTC/ops-settings"
    status, answer = await call("GET", settings, "read", params={"unit": "1"})
    assert status == 200 and answer["stored"] is False and answer["settings"]["ood_gate"]
    status, answer = await call("PUT", settings, "read", json={"max_age_hours": 12})
    assert status == 403 and "write" in answer["hint"]
    status, answer = await call(
        "PUT",
        settings,
        params={"unit": "1"},
        json={"max_age_hours": 12, "schedule": "daily", "min_trades": 40},
    )
    assert status == 200 and answer["stored"]
    assert (answer["settings"]["max_age_hours"], answer["settings"]["schedule"]) == (12, "daily")
    assert answer["settings"]["gate"]["min_trades"] == 40
    status, answer = await call("GET", settings, "read")
    assert status == 200 and answer["settings"]["max_age_hours"] == 12
    for body, field in (
        ({"ood_max_share": 2}, "ood_max_share"),
        ({"schedule": "hourly"}, "schedule"),
        ({"min_trades": "many"}, "min_trades"),
        ({"max_age": 3}, "max_age"),
    ):
        status, answer = await call("PUT", settings, json=body)
        assert status == 422 and field in answer["error"], (body, answer)
    status, answer = await call("GET", "/api/v1/markets/krw-btc/ops-settings", "read")
    assert status == 400 and "krw-btc" in answer["error"]
    status, answer = await call("GET", settings, "read", params={"unit": "7"})
    assert status == 400 and "unit" in answer["error"]
    status, answer = await call("GET", settings, "read")
    assert answer["settings"]["schedule"] == "daily"  # the refusals changed nothing

    status, answer = await call(
        "POST", "/api/v1/ml-models/xgb@1/feature-drift", "read", json={"last": 200}
    )
    assert status == 403
    status, answer = await call("POST", "/api/v1/ml-models/xgb@1/feature-drift", json={"last": 200})
    assert status == 200 and answer["rows"] == 200 and len(answer["features"]) == 39
    status, answer = await call("POST", "/api/v1/ml-models/xgb@1/feature-drift", json={"last": 10})
    assert status == 422 and "last" in answer["error"]
    status, answer = await call("POST", "/api/v1/ml-models/nope/feature-drift", json={})
    assert status == 404
    status, answer = await call(
        "GET", "/api/v1/markets/KRW-BTC/drift", "read", params={"unit": "1", "limit": "5"}
    )
    assert status == 200 and [e["stream"] for e in answer["events"]] == ["pnl", "correctness"]
    assert [d["model"] for d in answer["feature_drift"]] == ["xgb@1"]


# --- CLI ---------------------------------------------------------------------------------------
@pytest.mark.slow  # seven `upquant` processes
def test_cli_settings_and_drift(home: Path) -> None:
    shown, changed, cleared, bad_share, bad_schedule, drift, listed = upquant_many(home, [
        ["models", "settings", "KRW-BTC", "--unit", "1"],
        ["models", "settings", "KRW-BTC", "--max-age", "24", "--schedule", "weekly",
         "--auto-promote", "--ood-max-share", "0.3", "--json"],
        ["models", "settings", "KRW-BTC", "--no-max-age", "--no-auto-promote", "--json"],
        ["models", "settings", "KRW-BTC", "--ood-max-share", "1.5"],
        ["models", "settings", "KRW-BTC", "--schedule", "hourly"],
        ["models", "drift", "KRW-BTC", "--unit", "1"],
        ["models", "drift", "KRW-BTC", "--json"],
    ])  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "(defaults)" in shown.stdout and "OOD max share" in shown.stdout
    assert changed.returncode == 0, changed.stderr
    answer = json.loads(changed.stdout)["settings"]
    assert (
        answer["max_age_hours"],
        answer["schedule"],
        answer["auto_promote"],
        answer["ood_max_share"],
    ) == (24, "weekly", True, 0.3)
    after = json.loads(cleared.stdout)["settings"]
    assert (after["max_age_hours"], after["auto_promote"], after["schedule"]) == (
        None,
        False,
        "weekly",
    )
    assert bad_share.returncode != 0 and "--ood-max-share" in bad_share.stderr
    assert "hint:" in bad_share.stderr
    assert bad_schedule.returncode != 0 and "'hourly'" in bad_schedule.stderr
    assert drift.returncode == 0, drift.stderr
    assert "correctness fell" in drift.stdout and "pnl" in drift.stdout
    assert [e["stream"] for e in json.loads(listed.stdout)["events"]] == ["pnl", "correctness"]
