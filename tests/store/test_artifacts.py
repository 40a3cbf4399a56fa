"""Artifacts: a tar whose sha256 is registered is still unpacked only as our packer writes it
(regular files with plain relative names, into a fresh directory), and anything else is a
refused artifact the live engine falls back from."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from engine.live.inference import load_champion, load_record
from engine.training.train import train_model
from store.artifacts import ArtifactError, artifacts_dir, open_artifact, store_artifact
from store.candles import upsert_candles
from store.db import connect
from store.registry import ModelRecord, register_model, set_champion

FAST = {"n_estimators": 15, "device": "cpu"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store in `tmp_path/home`, with `tmp_path/outside` beside it holding a file that
    must survive, so that an escape from the store is seen."""
    monkeypatch.setenv("UPQUANT_HOME", str(tmp_path / "home"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original\n")
    con = connect()
    yield con, outside
    con.close()


def _tar(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    return buffer.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"pwned\n") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def symlink_chain(tar: tarfile.TarFile, destination: Path | None = None) -> None:
    """CVE-2025-4517: symlinks whose resolution exceeds PATH_MAX stop `os.path.realpath`, so
    tarfile's `data` filter sees `escape` inside the destination while it points three levels
    up (cache/<sha256> → home → tmp_path) into `outside`; then a file is written through it
    and the existing victim overwritten through a hardlink. The directories it creates must
    fit in PATH_MAX below `destination` (a cache entry: 64 characters below home/cache)."""
    steps, path = "abcdefghijklmnop", ""
    below = len(str(destination)) if destination is not None else 200
    comp = "d" * min(247, (4095 - below - 100) // len(steps) - 1)
    for step in steps:
        info = tarfile.TarInfo(os.path.join(path, comp))
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        _link(tar, os.path.join(path, step), comp)
        path = os.path.join(path, comp)
    long_link = os.path.join(*steps, "l" * 254)
    _link(tar, long_link, "../" * len(steps))
    _link(tar, "escape", long_link + "/.." * 3 + "/outside")
    _file(tar, "escape/pwned.txt")
    _link(tar, "victim", "escape/victim.txt", tarfile.LNKTYPE)
    _file(tar, "victim")


def _device(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("meta.json")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info)


def _fifo(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("meta.json")
    info.type = tarfile.FIFOTYPE
    tar.addfile(info)


def _directory(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("sub")
    info.type, info.mode = tarfile.DIRTYPE, 0o777
    tar.addfile(info)
    _file(tar, "sub/meta.json")


CRAFTED = {
    "symlink chain": (symlink_chain, "a directory"),
    "symlink": (lambda t: _link(t, "meta.json", "../../outside/victim.txt"), "a symlink"),
    "hardlink": (lambda t: (_file(t, "a"), _link(t, "meta.json", "a", tarfile.LNKTYPE)), "a hardlink"),
    "dot-dot": (lambda t: _file(t, "../../outside/pwned.txt"), "not a plain relative name"),
    "absolute": (lambda t: _file(t, "/tmp/upquant-absolute-pwned.txt"), "not a plain relative name"),
    "device": (_device, "a device or fifo"),
    "fifo": (_fifo, "a device or fifo"),
    "directory": (_directory, "a directory"),
    "duplicate": (lambda t: (_file(t, "meta.json", b"{}"), _file(t, "meta.json")), "twice"),
    "file and directory": (lambda t: (_file(t, "a"), _file(t, "a/b")), "as a file and a directory"),
    "not a tar": (None, "not a readable tar"),
}
NOT_A_TAR = b"this is not a tar file\n" * 100


def _register(con, data: bytes, name: str = "crafted") -> ModelRecord:
    """Put `data` in the store under its own sha256 and register it: the hash checks out."""
    digest = hashlib.sha256(data).hexdigest()
    path = artifacts_dir() / f"{digest}.tar"
    path.write_bytes(data)
    return register_model(
        con, name=name, kind="xgboost", market="KRW-BTC", unit="1", feature_spec={},
        feature_spec_hash="h", label_spec={}, params={}, artifact=str(path), sha256=digest,
        size=len(data), status="candidate", metrics={},
    )


def _tree(root: Path) -> dict[str, bytes | str]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir")
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_artifact_with_its_sha256_registered_is_refused_writing_nothing(
    store, tmp_path: Path, case: str
) -> None:
    con, outside = store
    add, reason = CRAFTED[case]
    if add is symlink_chain:
        add = partial(symlink_chain, destination=tmp_path / "home" / "cache" / ("f" * 64))
    data = _tar(add) if add is not None else NOT_A_TAR
    record = _register(con, data)
    before = _tree(outside)
    with pytest.raises(ArtifactError, match=reason):
        load_record(record)
    assert _tree(outside) == before and (outside / "victim.txt").read_text() == "original\n"
    assert not Path("/tmp/upquant-absolute-pwned.txt").exists()
    home = tmp_path / "home"
    assert not (home / "cache" / record.sha256).exists()
    assert [p.name for p in (home / "cache").iterdir()] == []  # no temp directory left either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "outside"]


def test_the_symlink_chain_escapes_tarfiles_own_filter(tmp_path: Path) -> None:
    """The attack the refusal above guards against is real on this Python: extractall with the
    `data` filter writes outside its destination and overwrites an existing file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original\n")
    destination = tmp_path / "home" / "cache" / "x"
    destination.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(_tar(partial(symlink_chain, destination=destination)))) as tar:
            tar.extractall(destination, filter="data")
    except tarfile.TarError:
        pytest.skip("this Python's tarfile refuses the chain itself")
    assert (outside / "pwned.txt").exists() or (outside / "victim.txt").read_text() != "original\n"


def test_a_planted_link_in_the_cache_is_never_written_through(store, tmp_path: Path) -> None:
    """An existing cache entry is not unpacked into: a fresh directory replaces it."""
    _, outside = store
    source = tmp_path / "model"
    source.mkdir()
    (source / "model.json").write_text('{"trees": [1]}')
    artifact = store_artifact(source)
    into = tmp_path / "home" / "cache" / artifact.sha256
    into.mkdir(parents=True)
    (into / "model.json").symlink_to(outside / "victim.txt")
    out = open_artifact(artifact.path, artifact.sha256, artifact.size, into)
    assert (outside / "victim.txt").read_text() == "original\n"
    assert not (out / "model.json").is_symlink()
    assert (out / "model.json").read_text() == '{"trees": [1]}'
    assert open_artifact(artifact.path, artifact.sha256, artifact.size, into) == into  # kept
    assert sorted(p.name for p in into.parent.iterdir()) == [artifact.sha256]


def test_a_verified_artifact_that_does_not_load_is_refused(store) -> None:
    """A regular, correctly hashed tar whose contents are not the model it claims to be."""
    con, _ = store
    record = _register(con, _tar(lambda t: _file(t, "meta.json", b'{"no": "params"}')))
    with pytest.raises(ArtifactError, match="does not load as a xgboost model: KeyError"):
        load_record(record)


@pytest.mark.parametrize("case", ["symlink chain", "not a tar", "hardlink"])
def test_the_live_engine_falls_back_from_a_crafted_champion(store, btc_1m: pd.DataFrame, case: str) -> None:
    con, outside = store
    upsert_candles(con, btc_1m.iloc[:3000])
    intact = train_model(con, "xgboost", "KRW-BTC", "1", params=FAST).model
    add, _ = CRAFTED[case]
    if add is symlink_chain:
        add = partial(symlink_chain, destination=outside.parent / "home" / "cache" / ("f" * 64))
    crafted = _register(con, _tar(add) if add is not None else NOT_A_TAR, name=intact.name)
    assert crafted.version == intact.version + 1
    set_champion(con, crafted.id)
    loaded, reason = load_champion(con, "KRW-BTC", "1")
    assert loaded is not None and loaded.record.id == intact.id
    assert f"champion {crafted.ref} refused" in reason and f"using previous {intact.ref}" in reason
    assert (outside / "victim.txt").read_text() == "original\n" and not (outside / "pwned.txt").exists()
