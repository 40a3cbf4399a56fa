"""Retraining and online updates through the facade (issue 11 items 5 and 6), on a real
XGBoost champion trained on real candles: a retrain clones the champion's run on the newest
candles as a training job (a worker process) and registers a challenger with who asked and
why, the champion unchanged; one retrain of a model at a time; a failing retrain changes
nothing served and says why; no champion is refused; the scheduler (frozen clock) starts a
retrain when its schedule is due and not again within the period, also on the event loop and
inside a serving server; the online-update operation and the REST routes answer."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.ops.settings import OpsSettings, set_settings
from engine.server.app import create_app
from engine.service import Conflict, ServiceError, Workstation, status_of
from engine.service.retraining import (
    OnlineUpdateRequest,
    RetrainListRequest,
    RetrainRefused,
    RetrainRequest,
    RetrainScheduler,
    RetrainStarted,
)
from engine.service.training import TrainRunRequest, TrainStatus, TrainStatusRequest
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from store.registry import alias_history, champion, get_run, list_models
from store.tokens import create_token
from tests.conftest import shared_candles

pytestmark = pytest.mark.slow

NAME = "xgb"
FIRST = 3000  # candles the champion learned from
MORE = 600  # candles stored after it was trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xgb@1, champion of KRW-BTC 1m trained on FIRST candles; MORE candles stored since."""
    home = tmp_path_factory.mktemp("retrain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        candles = shared_candles("KRW-BTC_1m.csv", FIRST + MORE)
        upsert_candles(con, candles.iloc[:FIRST])
        params = {"n_estimators": 10, "device": "cpu", "seed": 1}
        train_model(con, "xgboost", "KRW-BTC", "1", params=params, name=NAME)
        upsert_candles(con, candles.iloc[FIRST:])
        con.close()
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    monkeypatch.setenv("UPQUANT_SERVER", "off")
    # workers at the tests' priority: an idle-class one waits out every other process on a
    # busy machine, before it trains and before it stops when cancelled
    monkeypatch.setenv("UPQUANT_JOB_PRIORITY", "normal")
    return copy


@pytest.fixture
def ws(home: Path) -> Iterator[Workstation]:
    with Workstation() as workstation:
        yield workstation


def wait_for[T](what: Callable[[], T], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return value


def ended(ws: Workstation, run: int) -> TrainStatus:
    def done() -> TrainStatus | None:
        status = ws.train_status(TrainStatusRequest(run=run))
        return status if status.status not in ("queued", "running") else None

    status = wait_for(done)
    assert status is not None
    return status


def moves(ws: Workstation) -> list[tuple[str, str | None, str, str | None]]:
    """KRW-BTC's alias moves, oldest first: (alias, to, by, reason)."""
    events = alias_history(ws.con(), "KRW-BTC", "1")
    return [(e.alias, e.model_ref, e.moved_by, e.reason) for e in reversed(events)]


def test_a_retrain_clones_the_champion_on_the_newest_candles_as_a_challenger(
    ws: Workstation,
) -> None:
    before = champion(ws.con(), "KRW-BTC", "1")
    assert before is not None and before.ref == f"{NAME}@1"
    started = ws.retrain("KRW-BTC", "1", by="drift", reason="adwin: correctness fell")
    assert isinstance(started, RetrainStarted), started
    assert (started.champion, started.by, started.candles) == (f"{NAME}@1", "drift", FIRST)
    assert started.status_url == f"/api/v1/training-runs/{started.run}"
    job = ws.jobs.get(started.run)  # a training job like any other: its own worker process
    assert job is not None and job.process is not None
    # one retrain of a model at a time (its worker is still starting: it imports for seconds)
    second = ws.retrain("KRW-BTC", "1", by="schedule", reason="schedule daily")
    assert isinstance(second, RetrainRefused) and second.code == "running"
    assert second.run == started.run and f"run {started.run}" in second.message
    with pytest.raises(Conflict, match=f"already running: run {started.run}") as refused:
        ws.model_retrain(RetrainRequest(market="KRW-BTC"))
    assert status_of(refused.value) == 409
    done = ended(ws, started.run)
    assert done.status == "finished", done.error
    assert done.result is not None and done.result.model == f"{NAME}@2"

    # the champion's configuration, on its number of candles ending at the newest one
    parent_run = get_run(ws.con(), int((before.tags or {})["run_id"])).config or {}
    config = get_run(ws.con(), started.run).config or {}
    for key in ("kind", "feature_spec", "label_spec", "split_spec", "params", "trials"):
        assert config[key] == parent_run[key], key
    assert config["promote"] is False and config["last"] == FIRST
    newest = shared_candles("KRW-BTC_1m.csv", FIRST + MORE)["ts"].iloc[-1]
    assert datetime.fromisoformat(config["until"]) > newest  # just past the newest candle
    child = list_models(ws.con())[-1]
    tags, old = child.tags or {}, before.tags or {}
    shift = datetime.fromisoformat(tags["train_from"]) - datetime.fromisoformat(old["train_from"])
    assert shift == timedelta(minutes=MORE)  # the same span, MORE candles later
    assert tags["retrain_of"] == before.id

    # a challenger, by drift, with the reason; the champion is unchanged
    assert champion(ws.con(), "KRW-BTC", "1") == before
    assert moves(ws)[-1] == ("challenger", f"{NAME}@2", "drift", "adwin: correctness fell")
    [listed] = ws.model_retrains(RetrainListRequest(market="KRW-BTC")).items
    assert (listed.run, listed.status, listed.by, listed.model) == (
        started.run, "finished", "drift", f"{NAME}@2"
    )  # fmt: skip
    assert listed.champion == f"{NAME}@1"


def test_a_failing_retrain_leaves_the_champion_and_says_why(ws: Workstation) -> None:
    con = ws.con()
    before = champion(con, "KRW-BTC", "1")
    events = moves(ws)
    # most candles gone: the clone's run has too few to split
    con.execute(
        "DELETE FROM candles WHERE ts >= (SELECT min(ts) FROM candles) + INTERVAL 300 MINUTE"
    )
    [(left,)] = con.execute("SELECT count(*) FROM candles").fetchall()
    started = ws.retrain("KRW-BTC", "1", by="schedule", reason="schedule daily")
    assert isinstance(started, RetrainStarted) and started.candles == left
    done = ended(ws, started.run)
    assert done.status == "failed" and "too few to train" in (done.error or "")
    assert champion(con, "KRW-BTC", "1") == before and moves(ws) == events
    assert [m.ref for m in list_models(con)] == [f"{NAME}@1"]
    [listed] = ws.model_retrains(RetrainListRequest(market="KRW-BTC")).items
    assert listed.status == "failed" and "too few to train" in (listed.error or "")

    # no candles at all: the run fails at its start, and the answer says so
    con.execute("DELETE FROM candles")
    refused = ws.retrain("KRW-BTC", "1", by="drift", reason="drift")
    assert isinstance(refused, RetrainRefused) and refused.code == "failed"
    assert refused.run is not None and "no KRW-BTC unit 1 candles" in refused.message
    assert get_run(con, refused.run).status == "failed"
    with pytest.raises(ServiceError, match="no KRW-BTC unit 1 candles"):
        ws.model_retrain(RetrainRequest(market="KRW-BTC"))
    assert champion(con, "KRW-BTC", "1") == before


def test_no_champion_is_refused_with_a_hint(ws: Workstation) -> None:
    refused = ws.retrain("KRW-ETH", "1", by="drift", reason="drift")
    assert isinstance(refused, RetrainRefused) and refused.code == "no-champion"
    assert refused.hint is not None and "upquant train" in refused.hint
    with pytest.raises(Conflict, match="KRW-ETH unit 1 has no champion") as error:
        ws.model_retrain(RetrainRequest(market="KRW-ETH"))
    assert status_of(error.value) == 409
    with pytest.raises(ValueError, match="not 'gate'"):
        ws.retrain("KRW-BTC", "1", by="gate")


def test_the_scheduler_starts_a_due_retrain_once_per_period(ws: Workstation) -> None:
    set_settings(ws.con(), "KRW-BTC", "1", OpsSettings(schedule="daily"))
    set_settings(ws.con(), "KRW-ETH", "1", OpsSettings())  # no schedule: never due
    start = datetime(2030, 1, 1, tzinfo=UTC)
    now = [start]
    scheduler = RetrainScheduler(ws, every=0.1, clock=lambda: now[0])
    assert (
        scheduler.due() == [("KRW-BTC", "1", "daily")]
        and scheduler.last_scheduled("KRW-BTC", "1") is None
    )
    [first] = scheduler.tick()
    assert isinstance(first, RetrainStarted)
    assert (first.by, first.reason) == ("schedule", "schedule daily")
    assert scheduler.last_scheduled("KRW-BTC", "1") == start
    ws.train_cancel(TrainRunRequest(run=first.run))  # ended or not, it was asked for
    assert scheduler.tick() == []  # not again within the day
    now[0] = start + timedelta(hours=23, minutes=59)
    assert scheduler.due() == [] and scheduler.tick() == []
    now[0] = start + timedelta(days=1)
    assert scheduler.due() == [("KRW-BTC", "1", "daily")]
    [second] = scheduler.tick()
    assert isinstance(second, RetrainStarted) and second.run != first.run
    assert scheduler.last_scheduled("KRW-BTC", "1") == now[0]
    ws.train_cancel(TrainRunRequest(run=second.run))
    # the schedule counts from its own retrains: a user's does not put it off
    by_user = ws.retrain("KRW-BTC", "1", by="user", at=start + timedelta(days=1, hours=12))
    assert isinstance(by_user, RetrainStarted)
    ws.train_cancel(TrainRunRequest(run=by_user.run))
    now[0] = start + timedelta(days=2)
    assert scheduler.due() == [("KRW-BTC", "1", "daily")]


async def test_the_scheduler_runs_on_the_loop_until_stopped(ws: Workstation) -> None:
    set_settings(ws.con(), "KRW-BTC", "1", OpsSettings(schedule="6h"))
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    scheduler = RetrainScheduler(ws, every=0.1, clock=lambda: now[0])

    def scheduled() -> list[int]:
        return [i.run for i in ws.model_retrains(RetrainListRequest(market="KRW-BTC")).items]

    scheduler.start()
    try:
        while not scheduled():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # five more looks: not due again within 6 hours
        [run] = scheduled()
        ws.train_cancel(TrainRunRequest(run=run))
        now[0] += timedelta(hours=6)  # due again
        while len(scheduled()) < 2:
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
    assert not scheduler.running
    assert len(scheduled()) == 2 and scheduled()[1] == run
    for listed in ws.model_retrains(RetrainListRequest(market="KRW-BTC")).items:
        assert (listed.by, listed.reason) == ("schedule", "schedule 6h")


async def test_a_serving_server_runs_the_scheduler(ws: Workstation) -> None:
    from engine.server.runner import listening

    set_settings(ws.con(), "KRW-BTC", "1", OpsSettings(schedule="weekly"))
    async with listening(ws, "127.0.0.1", 0):
        for _ in range(600):  # its first look comes as it starts
            if ws.model_retrains(RetrainListRequest(market="KRW-BTC")).items:
                break
            await asyncio.sleep(0.05)
    [listed] = ws.model_retrains(RetrainListRequest(market="KRW-BTC")).items
    assert (listed.by, listed.reason) == ("schedule", "schedule weekly")


def test_the_online_update_operation(ws: Workstation) -> None:
    updated = ws.model_online_update(OnlineUpdateRequest(model=f"{NAME}@champion", rounds=4))
    assert (updated.model, updated.parent, updated.rounds, updated.epochs) == (
        f"{NAME}@2", f"{NAME}@1", 4, None
    )  # fmt: skip
    assert updated.aliases == ["challenger"] and updated.rows > 100
    assert moves(ws)[-1][:3] == ("challenger", f"{NAME}@2", "user")
    with pytest.raises(ServiceError, match="epochs are for torch") as error:
        ws.model_online_update(OnlineUpdateRequest(model=NAME, epochs=2))
    assert status_of(error.value) == 400


# --- REST --------------------------------------------------------------------------------------
@pytest.fixture
async def api(home: Path) -> AsyncIterator[tuple[TestClient, dict[str, str], Workstation]]:
    con = connect()
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    workstation = Workstation(con)
    client = TestClient(TestServer(create_app(workstation), host="127.0.0.1"))
    await client.start_server()
    yield client, tokens, workstation
    await client.close()
    workstation.shutdown_jobs()
    con.close()


async def test_the_routes(api) -> None:
    client, tokens, _ = api

    async def call(method: str, path: str, scope: str = "write", **kwargs) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {tokens[scope]}"}
        async with client.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    status, answer = await call(
        "POST", f"/api/v1/ml-models/{NAME}@1/online-update", json={"rounds": 3, "reason": "new"}
    )
    assert status == 201 and answer["parent"] == f"{NAME}@1" and answer["rounds"] == 3
    assert answer["model"] == f"{NAME}@2" and answer["aliases"] == ["challenger"]
    status, answer = await call("POST", "/api/v1/markets/KRW-BTC/retrain", "read")
    assert status == 403
    status, answer = await call(
        "POST", "/api/v1/markets/KRW-BTC/retrain", params={"unit": "1"}, json={"reason": "why"}
    )
    assert status == 202 and answer["champion"] == f"{NAME}@1", answer
    run = answer["run"]
    status, again = await call("POST", "/api/v1/markets/KRW-BTC/retrain")
    assert status == 409 and f"run {run}" in again["error"]
    status, answer = await call("POST", "/api/v1/markets/KRW-ETH/retrain")
    assert status == 409 and answer["hint"]
    status, answer = await call("GET", "/api/v1/markets/KRW-BTC/retrains", "read")
    assert status == 200 and [i["run"] for i in answer["items"]] == [run]
    assert (answer["items"][0]["by"], answer["items"][0]["reason"]) == ("user", "why")
    status, answer = await call("DELETE", f"/api/v1/training-runs/{run}")
    assert status == 200 and answer["status"] == "interrupted"


# --- CLI ---------------------------------------------------------------------------------------
def test_the_commands(home: Path) -> None:
    from typer.testing import CliRunner

    from tests.tui.test_cli import upquant
    from tui.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["models", "retrain", "KRW-ETH"])
    assert isinstance(refused.exception, Conflict)  # `upquant` prints it: error, hint, exit 1
    assert "KRW-ETH unit 1 has no champion" in str(refused.exception)
    assert "upquant train" in (refused.exception.hint or "")
    no_wait = runner.invoke(app, ["models", "retrain", "KRW-BTC", "--no-wait"])
    assert "--no-wait needs a running server" in str(no_wait.exception)

    done = upquant(home, "models", "retrain", "KRW-BTC", "--reason", "by hand", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["champion"], answer["by"], answer["reason"]) == (f"{NAME}@1", "user", "by hand")
    assert answer["result"]["model"] == f"{NAME}@2" and answer["result"]["status"] == "candidate"

    updated = runner.invoke(
        app, ["models", "online-update", f"{NAME}@1", "--rounds", "3", "--json"]
    )
    assert updated.exit_code == 0, updated.output
    child = json.loads(updated.stdout)
    assert (child["model"], child["parent"], child["aliases"]) == (
        f"{NAME}@3", f"{NAME}@1", ["challenger"]
    )  # fmt: skip

    listed = runner.invoke(app, ["models", "retrains", "KRW-BTC"])
    assert listed.exit_code == 0 and "by hand" in listed.stdout and f"{NAME}@2" in listed.stdout
    with Workstation() as ws:
        assert moves(ws)[-2:] == [
            ("challenger", f"{NAME}@2", "user", "by hand"),
            (
                "challenger",
                f"{NAME}@3",
                "user",
                f"online update of {NAME}@1 on {child['rows']} rows",
            ),
        ]
