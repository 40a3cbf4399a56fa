"""Registry: references, promote, rollback, delete, and refusing bad artifacts with fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.live.inference import load_champion, load_record
from engine.training.train import train_model
from store.artifacts import ArtifactError
from store.candles import upsert_candles
from store.registry import champion, delete_model, get_model, rollback, set_champion

FAST = {"n_estimators": 15, "device": "cpu"}


@pytest.fixture
def three(con, btc_1m: pd.DataFrame) -> list:
    upsert_candles(con, btc_1m.iloc[:3000])
    records = [
        train_model(con, "xgboost", "KRW-BTC", "1", params={**FAST, "seed": i}).model
        for i in range(3)
    ]
    assert len({r.sha256 for r in records}) == 3  # distinct artifacts, damaged one at a time
    for r in records:
        set_champion(con, r.id)
    return [get_model(con, r.id) for r in records]


def test_refs_promote_and_rollback(con, three) -> None:
    assert [r.version for r in three] == [1, 2, 3]
    assert get_model(con, str(three[0].id)).ref == "xgboost-KRW-BTC-1@1"
    assert champion(con, "KRW-BTC", "1").id == three[2].id
    demoted, restored = rollback(con, "KRW-BTC", "1")
    assert demoted.status == "rolled_back" and restored.id == three[1].id
    assert champion(con, "KRW-BTC", "1").id == three[1].id
    rollback(con, "KRW-BTC", "1")
    with pytest.raises(KeyError, match="nothing to roll back"):
        rollback(con, "KRW-BTC", "1")


def test_delete_refuses_the_champion(con, three) -> None:
    with pytest.raises(ValueError, match="champion"):
        delete_model(con, three[2].id)
    _, orphan = delete_model(con, three[0].id)
    assert orphan  # no other row uses its artifact: the CLI removes the file
    with pytest.raises(KeyError):
        get_model(con, three[0].id)


@pytest.mark.parametrize("damage", ["alter", "truncate", "missing"])
def test_bad_champion_artifact_falls_back_to_the_previous_version(con, three, damage) -> None:
    bad = three[2]
    path = Path(bad.artifact)
    if damage == "alter":
        data = bytearray(path.read_bytes())
        data[600] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.unlink()
    with pytest.raises(ArtifactError):
        load_record(bad)
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and loaded.record.id == three[1].id
    assert "refused" in reason and "using previous xgboost-KRW-BTC-1@2" in reason


def test_a_bad_artifact_falls_back_to_its_previous_version_first(con, btc_1m: pd.DataFrame) -> None:
    """v1 champion, v2 a candidate never promoted, v3 champion: v3 broken serves v2 (the
    previous version), not v1; a version the user rolled back is never a fallback."""
    from engine.live.inference import load_ref

    upsert_candles(con, btc_1m.iloc[:3000])
    v1, v2, v3 = (
        train_model(con, "xgboost", "KRW-BTC", "1", params={**FAST, "seed": i}).model
        for i in range(3)
    )
    set_champion(con, v1.id)
    set_champion(con, v3.id)
    assert get_model(con, v2.id).status == "candidate"
    Path(v3.artifact).write_bytes(b"damaged")
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and loaded.record.id == v2.id
    assert "_table" in loaded.model.__dict__  # warmed: the first live candle compiles nothing
    assert reason.startswith("champion xgboost-KRW-BTC-1@3 refused:") and "using previous xgboost-KRW-BTC-1@2" in reason

    by_name, note = load_ref(con, "xgboost-KRW-BTC-1")  # a bare name: its newest intact version
    assert by_name.record.id == v2.id and note is not None and "using previous version xgboost-KRW-BTC-1@2" in note
    for exact in ("xgboost-KRW-BTC-1@3", str(v3.id)):  # exactly this one: refused, with the way out
        with pytest.raises(ArtifactError, match="the previous version xgboost-KRW-BTC-1@2 is intact: use it"):
            load_ref(con, exact)
    intact, none = load_ref(con, "xgboost-KRW-BTC-1@2")
    assert intact.record.id == v2.id and none is None

    con.execute("UPDATE models SET status = 'rolled_back' WHERE id = ?", [v2.id])
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and loaded.record.id == v1.id and "using previous xgboost-KRW-BTC-1@1" in reason
    Path(v1.artifact).unlink()
    with pytest.raises(ArtifactError, match="no earlier version of xgboost-KRW-BTC-1 is intact"):
        load_ref(con, "xgboost-KRW-BTC-1")
    assert load_champion(con, "KRW-BTC", "1")[0] is None


def test_tampered_ensemble_member_refuses_the_ensemble(con, three) -> None:
    refs = [three[0].ref, three[1].ref]
    ensemble = train_model(con, "ensemble", "KRW-BTC", "1", members=refs, method="soft-vote").model
    X = np.random.default_rng(0).normal(0, 1, (5, len(three[0].params["columns"])))
    members = [load_record(r).model.predict_proba(X) for r in three[:2]]
    np.testing.assert_allclose(load_record(ensemble).model.predict_proba(X), np.mean(members, axis=0))
    with pytest.raises(ValueError, match="member of"):
        delete_model(con, three[0].id)
    Path(three[0].artifact).write_bytes(b"not a tar")
    with pytest.raises(ArtifactError, match="ensemble member"):
        load_record(ensemble)


def test_ctrl_c_while_registering_keeps_neither_the_model_nor_a_finished_run(con) -> None:
    from store.registry import get_run, list_models, register_model, start_run

    class Boom(float):  # a metric value that is interrupted while its row is being written
        def __float__(self) -> float:
            raise KeyboardInterrupt

    def register(run_id: int, metrics: dict, promote: bool):
        return register_model(
            con, name="m", kind="xgboost", market="KRW-BTC", unit="1", feature_spec={},
            feature_spec_hash="h", label_spec={}, params={}, artifact="a", sha256="s", size=1,
            status="candidate", metrics=metrics, run_id=run_id, promote=promote,
        )

    first = register(start_run(con, "xgboost", "KRW-BTC", "1", {}), {"test": {"acc": 0.5}}, True)
    assert first.status == "champion"
    run_id = start_run(con, "xgboost", "KRW-BTC", "1", {})
    with pytest.raises(KeyboardInterrupt):
        register(run_id, {"test": {"acc": Boom(0.6)}}, True)
    assert [m.id for m in list_models(con)] == [first.id]  # the half-written row rolled back
    assert get_model(con, first.id).status == "champion"  # and so did the promotion
    assert get_run(con, run_id).status == "running" and get_run(con, run_id).model_id is None
    second = register(run_id, {"test": {"acc": 0.6}}, True)
    assert get_run(con, run_id).status == "finished" and get_run(con, run_id).model_id == second.id
    assert get_model(con, first.id).status == "retired" and second.status == "champion"
