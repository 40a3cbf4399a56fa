"""The DuckDB store: migrations, idempotent bulk upsert, registry rows, artifact integrity."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from store.artifacts import ArtifactError, open_artifact, store_artifact
from store.candles import candle_status, last_ts, load_candles, upsert_candles
from store.db import _migrations, connect, db_path


def test_store_lives_under_upquant_home(home: Path, con) -> None:
    assert db_path() == home / "upquant.duckdb"
    assert db_path().exists()
    versions = [v for (v,) in con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
    assert versions == [version for version, _, _ in _migrations()]
    assert versions[0] == 1 and versions == sorted(set(versions))


def test_migrations_are_applied_once(home: Path) -> None:
    first = connect()
    first.close()
    again = connect()
    count = again.execute("SELECT count(*) FROM schema_version").fetchall()[0][0]
    assert count == len(_migrations())
    again.close()


def test_upsert_is_idempotent_and_updates_changed_rows(con, btc_1m: pd.DataFrame) -> None:
    part = btc_1m.head(500)
    assert upsert_candles(con, part) == 500
    assert upsert_candles(con, part) == 0
    assert con.execute("SELECT count(*) FROM candles").fetchall()[0][0] == 500
    changed = part.tail(1).copy()
    changed["close"] = changed["high"]
    assert upsert_candles(con, changed) == 0
    stored = load_candles(con, "KRW-BTC", "1", last=1)
    assert stored["close"].iloc[0] == changed["high"].iloc[0]
    assert last_ts(con, "KRW-BTC", "1") == part["ts"].iloc[-1]


def test_load_candles_range_is_half_open_and_ascending(con, btc_1m: pd.DataFrame) -> None:
    upsert_candles(con, btc_1m.head(100))
    start, end = btc_1m["ts"].iloc[10], btc_1m["ts"].iloc[20]
    frame = load_candles(con, "KRW-BTC", "1", start, end)
    assert list(frame["ts"]) == list(btc_1m["ts"].iloc[10:20])
    assert str(frame["ts"].dt.tz) == "UTC"
    status = candle_status(con)
    assert status.to_dict("records")[0]["rows"] == 100


def test_upsert_rejects_frames_without_the_candle_columns(con) -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        upsert_candles(con, pd.DataFrame({"ts": [1]}))


def test_artifact_round_trip_and_tamper_detection(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "model.json").write_text('{"trees": [1, 2, 3]}')
    artifact = store_artifact(source)
    assert artifact.path.name == f"{artifact.sha256}.tar"
    assert store_artifact(source).sha256 == artifact.sha256  # deterministic packing
    out = open_artifact(artifact.path, artifact.sha256, artifact.size, tmp_path / "out")
    assert (out / "model.json").read_text() == '{"trees": [1, 2, 3]}'

    data = bytearray(artifact.path.read_bytes())
    data[600] ^= 0xFF
    artifact.path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        open_artifact(artifact.path, artifact.sha256, artifact.size, tmp_path / "out2")
    artifact.path.write_bytes(bytes(data[:100]))
    with pytest.raises(ArtifactError, match="bytes"):
        open_artifact(artifact.path, artifact.sha256, artifact.size, tmp_path / "out3")
    artifact.path.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        open_artifact(artifact.path, artifact.sha256, artifact.size, tmp_path / "out4")
