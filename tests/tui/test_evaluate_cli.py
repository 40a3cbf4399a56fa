"""`upquant evaluate MODEL --walk-forward` as a real process, a real store of XGBoost models
trained on real candles: with no server it runs the job itself and prints the same numbers as
the in-thread computation (--json and the table); Ctrl-C cancels the run (exit 130, the run
`interrupted`); with `upquant serve` running it goes through the server, same output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from engine.service.evaluation import walk_forward_result
from engine.training.evaluation import walk_forward_evaluate
from store.db import connect
from store.evaluation_runs import get_evaluation_run
from tests.engine.service import test_registry_ops
from tests.engine.service.test_registry_ops import NAME
from tests.tui.test_cli import UPQUANT, upquant, upquant_many
from tests.tui.test_serve import start

pytestmark = pytest.mark.slow

trained = test_registry_ops.trained  # two xgb versions on KRW-BTC 1m, eth on KRW-ETH


@pytest.fixture
def store(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    shutil.copytree(trained, home)
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    return home


def expected(ref: str, folds: int) -> dict[str, Any]:
    con = connect()
    try:
        return walk_forward_result(walk_forward_evaluate(con, ref, folds)).model_dump(mode="json")
    finally:
        con.close()


def test_without_a_server_it_runs_the_job_itself(store: Path) -> None:
    done, table, failed = upquant_many(store, [
        ["evaluate", f"{NAME}@1", "--walk-forward", "--folds", "2", "--json"],
        ["evaluate", f"{NAME}@1", "--walk-forward", "--folds", "2"],
        ["evaluate", NAME, "--walk-forward", "--folds", "5"],
    ])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected(f"{NAME}@1", 2)
    assert table.returncode == 0 and f"{NAME}@1, 2 folds" in table.stdout, table.stderr
    assert failed.returncode == 1 and "too few for 5 folds" in failed.stderr
    con = connect()
    try:  # each one a run in the store: two finished, one failed
        statuses = [get_evaluation_run(con, run).status for run in (1, 2, 3)]
        assert statuses == ["finished", "finished", "failed"]
    finally:
        con.close()


def _worker_of(pid: int) -> bool:
    """Whether process `pid`'s walk-forward worker (a multiprocessing spawn) is fitting: it
    has XGBoost's library loaded (the command follows the run by then)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            maps = Path(f"/proc/{child}/maps").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and b"libxgboost" in maps:
            return True
    return False


def test_ctrl_c_cancels_the_run(store: Path) -> None:
    process = subprocess.Popen(
        [UPQUANT, "evaluate", f"{NAME}@1", "--walk-forward", "--folds", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "UPQUANT_HOME": str(store)},
    )
    deadline = time.monotonic() + 120
    while not _worker_of(process.pid):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted (Ctrl-C)" in err, err
    con = connect()
    try:
        run = get_evaluation_run(con, 1)
        assert run.status == "interrupted" and run.result is None, run
        # cancelled by the command, or (Ctrl-C before it had the run's id) by its shutdown
        assert run.error in ("stopped by Ctrl-C or a signal", "stopped: its owner shut down")
    finally:
        con.close()


def test_through_a_running_server(store: Path) -> None:
    server = start(store)
    try:
        routed = upquant(store, "evaluate", f"{NAME}@1", "--walk-forward", "--folds", "2", "--json")
        assert routed.returncode == 0, routed.stderr
        result = json.loads(routed.stdout)
    finally:
        code, err = server.stop()
    assert code == 0, err
    assert result == expected(f"{NAME}@1", 2)
