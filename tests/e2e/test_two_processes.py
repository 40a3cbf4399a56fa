"""Two real processes: `upquant serve` owns the store (running a replay session when the
server offers live sessions), and `upquant` commands from other processes (data status,
models list, train, predict) succeed through it and print exactly what the same commands
print in process (UPQUANT_SERVER=off) on a copy of the store taken before."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine.service import OPERATIONS
from tests.e2e.servers import Servers, store_with_candles
from tests.tui.test_cli import upquant, upquant_many

pytestmark = pytest.mark.slow

IN_PROCESS = {"UPQUANT_SERVER": "off"}

# (name, arguments); OUT is the file `predict` writes, one per side
COMMANDS: list[tuple[str, list[str]]] = [
    ("data status", ["data", "status", "--json"]),
    ("models list", ["models", "list", "--json"]),
    ("train", ["train", "xgboost", "KRW-BTC", "--n-estimators", "20", "--device", "cpu",
               "--seed", "1", "--json"]),
    ("predict", ["predict", "xgboost-KRW-BTC-1@2", "KRW-BTC", "--from", "2025-09-02T12:00:00",
                 "--to", "2025-09-02T14:00:00", "--out", "OUT"]),
    ("models show", ["models", "show", "xgboost-KRW-BTC-1@2", "--json"]),
    ("models list", ["models", "list", "--json"]),
]


def _without(value: Any, keys: set[str]) -> Any:
    """`value` (decoded JSON) without the fields named `keys`, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def _same(name: str, served: str, local: str, varying: set[str]) -> None:
    if served.lstrip().startswith(("{", "[")):
        assert _without(json.loads(served), varying) == _without(json.loads(local), varying), (
            name
        )
        return
    diff = "".join(difflib.unified_diff(local.splitlines(True), served.splitlines(True)))
    assert served == local, f"{name}:\n{diff}"


# Only while the server replays a session: the idle server answers the same commands by the
# same path, and the busy one is the harder case (41 s a variant: the suite's 10-minute budget).
@pytest.mark.parametrize("live", [True], ids=["replaying"])
def test_commands_from_another_process_answer_as_in_process(
    tmp_path: Path, servers: Servers, live: bool
) -> None:
    if live and "live_start" not in OPERATIONS:
        pytest.skip("this server runs no live session (live_start is not an operation yet)")
    home = store_with_candles(tmp_path)
    first = upquant(home, "train", "xgboost", "KRW-BTC", "--n-estimators", "20", "--device",
                    "cpu", "--json")
    assert first.returncode == 0, first.stderr  # xgboost-KRW-BTC-1@1, the champion
    local = tmp_path / "local"
    shutil.copytree(home, local)

    server = servers(home)
    varying = {"created_at"}  # a model registered later on one side
    if live:
        status, session = server.call(
            "live_start", {"market": "KRW-BTC", "unit": "1", "offline": True}
        )
        assert status == 200 and session["running"] and session["mode"] == "replay", session
        assert session["model_ref"] == "xgboost-KRW-BTC-1@1", session  # the champion signals

    # predict writes to OUT: one file per side, paths of the same length (the same lines)
    out = {"s": tmp_path / "s" / "predictions.csv", "l": tmp_path / "l" / "predictions.csv"}
    for path in out.values():
        path.parent.mkdir()
    # each side's commands in one process, one after another (upquant_many: each through
    # `tui.cli.main` as the script runs it; the served side finds the server as `upquant` does)
    served_all = upquant_many(
        home, [[str(out["s"]) if a == "OUT" else a for a in args] for _, args in COMMANDS]
    )
    alone_all = upquant_many(
        local, [[str(out["l"]) if a == "OUT" else a for a in args] for _, args in COMMANDS],
        env=IN_PROCESS,
    )
    for (name, _args), served, alone in zip(COMMANDS, served_all, alone_all, strict=True):
        assert served.returncode == 0, (name, served.stdout, served.stderr)
        assert alone.returncode == 0, (name, alone.stdout, alone.stderr)
        if name == "predict":  # the same predictions, in the same file format
            assert out["s"].read_bytes() == out["l"].read_bytes()
            alone.stdout = alone.stdout.replace(str(out["l"]), str(out["s"]))
        # where the store is (an artifact's path) is all that may tell the two stores apart
        _same(name, served.stdout.replace(str(home), str(local)), alone.stdout, varying)

    info = json.loads(upquant(home, "server", "status", "--json").stdout)
    assert info["pid"] == server.process.pid  # every command above went through it
    if live:
        status, session = server.call("live_status", {})
        assert status == 200 and session["running"], session  # the session went on meanwhile
        assert session["candles_seen"] > 0, session
        assert server.call("live_stop", {})[0] == 200
    assert server.stop() == 0, server.output()


def test_run_follows_the_servers_session_and_leaves_the_server_running(
    tmp_path: Path, servers: Servers
) -> None:
    """`upquant run` while a server owns the store: it starts the server's session (a replay
    here), prints its buy/sell signals as they stream, and ends with the replay; the server
    goes on, and every signal printed is one the server stored."""
    home = store_with_candles(tmp_path)
    server = servers(home)
    ran = upquant(home, "run", "--market", "KRW-BTC", "--offline", "--replay-delay", "0.02",
                  "--replay-candles", "300", timeout=300)
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert f"attached to {server.url}" in ran.stderr
    assert "the replay ended: 300 candles played" in ran.stderr
    assert f"the server at {server.url} keeps running" in ran.stdout
    assert server.process.poll() is None
    stored = server.ok("signals", {"market": "KRW-BTC", "last": 1000})
    rows = stored["signals"] if isinstance(stored, dict) else stored
    kept = {(row["ts"][:16].replace("T", " "), row["action"].upper()) for row in rows}
    printed = [line.split()[:4] for line in ran.stdout.splitlines() if " KRW-BTC " in line]
    assert printed, ran.stdout  # the sma-cross rule trades in 300 candles of KRW-BTC 1m
    for date, time, market, action in printed:
        assert market == "KRW-BTC" and (f"{date} {time}", action) in kept, (date, time, action)
    assert server.stop() == 0, server.output()
