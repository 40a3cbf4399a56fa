"""The registry names artifacts relative to the store: a copied, moved or restored
`$UPQUANT_HOME` loads its own files, never another store's, and an artifact file that is
damaged is rewritten by the retrain that produces it again."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.live.inference import load_champion, load_record
from engine.training.train import train_model
from store.artifacts import artifact_files, read_artifact, store_artifact
from store.candles import upsert_candles
from store.db import connect
from store.registry import get_model, list_models, register_model, set_champion
from tests.tui.test_cli import upquant

FAST = {"n_estimators": 15, "device": "cpu"}


def _stored_artifacts(con) -> list[str]:
    return [row[0] for row in con.execute("SELECT artifact FROM models ORDER BY id").fetchall()]


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, btc_1m: pd.DataFrame) -> Path:
    """A home with two xgboost versions (the second champion) and a soft-vote ensemble of them."""
    original = tmp_path / "original"
    monkeypatch.setenv("UPQUANT_HOME", str(original))
    con = connect()
    upsert_candles(con, btc_1m.iloc[:3000])
    first, second = (
        train_model(con, "xgboost", "KRW-BTC", "1", params={**FAST, "seed": i}).model
        for i in range(2)
    )
    set_champion(con, second.id)
    train_model(con, "ensemble", "KRW-BTC", "1", members=[first.ref, second.ref])
    con.close()
    return original


def test_rows_and_ensemble_manifests_name_artifacts_relative_to_the_store(trained: Path) -> None:
    con = connect()
    assert all(a.startswith("artifacts/") for a in _stored_artifacts(con))
    ensemble = get_model(con, "ensemble-KRW-BTC-1")
    files = artifact_files(read_artifact(ensemble.artifact, ensemble.sha256, ensemble.size), "-")
    assert str(trained) not in files["manifest.json"].decode()  # members by sha256
    assert str(trained) not in json.dumps(ensemble.params)
    con.close()


def test_a_copied_home_loads_and_predicts_after_the_original_is_gone(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shutil.rmtree(trained)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    con = connect()
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and reason == "champion xgboost-KRW-BTC-1@2"
    assert Path(loaded.record.artifact).parent == copy / "artifacts"
    ensemble = load_record(get_model(con, "ensemble-KRW-BTC-1"))
    X = np.random.default_rng(0).normal(0, 0.01, (4, len(loaded.columns))).astype(np.float32)
    assert ensemble.model.predict_proba(X).shape == (4, 3)
    con.close()
    predicted = upquant(copy, "predict", "ensemble-KRW-BTC-1", "KRW-BTC")
    assert predicted.returncode == 0, predicted.stderr
    assert not trained.exists()


def test_deleting_a_model_in_a_copy_leaves_the_original_store_alone(
    trained: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shown = json.loads(upquant(copy, "models", "show", "xgboost-KRW-BTC-1@1", "--json").stdout)
    assert Path(shown["artifact"]).parent == copy / "artifacts"
    upquant(copy, "models", "delete", "ensemble-KRW-BTC-1", "--yes")
    deleted = upquant(copy, "models", "delete", "xgboost-KRW-BTC-1@1", "--yes")
    assert deleted.returncode == 0 and "and its artifact" in deleted.stderr, deleted.stderr
    name = Path(shown["artifact"]).name
    assert not (copy / "artifacts" / name).exists()
    assert (trained / "artifacts" / name).exists()  # the original's file survives
    original = upquant(trained, "models", "show", "xgboost-KRW-BTC-1@1", "--json")
    assert json.loads(original.stdout)["integrity"] == "verified"


def test_rows_with_absolute_paths_and_old_ensembles_resolve_in_the_current_store(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before references were relative (absolute paths in rows and in an
    ensemble's manifest), then moved: migration 004 makes the rows relative; the ensemble's
    members are found by sha256 in the store that loads it."""
    con = connect()
    members = [get_model(con, "xgboost-KRW-BTC-1@1"), get_model(con, "xgboost-KRW-BTC-1@2")]
    ensemble = get_model(con, "ensemble-KRW-BTC-1")
    files = artifact_files(read_artifact(ensemble.artifact, ensemble.sha256, ensemble.size), "-")
    manifest = json.loads(files["manifest.json"])
    for ref, member in zip(manifest["members"], members, strict=True):
        ref["artifact"] = str(trained / "artifacts" / f"{member.sha256}.tar")  # as written before
    old = tmp_path / "old-ensemble"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    artifact = store_artifact(old)
    register_model(
        con, name="old-ensemble", kind="ensemble", market="KRW-BTC", unit="1",
        feature_spec=ensemble.feature_spec, feature_spec_hash=ensemble.feature_spec_hash,
        label_spec=ensemble.label_spec, params=ensemble.params, artifact=str(artifact.path),
        sha256=artifact.sha256, size=artifact.size, status="candidate", metrics={},
    )
    con.execute("UPDATE models SET artifact = ? || '/artifacts/' || sha256 || '.tar'", [str(trained)])
    con.execute("DELETE FROM schema_version WHERE version = 4")
    con.close()

    moved = tmp_path / "moved"
    trained.rename(moved)
    monkeypatch.setenv("UPQUANT_HOME", str(moved))
    con = connect()
    assert all(a.startswith("artifacts/") and a.endswith(".tar") for a in _stored_artifacts(con))
    assert all(Path(r.artifact).exists() for r in list_models(con))
    old_ensemble = load_record(get_model(con, "old-ensemble"))
    assert len(old_ensemble.model.members) == 2
    con.close()


def test_a_damaged_artifact_file_is_rewritten_by_the_retrain_that_produces_it(
    home: Path, con, btc_1m: pd.DataFrame
) -> None:
    upsert_candles(con, btc_1m.iloc[:3000])
    first = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
    path = Path(first.artifact)
    path.write_bytes(path.read_bytes()[:-200])
    again = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
    assert again.sha256 == first.sha256 and Path(again.artifact) == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.sha256
    load_record(first)  # the earlier version is whole again too
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        assert {"model.json", "meta.json"} <= set(tar.getnames())
