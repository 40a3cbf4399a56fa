"""Artifacts encrypted at rest (store/crypto.py): trained, registered and loaded with a key;
nothing of the model readable in the file; the sha256 checked before any decryption, then
decryption authenticating; a wrong, missing or unusable key a clear refusal naming the
artifact and what to set; plain artifacts loading beside encrypted ones; no decrypted copy
left on disk; `store check` without the key; `store keygen`."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.live.inference import load_record, load_ref
from engine.training.train import train_model
from store.artifacts import (
    ArtifactError,
    ArtifactLocked,
    artifact_contents,
    artifact_path,
    artifacts_dir,
    open_artifact,
    store_artifact,
)
from store.candles import upsert_candles
from store.crypto import (
    HEADER_BYTES,
    KEY_ENV,
    KEY_FILE_ENV,
    MAGIC,
    KeyConfigError,
    configured_key,
    parse_key,
    sealed_key_id,
)
from store.db import connect
from store.registry import ModelRecord, get_model
from store.upkeep import check_store
from tests.conftest import shared_candles
from tests.tui.test_cli import upquant

KEY = base64.b64encode(bytes(range(32))).decode()
WRONG = base64.b64encode(bytes(range(1, 33))).decode()
FAST = {"n_estimators": 10, "device": "cpu", "seed": 0}
PLAIN, SEALED, ENSEMBLE = "xgboost-KRW-BTC-1@1", "xgboost-KRW-BTC-1@2", "ensemble-KRW-BTC-1@1"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A mixed store: a plain xgboost (seed 0), then, with KEY set, the same model trained
    again (encrypted) and a soft-vote ensemble of the two (encrypted, one member plain)."""
    root = tmp_path_factory.mktemp("encryption") / "home"
    saved = {k: os.environ.get(k) for k in ("UPQUANT_HOME", KEY_ENV, KEY_FILE_ENV)}
    os.environ["UPQUANT_HOME"] = str(root)
    os.environ.pop(KEY_ENV, None)
    os.environ.pop(KEY_FILE_ENV, None)
    try:
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 3000))
        plain = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
        os.environ[KEY_ENV] = KEY
        sealed = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
        train_model(con, "ensemble", "KRW-BTC", "1", members=[plain.ref, sealed.ref])
        con.close()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    shutil.rmtree(root / "cache", ignore_errors=True)  # what the trainer's loads left
    yield root


@pytest.fixture
def home(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the template store as this test's `$UPQUANT_HOME`, no key configured."""
    copy = tmp_path / "home"
    shutil.copytree(template, copy, symlinks=True)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    return copy


def _records() -> dict[str, ModelRecord]:
    con = connect()
    try:
        return {ref: get_model(con, ref) for ref in (PLAIN, SEALED, ENSEMBLE)}
    finally:
        con.close()


def _file(record: ModelRecord) -> Path:
    return artifact_path(record.artifact, record.sha256)


def _rows(record: ModelRecord) -> np.ndarray:
    columns = len(record.params["columns"])
    return np.random.default_rng(7).normal(size=(1, columns)).astype(np.float32)


def _key_id(text: str) -> str:
    return parse_key(text, "test").id


def test_an_encrypted_model_round_trips_and_its_file_hides_the_model(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records()
    plain, sealed = _file(records[PLAIN]).read_bytes(), _file(records[SEALED]).read_bytes()
    assert b'"learner"' in plain and b"meta.json" in plain  # what to look for is in a plain one
    for ref in (SEALED, ENSEMBLE):
        data = _file(records[ref]).read_bytes()
        assert data.startswith(MAGIC) and sealed_key_id(data) == _key_id(KEY)
        assert b'"learner"' not in data and b"meta.json" not in data and b"ustar" not in data
        # the registry's sha256 and size are the stored (encrypted) file's
        assert hashlib.sha256(data).hexdigest() == records[ref].sha256
        assert len(data) == records[ref].size
    assert sealed != plain

    monkeypatch.setenv(KEY_ENV, KEY)
    # the same seed gave the same model: decrypted, it is the plain artifact file for file
    assert artifact_contents(
        _file(records[SEALED]), records[SEALED].sha256, records[SEALED].size
    ) == (artifact_contents(_file(records[PLAIN]), records[PLAIN].sha256, records[PLAIN].size))
    loaded = {ref: load_record(records[ref]) for ref in records}
    rows = _rows(records[PLAIN])
    expected = loaded[PLAIN].model.predict_last(rows)
    np.testing.assert_array_equal(loaded[SEALED].model.predict_last(rows), expected)
    np.testing.assert_allclose(loaded[ENSEMBLE].model.predict_last(rows), expected, rtol=1e-6)
    # no decrypted copy stays: the cache holds the plain model's unpacked copy only
    assert sorted(p.name for p in (home / "cache").iterdir()) == [records[PLAIN].sha256]


def test_a_plain_artifact_loads_whatever_key_is_set(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _records()[PLAIN]
    loose = home.parent / "loose.key"
    loose.write_text(KEY)
    loose.chmod(0o644)
    settings = [{}, {KEY_ENV: KEY}, {KEY_ENV: WRONG}, {KEY_FILE_ENV: str(loose)}]
    for setting in settings:
        monkeypatch.delenv(KEY_ENV, raising=False)
        monkeypatch.delenv(KEY_FILE_ENV, raising=False)
        for name, value in setting.items():
            monkeypatch.setenv(name, value)
        probs = load_record(record).model.predict_last(_rows(record))
        assert probs.shape == (3,), setting


@pytest.mark.parametrize("key", [None, KEY, WRONG])
def test_a_tampered_file_is_refused_by_its_sha256_before_any_decryption(
    home: Path, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    record = _records()[SEALED]
    path = _file(record)
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + 100] ^= 0x01  # one bit of the ciphertext
    path.write_bytes(bytes(data))
    if key is not None:
        monkeypatch.setenv(KEY_ENV, key)
    with pytest.raises(ArtifactError) as refused:
        load_record(record)
    # the integrity refusal, whatever the key: nothing was decrypted (or asked a key of)
    assert not isinstance(refused.value, ArtifactLocked)
    assert f"artifact {path} sha256 is" in str(refused.value)
    assert f"registry says {record.sha256[:12]}" in str(refused.value)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (HEADER_BYTES + 100, "fails authentication"),  # the ciphertext
        (HEADER_BYTES - 1, "fails authentication"),  # the nonce (bound as associated data)
        (len(MAGIC), "format version"),  # the version byte
    ],
)
def test_an_altered_file_registered_again_fails_authentication(
    home: Path, monkeypatch: pytest.MonkeyPatch, offset: int, message: str
) -> None:
    """A file altered and its new sha256 put in the registry passes the integrity check;
    decryption then refuses it."""
    record = _records()[SEALED]
    data = bytearray(_file(record).read_bytes())
    data[offset] ^= 0x01
    sha256 = hashlib.sha256(data).hexdigest()
    path = artifacts_dir() / f"{sha256}.tar"
    path.write_bytes(bytes(data))
    forged = dataclasses.replace(record, artifact=str(path), sha256=sha256)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ArtifactError, match=message) as refused:
        load_record(forged)
    assert not isinstance(refused.value, ArtifactLocked)
    assert str(refused.value).startswith(f"artifact {path} ")


def test_a_wrong_or_missing_key_is_a_clear_refusal(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records()
    path = _file(records[SEALED])
    with pytest.raises(ArtifactLocked) as refused:
        load_record(records[SEALED])
    assert str(refused.value) == (
        f"artifact {path} is encrypted (key id {_key_id(KEY)}) and no artifact key is"
        f" configured: set {KEY_ENV} (base64 of 32 bytes) or {KEY_FILE_ENV} (a file holding"
        " it) to the key it was written with"
    )
    monkeypatch.setenv(KEY_ENV, WRONG)
    with pytest.raises(ArtifactLocked) as refused:
        load_record(records[SEALED])
    assert str(refused.value) == (
        f"artifact {path} was encrypted with key id {_key_id(KEY)}; the configured key"
        f" ({KEY_ENV}) has id {_key_id(WRONG)}: set the key it was written with"
    )
    with pytest.raises(ArtifactLocked) as refused:
        load_record(records[ENSEMBLE])
    assert str(refused.value).startswith(
        f"artifact {_file(records[ENSEMBLE])} was encrypted with key id {_key_id(KEY)}"
    )
    con = connect()
    try:
        # asked for exactly, it is refused, naming the intact plain version to use instead
        with pytest.raises(ArtifactError, match=f"the previous version {PLAIN} is intact"):
            load_ref(con, SEALED)
        loaded, note = load_ref(con, "xgboost-KRW-BTC-1")  # the newest that loads
        assert loaded.record.ref == PLAIN and note is not None and "key id" in note
    finally:
        con.close()


def test_key_settings_are_checked_like_ssh_checks_a_private_key(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "artifact.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    with pytest.raises(KeyConfigError, match="group or others may use it") as refused:
        configured_key()
    assert refused.value.hint == f"run `chmod 600 {key_file}`"
    # nothing is written with a key setting that cannot be used
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "meta.json").write_text("{}")
    before = sorted(artifacts_dir().iterdir())
    with pytest.raises(KeyConfigError):
        store_artifact(model_dir)
    assert sorted(artifacts_dir().iterdir()) == before
    # an encrypted artifact then is refused naming itself and the fix
    record = _records()[SEALED]
    with pytest.raises(ArtifactLocked, match=f"artifact {_file(record)} is encrypted.*chmod 600"):
        load_record(record)

    key_file.chmod(0o600)
    key = configured_key()
    assert key is not None and key.id == _key_id(KEY) and KEY not in repr(key)
    assert load_record(record).model.predict_last(_rows(record)).shape == (3,)
    encrypted = store_artifact(model_dir)
    assert encrypted.path.read_bytes().startswith(MAGIC)
    assert store_artifact(model_dir).sha256 != encrypted.sha256  # a fresh nonce each time

    bad = {
        KEY_FILE_ENV: (str(tmp_path / "missing.key"), "does not exist"),
        KEY_ENV: ("not base64!", "is not base64"),
    }
    monkeypatch.delenv(KEY_FILE_ENV)
    for name, (value, message) in bad.items():
        monkeypatch.setenv(name, value)
        with pytest.raises(KeyConfigError, match=message):
            configured_key()
        monkeypatch.delenv(name)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(bytes(16)).decode())
    with pytest.raises(KeyConfigError, match="is 16 bytes, AES-256 needs 32"):
        configured_key()
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    with pytest.raises(KeyConfigError, match="both"):
        configured_key()


def test_store_check_verifies_encrypted_artifacts_without_the_key(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    records = _records()

    def statuses() -> dict[str, tuple[str, str]]:
        report = check_store()
        return {a.model: (a.status, a.detail) for a in report.artifacts}

    found = statuses()
    assert found[PLAIN] == ("ok", "")
    for ref in (SEALED, ENSEMBLE):
        status, detail = found[ref]
        assert status == "ok" and f"encrypted (key id {_key_id(KEY)}): sha256 verified" in detail
    assert check_store().problems == 0

    monkeypatch.setenv(KEY_ENV, KEY)
    assert {ref: s for ref, (s, _) in statuses().items()} == dict.fromkeys(records, "ok")

    monkeypatch.setenv(KEY_ENV, WRONG)
    found = statuses()
    assert found[SEALED][0] == found[ENSEMBLE][0] == "wrong-key" and found[PLAIN][0] == "ok"
    assert f"has id {_key_id(WRONG)}" in found[SEALED][1]
    assert check_store().problems == 2

    key_file = tmp_path / "loose.key"
    key_file.write_text(KEY)
    key_file.chmod(0o640)
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    report = check_store()
    assert [a.status for a in report.artifacts if a.model != PLAIN] == ["key-error", "key-error"]
    assert [(f.kind, f.path, f.fixable) for f in report.findings] == [("key", KEY_FILE_ENV, False)]
    monkeypatch.delenv(KEY_FILE_ENV)

    # the ciphertext altered: damaged, found without the key
    path = _file(records[SEALED])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    found = statuses()
    assert found[SEALED][0] == "damaged" and "sha256 is" in found[SEALED][1]


def test_a_decrypted_copy_in_the_cache_is_found_and_removed(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _records()[SEALED]
    monkeypatch.setenv(KEY_ENV, KEY)
    copy = open_artifact(_file(record), record.sha256, record.size, home / "cache" / record.sha256)
    assert (copy / "model.json").is_file()
    monkeypatch.delenv(KEY_ENV)
    report = check_store(fix=True)
    assert [(f.kind, f.detail, f.fixed) for f in report.findings] == [
        ("cache", "a decrypted copy of an encrypted artifact", True)
    ]
    assert not copy.exists()


@pytest.mark.slow
def test_the_cli_makes_keys_and_store_check_names_a_wrong_key(home: Path, tmp_path: Path) -> None:
    printed = upquant(home, "store", "keygen")
    assert printed.returncode == 0, printed.stderr
    assert len(base64.b64decode(printed.stdout.strip(), validate=True)) == 32
    assert upquant(home, "store", "keygen").stdout != printed.stdout
    key_file = tmp_path / "new.key"
    written = upquant(home, "store", "keygen", "--out", str(key_file))
    assert written.returncode == 0, written.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600 and parse_key(key_file.read_text(), "-")
    again = upquant(home, "store", "keygen", "--out", str(key_file))
    assert again.returncode == 1 and "is never overwritten" in again.stderr

    result = upquant(home, "store", "check", "--json", env={KEY_FILE_ENV: str(key_file)})
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert {a["model"]: a["status"] for a in report["artifacts"]} == {
        PLAIN: "ok",
        SEALED: "wrong-key",
        ENSEMBLE: "wrong-key",
    }
    text = upquant(home, "store", "check", env={KEY_FILE_ENV: str(key_file)})
    assert text.returncode == 1
    assert "WRONG-KEY" in text.stdout
    assert "set the artifact key those models were written with" in text.stderr
