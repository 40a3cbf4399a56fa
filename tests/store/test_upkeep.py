"""`upquant store check [--fix] [--json]`, run as a user runs it: the integrity of every model's
artifact, what crashes left behind (found, then removed), and a grown store file compacted
without losing anything; `models delete` takes the model's cache entry with its artifact."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.training.train import train_model
from store.candles import upsert_candles
from store.db import connect
from store.registry import get_model, list_models, start_run, update_run
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant

FAST = {"n_estimators": 10, "device": "cpu"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store with two xgboost versions and a soft-vote ensemble of them, loaded once (so
    the cache holds all three), and a finished and an interrupted training run."""
    root = tmp_path_factory.mktemp("template") / "home"
    before = os.environ.get("UPQUANT_HOME")
    os.environ["UPQUANT_HOME"] = str(root)
    try:
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
        first, second = (
            train_model(con, "xgboost", "KRW-BTC", "1", params={**FAST, "seed": i}).model
            for i in range(2)
        )
        train_model(con, "ensemble", "KRW-BTC", "1", members=[first.ref, second.ref])
        update_run(con, start_run(con, "lstm", "KRW-BTC", "1", {}), status="interrupted")
        con.close()
    finally:
        if before is None:
            del os.environ["UPQUANT_HOME"]
        else:
            os.environ["UPQUANT_HOME"] = before
    assert upquant(root, "models", "show", "ensemble-KRW-BTC-1").returncode == 0  # cache filled
    yield root


@pytest.fixture
def home(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the template store, as `$UPQUANT_HOME` of this test."""
    copy = tmp_path / "home"
    shutil.copytree(template, copy, symlinks=True)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    return copy


def check(home: Path, *args: str) -> tuple[int, dict]:
    result = upquant(home, "store", "check", "--json", *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _records() -> dict:
    con = connect()
    try:
        return {r.ref: r for r in list_models(con)}
    finally:
        con.close()


def test_a_clean_store_checks_clean(home: Path) -> None:
    code, report = check(home)
    assert code == 0 and report["problems"] == 0 and report["findings"] == []
    assert sorted(a["model"] for a in report["artifacts"]) == [
        "ensemble-KRW-BTC-1@1", "xgboost-KRW-BTC-1@1", "xgboost-KRW-BTC-1@2",
    ]
    assert {a["status"] for a in report["artifacts"]} == {"ok"}
    table = upquant(home, "store", "check")
    assert table.returncode == 0 and "3 of 3 ok" in table.stdout and "clean" in table.stdout


def test_leftovers_are_found_then_removed_and_the_models_still_load(home: Path) -> None:
    records = _records()
    member = records["xgboost-KRW-BTC-1@1"]
    con = connect()
    finished = int(con.execute("SELECT min(id) FROM training_runs WHERE status = 'finished'").fetchall()[0][0])
    interrupted = int(con.execute("SELECT id FROM training_runs WHERE status = 'interrupted'").fetchall()[0][0])
    con.close()

    planted = {
        f"artifacts/{'a' * 64}.tar": b"no model uses it",
        "artifacts/.x.tar.k2j3.part": b"half an artifact",
        f"cache/{'b' * 64}/model.json": b"{}",
        f"cache/.{member.sha256}.q1w2.part/meta.json": b"{}",
        f"runs/{finished}/checkpoint.pt": b"finished run",
        "runs/9999/checkpoint.pt": b"no such run",
        f"runs/{interrupted}/checkpoint.pt": b"resumable",
        f"runs/{interrupted}/checkpoint.part": b"half a checkpoint",
        "upquant.duckdb.compact.part": b"half a compaction",
    }
    for name, data in planted.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_bytes(data)
    (home / "cache" / member.sha256 / "meta.json").unlink()  # an unpacking cut short
    (home / "cache" / "stray-file").write_text("x")
    Path(member.artifact).chmod(0o644)  # made by an older upquant

    code, report = check(home)
    assert code == 1
    found = {(f["kind"], f["path"]) for f in report["findings"]}
    assert found == {
        ("artifact", f"artifacts/{'a' * 64}.tar"),
        ("temporary", "artifacts/.x.tar.k2j3.part"),
        ("cache", f"cache/{'b' * 64}"),
        ("temporary", f"cache/.{member.sha256}.q1w2.part"),
        ("cache", f"cache/{member.sha256}"),
        ("cache", "cache/stray-file"),
        ("checkpoint", f"runs/{finished}"),
        ("checkpoint", "runs/9999"),
        ("temporary", f"runs/{interrupted}/checkpoint.part"),
        ("temporary", "upquant.duckdb.compact.part"),
        ("permissions", f"artifacts/{member.sha256}.tar"),
    }
    assert report["problems"] == len(found) and not any(f["fixed"] for f in report["findings"])
    assert all((home / name).exists() for name in planted)  # a check alone removes nothing
    table = upquant(home, "store", "check")
    assert table.returncode == 1 and "run `upquant store check --fix`" in table.stderr

    code, report = check(home, "--fix")
    assert code == 0 and report["problems"] == 0 and all(f["fixed"] for f in report["findings"])
    left = {name for name in planted if (home / name).exists()}
    assert left == {f"runs/{interrupted}/checkpoint.pt"}  # a resumable run keeps its checkpoint
    assert (home / "artifacts" / f"{member.sha256}.tar").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (home / "artifacts").iterdir()) == sorted(
        f"{r.sha256}.tar" for r in records.values()
    )  # the ensemble's members are kept
    code, report = check(home)
    assert code == 0 and report["findings"] == []
    for ref in records:
        shown = json.loads(upquant(home, "models", "show", ref, "--json").stdout)
        assert shown["integrity"] == "verified", ref


def test_missing_and_damaged_artifacts_are_reported_by_model_and_never_fixed(home: Path) -> None:
    records = _records()
    Path(records["xgboost-KRW-BTC-1@1"].artifact).write_bytes(b"damaged")
    Path(records["xgboost-KRW-BTC-1@2"].artifact).unlink()
    code, report = check(home, "--fix")
    assert code == 1 and report["problems"] == 2
    status = {a["model"]: (a["status"], a["detail"]) for a in report["artifacts"]}
    assert status["xgboost-KRW-BTC-1@1"][0] == "damaged" and "registry says" in status["xgboost-KRW-BTC-1@1"][1]
    assert status["xgboost-KRW-BTC-1@2"][0] == "missing"
    assert status["ensemble-KRW-BTC-1@1"][0] == "ok"
    assert Path(records["xgboost-KRW-BTC-1@1"].artifact).read_bytes() == b"damaged"
    table = upquant(home, "store", "check")
    assert table.returncode == 1
    assert "DAMAGED xgboost-KRW-BTC-1@1" in table.stdout and "MISSING xgboost-KRW-BTC-1@2" in table.stdout
    assert "retrain or `upquant models delete`" in table.stderr


def test_a_grown_store_file_is_compacted_keeping_everything(home: Path) -> None:
    con = connect()
    con.execute("CREATE TABLE scratch AS SELECT range AS i, random() AS x FROM range(4000000)")
    con.execute("CHECKPOINT")
    con.execute("INSERT INTO candle_series VALUES ('KRW-XRP', '1', NULL)")  # a block after it
    con.execute("CHECKPOINT")
    con.execute("DROP TABLE scratch")
    con.execute("CHECKPOINT")
    tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}
    con.close()
    grown = (home / "upquant.duckdb").stat().st_size

    code, report = check(home)
    assert code == 1 and report["database"]["grown"]
    assert [f["kind"] for f in report["findings"]] == ["database"]
    code, report = check(home, "--fix")
    assert code == 0, report
    assert report["database"]["compacted_bytes"] < grown / 2
    assert (home / "upquant.duckdb").stat().st_size == report["database"]["compacted_bytes"]
    assert sorted(p.name for p in home.iterdir()) == ["artifacts", "cache", "upquant.duckdb"]

    con = connect()
    after = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}
    assert repr(after) == repr(before)  # every row of every table (repr: NaN equals NaN)
    ids = [r.id for r in list_models(con)]
    third = train_model(con, "xgboost", "KRW-BTC", "1", params={**FAST, "seed": 7}).model
    assert third.id == max(ids) + 1 and third.version == 3  # the sequences carry on
    con.close()
    assert check(home)[0] == 0


def test_models_delete_removes_the_models_cache_entry_with_its_artifact(home: Path) -> None:
    records = _records()
    upquant(home, "models", "delete", "ensemble-KRW-BTC-1", "--yes")
    doomed = records["xgboost-KRW-BTC-1@2"]
    kept = records["xgboost-KRW-BTC-1@1"]
    assert (home / "cache" / doomed.sha256).is_dir()
    deleted = upquant(home, "models", "delete", doomed.ref, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert not (home / "cache" / doomed.sha256).exists() and not Path(doomed.artifact).exists()
    assert (home / "cache" / kept.sha256).is_dir()
    code, report = check(home)
    assert code == 0 and report["findings"] == []
    con = connect()
    with pytest.raises(KeyError):
        get_model(con, doomed.ref)
    con.close()


def test_a_compactions_backup_goes_only_when_the_store_holds_the_same(home: Path, tmp_path: Path) -> None:
    """A crash between replacing the store and verifying it leaves `upquant.duckdb.bak`: it is
    removed when it holds what the store holds, and kept (exit 1) when it differs."""
    backup = home / "upquant.duckdb.bak"
    shutil.copy2(home / "upquant.duckdb", backup)
    code, report = check(home)
    assert code == 1 and [(f["kind"], f["path"]) for f in report["findings"]] == [("backup", backup.name)]
    assert check(home, "--fix")[0] == 0 and not backup.exists()

    other = connect(tmp_path / "other.duckdb")
    other.close()
    shutil.copy2(tmp_path / "other.duckdb", backup)
    code, report = check(home, "--fix")
    assert code == 1 and report["findings"][0]["fixable"] is False and backup.exists()
    assert "differs from the store" in report["findings"][0]["detail"]
