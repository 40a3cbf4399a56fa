"""`kill -9` of a real `upquant serve` while it writes, then a restart on the same home: the
store opens, nothing committed is lost, nothing half-done appears.

- during a candle import (a ~1M-row file sent by `upquant data import` from another
  process): the series holds all of the file's candles or none, the candles stored before
  are byte-for-byte the same; an import that overwrites 1M stored candles leaves every old
  one or every new one; an import the server answered is all there;
- during a training job: its worker does not outlive the server, the run reads
  `interrupted`, no model of it is registered, `upquant train --resume` completes it and
  registers exactly one;
- during alias moves (promote/rollback in a loop from a client): one champion per
  market/unit afterwards, the one the last answered move (or the move in flight) left, no
  model row lost.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import itertools
import json
import os
import subprocess
import threading
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import DATA
from tests.e2e.servers import Server, Servers, alive, store_with_candles, wait_for
from tests.tui.test_cli import UPQUANT, upquant, upquant_many

pytestmark = pytest.mark.slow


def client(home: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """`upquant ARGS` in its own process (it finds the server through server.json)."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [UPQUANT, *args], stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "UPQUANT_HOME": str(home)},
        )


# --------------------------------------------------------------------------- candle write


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """~1M real KRW-ETH 1-minute candles: the shared file tiled backwards in time (every
    candle in the past, no duplicate), as a CSV in the shared format; (path, rows)."""
    raw = pd.read_csv(DATA / "KRW-ETH_1m.csv")
    stamps = pd.to_datetime(raw["timestamp"])
    span = stamps.iloc[-1] - stamps.iloc[0] + pd.Timedelta(minutes=1)
    tiles = []
    for k in range(20, -1, -1):
        tile = raw.copy()
        tile["timestamp"] = (stamps - k * span).dt.strftime("%Y-%m-%d %H:%M:%S")
        tiles.append(tile)
    frame = pd.concat(tiles, ignore_index=True)
    path = tmp_path_factory.mktemp("big") / "eth_tiled.csv"
    frame.to_csv(path, index=False)
    return path, len(frame)


def _io(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        name, value = line.split(":")
        if name == key:
            return int(value)
    raise KeyError(key)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _export_digest(server: Server, out: Path, market: str = "KRW-BTC", rows: int = 3000) -> str:
    """sha256 of the stored candles of `market`, exported by the server."""
    answer = server.ok("data_export", {"market": market, "unit": "1", "out": str(out)})
    assert answer["rows"] == rows
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


def _series_rows(server: Server, market: str) -> int:
    rows = [s["rows"] for s in server.ok("data_status", {}) if s["market"] == market]
    return rows[0] if rows else 0


def _stored_bytes(db: Path) -> int:
    return _size(db) + _size(db.with_name(db.name + ".wal"))


# when to kill, watching the server process, its store and its log while the import runs
KILL_POINTS: dict[str, Callable[[Server, dict[str, int]], bool]] = {
    # the server is reading the file (the client's request is in flight)
    "reading": lambda server, base: _io(server.process.pid, "rchar") > base["rchar"] + 16_000_000,
    # the first blocks of the new candles reach the database file or its WAL
    "writing": lambda server, base: (
        _stored_bytes(server.home / "upquant.duckdb") > base["files"] + 2_000_000
    ),
    # most of them are written (the commit is near)
    "written": lambda server, base: (
        _stored_bytes(server.home / "upquant.duckdb") > base["files"] + 40_000_000
    ),
    # the server has answered: the import is committed, and must survive the kill whole
    "answered": lambda server, base: '"POST /api/v1/ops/data_import' in server.output(),
    # the whole file is read: the server compares it with the stored candles and updates
    "updating": lambda server, base: _io(server.process.pid, "rchar") > base["rchar"] + base["size"],
}


@pytest.mark.parametrize("point", ["reading", "writing", "written", "answered"])
def test_a_server_killed_during_an_import_keeps_all_or_none_of_it(
    tmp_path: Path, servers: Servers, big_file: tuple[Path, int], point: str
) -> None:
    path, rows = big_file
    home = store_with_candles(tmp_path)
    server = servers(home)
    before = _export_digest(server, tmp_path / "before.csv")
    base = {
        "rchar": _io(server.process.pid, "rchar"),
        "files": _stored_bytes(home / "upquant.duckdb"),
        "size": path.stat().st_size,
    }
    importing = client(
        home, "data", "import", str(path), "--market", "KRW-ETH", "--unit", "1",
        log=tmp_path / "import.log",
    )
    reached = KILL_POINTS[point]
    wait_for(
        f"the import to reach {point!r}",
        lambda: (importing.poll() is not None and point != "answered") or reached(server, base),
        timeout=300, every=0.002,
    )
    finished_first = importing.poll() is not None
    strays = server.kill()
    code = importing.wait(timeout=120)
    # a client whose request died with the server says so (exit 1), one answered exits 0
    assert code == (0 if finished_first or point == "answered" else 1), (
        (tmp_path / "import.log").read_text()
    )
    servers.strays.extend(strays)

    again = servers(home)  # the store opens
    status = upquant(home, "data", "status", "--json")
    assert status.returncode == 0, status.stderr
    stored = _series_rows(again, "KRW-ETH")
    assert stored in (0, rows), f"{stored} of {rows} candles after a kill while {point}"
    if point == "answered":
        assert stored == rows, "an import the server answered is lost"
    assert _series_rows(again, "KRW-BTC") == 3000
    assert _export_digest(again, tmp_path / "after.csv") == before
    check = again.ok("store_check", {})
    assert check["problems"] == 0, check

    # the store takes the import again, whole
    redo = upquant(home, "data", "import", str(path), "--market", "KRW-ETH", "--unit", "1",
                   "--json", timeout=300)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert _series_rows(again, "KRW-ETH") == rows
    assert again.stop() == 0, again.output()
    assert not [pid for pid in strays if alive(pid)]


@pytest.mark.parametrize("point", ["updating", "answered"])
def test_a_server_killed_during_an_overwriting_import_keeps_every_old_or_every_new_candle(
    tmp_path: Path, servers: Servers, big_file: tuple[Path, int], point: str
) -> None:
    path, rows = big_file
    home = store_with_candles(tmp_path)
    stored = upquant(home, "data", "import", str(path), "--market", "KRW-ETH", "--unit", "1")
    assert stored.returncode == 0, stored.stderr
    changed = tmp_path / "eth_changed.csv"  # every price 1% higher: every candle updated
    frame = pd.read_csv(path)
    for column in ("open", "high", "low", "close"):
        frame[column] = frame[column] * 1.01
    frame.to_csv(changed, index=False)
    server = servers(home)
    old = _export_digest(server, tmp_path / "eth.csv", "KRW-ETH", rows)
    base = {"rchar": _io(server.process.pid, "rchar"), "size": changed.stat().st_size}
    overwrite = ["data", "import", str(changed), "--market", "KRW-ETH", "--unit", "1", "--overwrite"]
    importing = client(home, *overwrite, log=tmp_path / "import.log")
    wait_for(
        f"the import to reach {point!r}",
        lambda: (importing.poll() is not None and point != "answered")
        or KILL_POINTS[point](server, base),
        timeout=300, every=0.002,
    )
    servers.strays.extend(server.kill())
    importing.wait(timeout=120)

    again = servers(home)
    after = _export_digest(again, tmp_path / "eth.csv", "KRW-ETH", rows)
    assert again.ok("store_check", {})["problems"] == 0
    redo = upquant(home, *overwrite, timeout=300)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    new = _export_digest(again, tmp_path / "eth.csv", "KRW-ETH", rows)
    assert new != old
    assert after in (old, new), f"a mix of old and new candles after a kill while {point}"
    if point == "answered":
        assert after == new, "an import the server answered is lost"
    assert again.stop() == 0, again.output()


# --------------------------------------------------------------------------- training job

# a small network that still takes several epochs (early stopping waits for 3 bad ones), on
# windows of 20 rows (the default 60 triples each epoch's work)
TRAIN = [
    "train", "lstm", "KRW-BTC", "--epochs", "30", "--batch-size", "32", "--window", "20",
    "--device", "cpu",
]


def test_a_server_killed_during_training_leaves_an_interrupted_run_that_resumes(
    tmp_path: Path, servers: Servers
) -> None:
    home = store_with_candles(tmp_path)
    server = servers(home)
    training = client(home, *TRAIN, log=tmp_path / "train.log")
    status = wait_for(
        "the run's first epoch",
        lambda: (answer := server.call("train_status", {"run": 1}))[0] == 200
        and answer[1]["latest"] is not None
        and answer[1],
        timeout=300, every=0.1,
    )
    assert status["status"] == "running"
    workers = [pid for pid in server.kill() if alive(pid)]
    servers.strays.extend(workers)
    assert workers, "the job's worker process was not found"
    # the command that asked for the run says its server is gone (exit 1), no traceback
    assert training.wait(timeout=120) == 1
    said = (tmp_path / "train.log").read_text()
    assert "is not answering" in said and "Traceback" not in said
    # the worker does not outlive its server (it watches its parent)
    wait_for("the orphaned worker to stop", lambda: not any(alive(p) for p in workers), 60)
    assert (home / "runs" / "1" / "checkpoint.pt").exists()

    again = servers(home)
    run = again.ok("train_status", {"run": 1})
    assert run["status"] == "interrupted", run
    assert f"process {server.process.pid}" in run["error"] and "is gone" in run["error"]
    assert run["model"] is None and again.ok("model_list", {})["items"] == []

    resumed = upquant(home, "train", "--resume", "1", "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["run"] == 1 and report["model"] == "lstm-KRW-BTC-1@1"
    models = again.ok("model_list", {})["items"]
    assert [(m["id"], m["ref"]) for m in models] == [(report["id"], "lstm-KRW-BTC-1@1")]
    run = again.ok("train_status", {"run": 1})
    assert run["status"] == "finished" and run["model_id"] == report["id"]
    assert "resumed from" in (run["log"] or "")
    assert again.stop() == 0, again.output()


# --------------------------------------------------------------------------- alias moves

# promotions of each model and rollbacks between them: every model is champion in turn
MOVES: list[tuple[str, dict[str, Any]]] = [
    ("model_promote", {"model": "1"}),
    ("model_promote", {"model": "2"}),
    ("model_promote", {"model": "3"}),
    ("model_rollback", {"market": "KRW-BTC", "unit": "1"}),
    ("model_promote", {"model": "1"}),
    ("model_rollback", {"market": "KRW-BTC", "unit": "1"}),
    ("model_promote", {"model": "3"}),
]


@dataclass
class AliasLoop:
    """Moves the champion alias over HTTP in a loop (a client thread) until its server dies:
    who holds it after the last answered move, and the move in flight when the server died."""

    server: Server
    answered: int = 0
    holder: int | None = None
    in_flight: tuple[str, dict[str, Any]] | None = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            for step in itertools.count():
                self.in_flight = MOVES[step % len(MOVES)]
                try:
                    status, answer = self.server.call(*self.in_flight, timeout=60)
                except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                    return  # the server is gone: this move's fate is the store's to tell
                if status == 200:
                    self.holder = answer["model_id"]
                else:  # a rollback with nothing before the champion: nothing moved
                    assert status == 404 or status == 409, (status, answer)
                self.in_flight = None
                self.answered += 1
        except BaseException as exc:  # noqa: BLE001  the test says it
            self.error = exc

    def reached(self, moves: int) -> bool:
        return self.answered >= moves or self.error is not None

    def possible_champions(self) -> set[int]:
        """The champion the store may hold: the last answered move's, or the one the move in
        flight makes (a promotion's model; a rollback restores an earlier holder of the
        alias, by its history: any other model)."""
        assert self.holder is not None
        possible = {self.holder}
        if self.in_flight is not None:
            op, body = self.in_flight
            if op == "model_promote":
                possible.add(int(body["model"]))
            else:
                possible.update(m for m in (1, 2, 3) if m != self.holder)
        return possible


def test_a_server_killed_during_alias_moves_keeps_one_champion_and_every_model(
    tmp_path: Path, servers: Servers
) -> None:
    home = store_with_candles(tmp_path)
    trained = upquant_many(home, [  # three versions of one name, each with its own artifact
        ["train", "xgboost", "KRW-BTC", "--n-estimators", "20", "--device", "cpu",
         "--seed", str(seed), "--no-promote", "--json"]
        for seed in range(3)
    ])
    assert all(t.returncode == 0 for t in trained), [t.stderr for t in trained]
    server = servers(home)
    for moves in (5, 31):  # killed at different places of the cycle
        loop = AliasLoop(server)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        wait_for(f"{moves} alias moves", functools.partial(loop.reached, moves), 300)
        servers.strays.extend(server.kill())
        thread.join(timeout=120)
        assert not thread.is_alive() and loop.error is None, loop.error

        server = servers(home)
        models = server.ok("model_list", {})["items"]
        assert [m["id"] for m in models] == [1, 2, 3]  # no model row lost
        champions = [m["id"] for m in models if m["status"] == "champion"]
        assert len(champions) == 1, models
        assert champions[0] in loop.possible_champions(), (champions, loop)
        assert {m["status"] for m in models} <= {"champion", "retired", "rolled_back"}, models
        for model in models:
            shown = server.ok("model_show", {"model": str(model["id"])})
            assert shown["integrity"] == "verified", shown
        # the champion answers by its alias
        assert server.ok("model_show", {"model": "xgboost-KRW-BTC-1@champion"})["id"] == champions[0]
    assert server.stop() == 0, server.output()
