"""Alias moves and their history through every face, on real XGBoost models trained on real
candles: the facade operations in process, the REST routes over real HTTP on 127.0.0.1
(PUT moves, 403 for a read token, GET the history), and the `upquant models alias / unalias /
history` commands as a user runs them (table and --json)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.server.app import create_app
from engine.service import Conflict, ServiceError, Workstation, status_of
from engine.service.registry import (
    AliasHistoryRequest,
    ModelAliasRequest,
    ModelListRequest,
    ModelRefRequest,
    ModelShowRequest,
    ModelUnaliasRequest,
    ModelUpdateRequest,
    RollbackRequest,
)
from store.db import connect
from store.tokens import create_token
from tests.engine.service.test_registry_ops import NAME, train_store
from tests.tui.test_cli import upquant_many


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xgb@1 (champion) and xgb@2 of KRW-BTC 1m, eth@1 (champion) of KRW-ETH."""
    home = tmp_path_factory.mktemp("trained")
    train_store(home)
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the trained store per test (the registry's paths are store-relative)."""
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    monkeypatch.setenv("UPQUANT_SERVER", "off")
    return copy


@pytest.fixture
def ws(home: Path) -> Iterator[Workstation]:
    with Workstation() as workstation:
        yield workstation


def moves(ws: Workstation) -> list[tuple[str, str | None, str | None, str, str | None]]:
    """The KRW-BTC history, oldest first: (alias, from, to, by, reason)."""
    history = ws.alias_history(AliasHistoryRequest(market="KRW-BTC"))
    return [(e.alias, e.previous, e.model, e.by, e.reason) for e in reversed(history.events)]


def test_alias_unalias_and_the_history_in_process(ws: Workstation) -> None:
    moved = ws.model_alias(ModelAliasRequest(model=f"{NAME}@2", alias="challenger", reason="seed 2"))
    assert (moved.model, moved.alias, moved.previous) == (f"{NAME}@2", "challenger", None)
    assert [e.alias for e in moved.events] == ["challenger"]
    again = ws.model_alias(ModelAliasRequest(model=f"{NAME}@2", alias="challenger"))
    assert again.events == []  # held already: nothing appended
    shown = ws.model_show(ModelShowRequest(model=f"{NAME}@challenger", verify=False))
    assert shown.ref == f"{NAME}@2" and shown.aliases == ["challenger"]
    listed = ws.model_list(ModelListRequest(status="challenger"))
    assert [m.ref for m in listed.items] == [f"{NAME}@2"]
    assert {m.ref: m.aliases for m in ws.model_list(ModelListRequest()).items} == {
        f"{NAME}@1": ["champion"], f"{NAME}@2": ["challenger"], "eth@1": ["champion"]
    }
    # promote is a move of the champion alias: the challenger alias is released first
    promoted = ws.model_alias(ModelAliasRequest(model=f"{NAME}@2", alias="champion", reason="won"))
    assert promoted.previous == f"{NAME}@1" and promoted.previous_status == "retired"
    assert [(e.alias, e.previous, e.model) for e in promoted.events] == [
        ("challenger", f"{NAME}@2", None), ("champion", f"{NAME}@1", f"{NAME}@2")
    ]
    ws.model_alias(ModelAliasRequest(model=f"{NAME}@1", alias="shadow"))
    ws.model_unalias(ModelUnaliasRequest(model=f"{NAME}@1", alias="shadow", reason="enough"))
    back = ws.model_rollback(RollbackRequest(market="KRW-BTC", unit="1", reason="live loss"))
    assert (back.model, back.previous, back.previous_status) == (f"{NAME}@1", f"{NAME}@2", "rolled_back")
    assert [(e.alias, e.previous, e.model, e.reason) for e in back.events] == [
        ("champion", f"{NAME}@2", f"{NAME}@1", "live loss")
    ]
    assert moves(ws) == [
        ("champion", None, f"{NAME}@1", "user", "registered as champion"),
        ("challenger", None, f"{NAME}@2", "user", "seed 2"),
        ("challenger", f"{NAME}@2", None, "user", "moved to champion"),
        ("champion", f"{NAME}@1", f"{NAME}@2", "user", "won"),
        ("shadow", None, f"{NAME}@1", "user", None),
        ("shadow", f"{NAME}@1", None, "user", "enough"),
        ("champion", f"{NAME}@2", f"{NAME}@1", "user", "live loss"),
    ]
    history = ws.alias_history(AliasHistoryRequest(market="KRW-BTC", unit="1", limit=2))
    assert [(h.alias, h.model) for h in history.holders] == [("champion", f"{NAME}@1")]
    assert len(history.events) == 2
    eth = ws.alias_history(AliasHistoryRequest(market="KRW-ETH"))
    assert [(e.alias, e.model) for e in eth.events] == [("champion", "eth@1")]


def test_refusals_answer_409_and_change_nothing(ws: Workstation) -> None:
    before = moves(ws)
    with pytest.raises(Conflict, match="is the champion") as champion:
        ws.model_alias(ModelAliasRequest(model=f"{NAME}@champion", alias="challenger"))
    assert champion.value.hint == "promote another model or roll back first"
    with pytest.raises(Conflict, match="holds no shadow") as unheld:
        ws.model_unalias(ModelUnaliasRequest(model=f"{NAME}@2", alias="shadow"))
    assert "models history KRW-BTC" in (unheld.value.hint or "")
    with pytest.raises(ServiceError, match="one of alias, unalias or rollback"):
        ws.model_update(ModelUpdateRequest(model=f"{NAME}@2", alias="shadow", unalias="shadow"))
    with pytest.raises(ValueError):  # champion is not released (the request model says so)
        ModelUnaliasRequest.model_validate({"model": "1", "alias": "champion"})
    # a challenger's model is deleted: its alias is released, with an event
    ws.model_alias(ModelAliasRequest(model=f"{NAME}@2", alias="challenger"))
    ws.model_delete(ModelRefRequest(model=f"{NAME}@2"))
    assert moves(ws) == [
        *before,
        ("challenger", None, f"{NAME}@2", "user", None),
        ("challenger", f"{NAME}@2", None, "user", f"{NAME}@2 deleted"),
    ]
    with pytest.raises(Conflict) as no_champion:
        ws.model_delete(ModelRefRequest(model=f"{NAME}@champion"))
    assert status_of(no_champion.value) == 409


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


async def test_put_moves_aliases_and_get_reads_the_history(api) -> None:
    client, tokens = api

    async def call(method: str, path: str, scope: str = "write", **kwargs) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {tokens[scope]}"}
        async with client.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    model = f"/api/v1/ml-models/{quote(f'{NAME}@2', safe='')}"
    for body in ({"alias": "challenger"}, {"unalias": "challenger"}, {"alias": "champion"}):
        status, answer = await call("PUT", model, "read", json=body)
        assert status == 403 and "write" in answer["hint"], body
    status, answer = await call("POST", "/api/v1/ops/model_alias", "read",
                                json={"model": "2", "alias": "shadow"})
    assert status == 403
    status, answer = await call("GET", "/api/v1/markets/KRW-BTC/aliases", "read", params={"unit": "1"})
    assert status == 200 and len(answer["events"]) == 1  # the read tokens moved nothing

    status, answer = await call("PUT", model, json={"alias": "challenger", "reason": "r1"})
    assert status == 200 and answer["aliases"] == ["challenger"]
    assert answer["moved"]["events"][0]["reason"] == "r1"
    status, answer = await call("PUT", model, json={"unalias": "challenger"})
    assert status == 200 and answer["aliases"] == [] and answer["moved"]["events"][0]["model"] is None
    status, answer = await call("PUT", model, json={"unalias": "challenger"})
    assert status == 409 and set(answer) == {"error", "hint"}
    status, answer = await call("PUT", model, json={"alias": "shadow"})
    status, answer = await call("PUT", model, json={"alias": "champion", "reason": "better"})
    assert status == 200 and answer["status"] == "champion" and answer["aliases"] == ["champion"]
    status, answer = await call("PUT", model, json={"alias": "boss"})
    assert status == 422

    status, answer = await call("GET", "/api/v1/markets/KRW-BTC/aliases", "read",
                                params={"unit": "1", "limit": "3"})
    assert status == 200 and answer["market"] == "KRW-BTC"
    assert [(h["alias"], h["model"]) for h in answer["holders"]] == [("champion", f"{NAME}@2")]
    assert [(e["alias"], e["previous"], e["model"], e["reason"]) for e in answer["events"]] == [
        ("champion", f"{NAME}@1", f"{NAME}@2", "better"),
        ("shadow", f"{NAME}@2", None, "moved to champion"),
        ("shadow", None, f"{NAME}@2", None),
    ]
    status, answer = await call("GET", "/api/v1/markets/krw-btc/aliases", "read")
    assert status == 400 and "krw-btc" in answer["error"]


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_alias_unalias_and_history(home: Path) -> None:
    (
        moved, listed, table, promoted, refused, shadowed, released, shown, history, bad,
    ) = upquant_many(home, [
        ["models", "alias", f"{NAME}@2", "challenger", "--reason", "seed 2"],
        ["models", "list", "--json"],
        ["models", "list"],
        ["models", "alias", f"{NAME}@2", "champion", "--json"],
        ["models", "unalias", f"{NAME}@1", "challenger"],
        ["models", "alias", f"{NAME}@1", "shadow"],
        ["models", "unalias", f"{NAME}@1", "shadow", "--reason", "done"],
        ["models", "history", "KRW-BTC", "--unit", "1"],
        ["models", "history", "KRW-BTC", "--json"],
        ["models", "history", "KRW-BTC", "--unit", "7"],
    ])  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == f"{NAME}@2 is now a challenger of KRW-BTC unit 1"
    assert {m["ref"]: m["aliases"] for m in json.loads(listed.stdout)}[f"{NAME}@2"] == [
        "challenger"
    ]
    assert "aliases" in table.stdout and "challenger" in table.stdout
    assert promoted.returncode == 0, promoted.stderr
    answer = json.loads(promoted.stdout)
    assert answer["previous"] == f"{NAME}@1" and len(answer["events"]) == 2
    assert refused.returncode != 0 and refused.stdout == ""
    assert "holds no challenger" in refused.stderr and "hint:" in refused.stderr
    assert shadowed.returncode == 0, shadowed.stderr
    assert released.stdout.strip() == f"{NAME}@1 is no longer a shadow of KRW-BTC unit 1"

    assert shown.returncode == 0, shown.stderr
    for text in ("champion", "challenger", "shadow", "seed 2", "done", "registered as champion"):
        assert text in shown.stdout, text
    history = json.loads(history.stdout)
    assert [(h["alias"], h["model"]) for h in history["holders"]] == [("champion", f"{NAME}@2")]
    assert [(e["alias"], e["by"], e["reason"]) for e in history["events"]][:2] == [
        ("shadow", "user", "done"), ("shadow", "user", None)
    ]
    assert len(history["events"]) == 6
    assert bad.returncode != 0 and "unit '7' is not supported" in bad.stderr
