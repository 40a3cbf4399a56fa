"""The registry and evaluation operations in process, on real XGBoost models trained on real
candles: model references (id, name, name@version, name@champion), list filters and paging,
alias moves, edits, delete refusals, registering an artifact from the store, metrics,
evaluate and backtest answers that are strict JSON."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.service import Conflict, NotFound, ServiceError, Workstation, status_of
from engine.service.evaluation import BacktestRequest, EvaluateRequest
from engine.service.registry import (
    ModelCompareRequest,
    ModelListRequest,
    ModelRefRequest,
    ModelRegisterRequest,
    ModelShowRequest,
    ModelUpdateRequest,
    RollbackRequest,
)
from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from tests.conftest import shared_candles

NAME = "xgb"


def train_store(home: Path) -> None:
    """Two XGBoost versions of `xgb` on KRW-BTC 1m (the first the champion) and one `eth` on
    KRW-ETH, 3000 real candles each."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
        upsert_candles(con, shared_candles("KRW-ETH_1m.csv", 3000, market="KRW-ETH"))
        params = {"n_estimators": 10, "device": "cpu"}
        for seed in (1, 2):
            train_model(con, "xgboost", "KRW-BTC", "1", params={**params, "seed": seed}, name=NAME)
        train_model(con, "xgboost", "KRW-ETH", "1", params=params, name="eth")
        con.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("trained")
    train_store(home)
    return home


@pytest.fixture
def ws(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workstation]:
    """A copy of the trained store per test (the registry's paths are store-relative)."""
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    with Workstation() as workstation:
        yield workstation


def show(ws: Workstation, ref: str) -> str:
    return ws.model_show(ModelShowRequest(model=ref, verify=False)).ref


def test_every_kind_of_reference_names_one_model(ws: Workstation) -> None:
    assert show(ws, "1") == f"{NAME}@1"
    assert show(ws, NAME) == f"{NAME}@2"  # the newest version
    assert show(ws, f"{NAME}@1") == f"{NAME}@1"
    assert show(ws, f"{NAME}@champion") == f"{NAME}@1"  # trained first: champion
    assert show(ws, "eth@champion") == "eth@1"
    with pytest.raises(NotFound, match="no model 'nope'"):
        show(ws, "nope")
    with pytest.raises(NotFound):
        show(ws, f"{NAME}@9")
    with pytest.raises(ServiceError, match="unknown alias 'best'") as bad:
        show(ws, f"{NAME}@best")
    assert status_of(bad.value) == 400 and "name@champion" in (bad.value.hint or "")
    # the alias follows the champion of the name's market/unit, whatever its name
    ws.model_promote(ModelRefRequest(model=f"{NAME}@2"))
    assert show(ws, f"{NAME}@champion") == f"{NAME}@2"
    ws.model_update(ModelUpdateRequest(model=f"{NAME}@1", status="candidate"))
    registered = ws.model_register(register_request(ws, f"{NAME}@1", name="other"))
    assert show(ws, "other@champion") == f"{NAME}@2" and registered.status == "candidate"


def test_list_filters_and_pages(ws: Workstation) -> None:
    everything = ws.model_list(ModelListRequest())
    assert [m.ref for m in everything.items] == [f"{NAME}@1", f"{NAME}@2", "eth@1"]
    assert everything.total == 3 and everything.items[0].metrics["test"]["accuracy"] is not None
    page = ws.model_list(ModelListRequest(limit=1, offset=1))
    assert [m.ref for m in page.items] == [f"{NAME}@2"] and page.total == 3
    champions = ws.model_list(ModelListRequest(status="champion", market="KRW-BTC"))
    assert [m.ref for m in champions.items] == [f"{NAME}@1"] and champions.total == 1
    assert ws.model_list(ModelListRequest(kind="lstm")).total == 0
    json.dumps(everything.model_dump(mode="json"), allow_nan=False)


def test_alias_moves_promote_and_roll_back(ws: Workstation) -> None:
    moved = ws.model_update(ModelUpdateRequest(model=f"{NAME}@2", alias="champion")).moved
    assert moved is not None and (moved.model, moved.previous) == (f"{NAME}@2", f"{NAME}@1")
    assert moved.previous_status == "retired"
    with pytest.raises(Conflict, match="is not the champion"):
        ws.model_update(ModelUpdateRequest(model=f"{NAME}@1", rollback=True))
    back = ws.model_update(ModelUpdateRequest(model=f"{NAME}@champion", rollback=True))
    assert back.ref == f"{NAME}@2" and back.status == "rolled_back"
    assert back.moved is not None and back.moved.model == f"{NAME}@1"
    with pytest.raises(Conflict, match="nothing to roll back to"):
        ws.model_rollback(RollbackRequest(market="KRW-BTC", unit="1"))


def test_edits_merge_tags_and_keep_the_trainers(ws: Workstation) -> None:
    edited = ws.model_update(
        ModelUpdateRequest(model=f"{NAME}@2", description="seed 2", tags={"desk": "a"})
    )
    assert edited.description == "seed 2" and edited.tags is not None
    assert edited.tags["desk"] == "a" and "test_from" in edited.tags  # merged, not replaced
    cleared = ws.model_update(ModelUpdateRequest(model=f"{NAME}@2", tags={"desk": None}))
    assert cleared.tags is not None and "desk" not in cleared.tags
    with pytest.raises(ValueError, match="test_from .* are the trainer's") as refused:
        ws.model_update(ModelUpdateRequest(model=f"{NAME}@2", tags={"test_from": "2020"}))
    assert status_of(refused.value) == 400
    with pytest.raises(Conflict, match="is the champion"):
        ws.model_update(ModelUpdateRequest(model=f"{NAME}@1", status="retired"))
    assert ws.model_update(ModelUpdateRequest(model=f"{NAME}@2", status="retired")).status == "retired"


def test_delete_refuses_the_champion_and_takes_a_lone_artifact(ws: Workstation) -> None:
    with pytest.raises(Conflict, match="is the champion") as refused:
        ws.model_delete(ModelRefRequest(model=f"{NAME}@champion"))
    assert refused.value.hint == "promote another model or roll back first"
    artifact = Path(ws.model_show(ModelShowRequest(model=f"{NAME}@2")).artifact)
    deleted = ws.model_delete(ModelRefRequest(model=f"{NAME}@2"))
    assert deleted.ref == f"{NAME}@2" and deleted.artifact_removed and not artifact.exists()
    with pytest.raises(NotFound):
        ws.model_delete(ModelRefRequest(model=f"{NAME}@2"))


def register_request(ws: Workstation, source: str, **changes: object) -> ModelRegisterRequest:
    shown = ws.model_show(ModelShowRequest(model=source, verify=False))
    fields = {
        "name": "imported",
        "kind": shown.kind,
        "market": shown.market,
        "unit": shown.unit,
        "sha256": shown.sha256,
        "feature_spec": shown.feature_spec,
        "label_spec": shown.label_spec,
        "params": shown.params,
        **changes,
    }
    return ModelRegisterRequest.model_validate(fields)


def test_register_verifies_the_artifact_in_the_store(ws: Workstation, tmp_path: Path) -> None:
    registered = ws.model_register(register_request(ws, "eth@1", description="copied"))
    assert registered.ref == "imported@1" and registered.description == "copied"
    assert ws.model_show(ModelShowRequest(model="imported")).integrity == "verified"
    missing = register_request(ws, "eth@1", sha256="0" * 64)
    with pytest.raises(NotFound, match="no artifact 000000000000"):
        ws.model_register(missing)
    # a file under another artifact's name: its content does not hash to the name
    shown = ws.model_show(ModelShowRequest(model="eth@1", verify=False))
    fake = "f" * 64
    shutil.copy(shown.artifact, Path(shown.artifact).with_name(f"{fake}.tar"))
    with pytest.raises(ServiceError, match="refused: .*sha256") as refused:
        ws.model_register(register_request(ws, "eth@1", sha256=fake))
    assert status_of(refused.value) == 400
    with pytest.raises(ServiceError, match="kind 'ensemble' cannot be registered"):
        ws.model_register(register_request(ws, "eth@1", kind="ensemble"))


def test_metrics_compare_evaluate_and_backtest_answer_strict_json(ws: Workstation) -> None:
    metrics = ws.model_metrics(ModelRefRequest(model=f"{NAME}@champion"))
    assert metrics.model == f"{NAME}@1" and "accuracy" in metrics.test and metrics.validation
    compared = ws.model_compare(ModelCompareRequest(models=[f"{NAME}@champion", "eth"]))
    assert compared.columns == [f"{NAME}@1 (xgboost)", "eth@1 (xgboost)"]
    assert "accuracy" in compared.metrics
    evaluated = ws.evaluate(EvaluateRequest(model=f"{NAME}@champion"))
    assert evaluated.mode == "held_out" and evaluated.held_out is not None
    assert evaluated.held_out.model == f"{NAME}@1" and evaluated.held_out.rows > 0
    assert evaluated.held_out.confusion is not None and evaluated.held_out.reliability
    tested = ws.backtest(BacktestRequest(model=f"{NAME}@champion"))
    assert tested.strategy == f"{NAME}@1" and tested.market == "KRW-BTC"
    assert {"buy-and-hold", "no-trade"} <= set(tested.results) and tested.trades is not None
    assert set(tested.trades) == set(tested.results)
    for answer in (metrics, compared, evaluated, tested):
        json.dumps(answer.model_dump(mode="json"), allow_nan=False)
    with pytest.raises(ServiceError, match="needs a market"):
        ws.backtest(BacktestRequest())
