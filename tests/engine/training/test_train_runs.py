"""A training run whose process dies is `interrupted` and resumable: real `upquant train`
processes killed with SIGKILL or stopped with SIGTERM, then `upquant train --resume RUN`;
a damaged checkpoint is named, with the way to start the run again (`--restart`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from store.db import connect
from store.processes import HEARTBEAT_LIMIT, Owner, gone, process_start, this_process
from store.registry import RunRecord, get_run, list_runs, run_epochs
from tests.conftest import DATA
from tests.tui.test_cli import UPQUANT, upquant

# a small network that still takes several epochs (early stopping waits `patience` = 3 bad
# ones), so the run is mid-training when its first checkpoint appears
TRAIN = ["train", "lstm", "KRW-BTC", "--epochs", "30", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    csv = tmp_path / "btc.csv"
    pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=3000).to_csv(csv, index=False)
    home = tmp_path / "home"
    imported = upquant(home, "data", "import", str(csv), "--market", "KRW-BTC", "--unit", "1")
    assert imported.returncode == 0, imported.stderr
    return home


def _train_until_checkpoint(home: Path, run_id: int) -> subprocess.Popen[str]:
    """Start `upquant train` and return once its first epoch's checkpoint is on disk (the
    store itself is locked by the training process)."""
    process = subprocess.Popen(
        [UPQUANT, *TRAIN],
        env={**os.environ, "UPQUANT_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = home / "runs" / str(run_id) / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    return process


def _run(home: Path, run_id: int) -> RunRecord:
    con = connect(home / "upquant.duckdb", read_only=True)
    try:
        return get_run(con, run_id)
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_stopped_run_is_interrupted_and_resumes(store: Path, signum: int) -> None:
    process = _train_until_checkpoint(store, 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in stderr
    run = _run(store, 1)
    assert run.status == "interrupted", run
    assert run.pid == process.pid and run.host == socket.gethostname()
    assert run.heartbeat is not None and run.started is not None
    assert run.heartbeat > run.started  # stamped as the run progressed
    assert (store / "runs" / "1" / "checkpoint.pt").exists()
    if signum == signal.SIGKILL:
        # the resume below is the same path after either end (interrupted, a checkpoint):
        # run once, after SIGTERM (the suite's 10-minute budget)
        return
    # candles that arrive meanwhile do not change what the resumed run learns from
    later = pd.read_csv(DATA / "KRW-BTC_1m.csv", skiprows=range(1, 3001), nrows=500)
    later.to_csv(store.parent / "later.csv", index=False)
    added = upquant(
        store, "data", "import", str(store.parent / "later.csv"), "--market", "KRW-BTC", "-u", "1"
    )
    assert added.returncode == 0, added.stderr

    resumed = upquant(store, "train", "--resume", "1", "--json", timeout=280)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["run"] == 1 and report["model"] == "lstm-KRW-BTC-1@1"
    shown = json.loads(upquant(store, "models", "show", "lstm-KRW-BTC-1@1", "--json").stdout)
    assert pd.Timestamp(shown["tags"]["test_to"]) < pd.Timestamp(later["timestamp"][0], tz="UTC")
    run = _run(store, 1)
    assert run.status == "finished" and run.model_id == report["id"]
    assert "resumed from" in (run.log or "")
    assert not (store / "runs" / "1").exists()  # a finished run keeps no checkpoint
    again = upquant(store, "train", "--resume", "1")
    assert again.returncode == 1 and "run 1 is finished" in again.stderr


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_with_the_way_to_restart(store: Path) -> None:
    process = _train_until_checkpoint(store, 1)
    process.kill()
    process.communicate(timeout=120)
    checkpoint = store / "runs" / "1" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])

    refused = upquant(store, "train", "--resume", "1")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    first, hint = refused.stderr.strip().splitlines()
    assert f"checkpoint {checkpoint} is damaged" in first
    assert hint == "hint: run it again from its first epoch: `upquant train --resume 1 --restart`"
    assert _run(store, 1).status == "failed"

    restarted = upquant(store, "train", "--resume", "1", "--restart", "--json")
    assert restarted.returncode == 0, restarted.stderr
    run = _run(store, 1)
    assert run.status == "finished" and "restarted from scratch" in (run.log or "")
    con = connect(store / "upquant.duckdb", read_only=True)
    epochs = run_epochs(con, 1)
    twice = con.execute(
        "SELECT step, name FROM metrics WHERE run_id = 1 AND step IS NOT NULL"
        " GROUP BY step, name HAVING count(*) > 1"
    ).fetchall()
    con.close()
    assert sorted(epochs) == list(range(len(epochs))) and twice == []  # one series, from 0


def test_resume_refuses_a_kind_or_market_that_is_not_the_runs(tmp_path: Path) -> None:
    missing = upquant(tmp_path, "train", "lstm")
    assert missing.returncode == 2 and "Missing argument 'market'" in missing.stderr
    alone = upquant(tmp_path, "train", "lstm", "KRW-BTC", "--restart")
    assert alone.returncode == 1 and "--resume RUN --restart" in alone.stderr


# --- whether a run's process is gone ---------------------------------------------------------
def test_a_live_process_is_not_gone_and_a_reaped_one_is() -> None:
    me = this_process()
    assert gone(me, None) is None
    child = subprocess.Popen(["sleep", "30"])
    owner = Owner(child.pid, me.host, process_start(child.pid))
    assert gone(owner, None) is None
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    assert "is gone" in (gone(owner, None) or "")
    child.wait()
    assert "is gone" in (gone(owner, None) or "")


def test_a_reused_pid_is_not_taken_for_the_runs_process() -> None:
    me = this_process()
    if me.start is None:
        pytest.skip("no /proc: the pid alone decides")
    reused = Owner(me.pid, me.host, me.start.rsplit(":", 1)[0] + ":1")
    assert "the pid is reused" in (gone(reused, None) or "")


def test_another_hosts_run_is_gone_once_its_heartbeat_is_stale() -> None:
    other = Owner(1, socket.gethostname() + "-elsewhere", None)
    now = datetime.now(UTC)
    assert gone(other, now - timedelta(minutes=1), now) is None
    stale = gone(other, now - HEARTBEAT_LIMIT - timedelta(seconds=1), now)
    assert stale is not None and "no heartbeat" in stale
    assert gone(None, now) is not None  # a run from before owners were recorded


def test_a_run_whose_process_died_reads_as_interrupted_everywhere(con) -> None:
    """A `running` row left by a process that is gone: get_run and list_runs say
    `interrupted` and store it."""
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    con.execute(
        "INSERT INTO training_runs (status, progress, started, kind, market, unit, config, pid,"
        " host, heartbeat) VALUES ('running', 0.3, now(), 'lstm', 'KRW-BTC', '1', '{}', ?, ?,"
        " now())",
        [child.pid, socket.gethostname()],
    )
    [listed] = list_runs(con)
    assert listed.status == "interrupted" and f"process {child.pid}" in (listed.error or "")
    stored = con.execute("SELECT status FROM training_runs WHERE id = ?", [listed.id]).fetchall()
    assert stored == [("interrupted",)] and get_run(con, listed.id).status == "interrupted"


# A signal that lands inside a DuckDB query is swallowed by DuckDB, which raises
# RuntimeError("Query interrupted") instead of KeyboardInterrupt: the run must still read as
# interrupted, and the command exit as stopped by that signal. `upquant train` queries the
# store while it follows its job (the job's worker never does), so the script parks a real
# query on the command's connection once the first epoch is recorded and sends itself one
# SIGTERM while it runs (a real `kill` lands there only sometimes). DuckDB notices a signal
# only between its tasks, and on a loaded machine it did not within minutes; so if the query
# still runs after 5 s the script interrupts it the way DuckDB's own `interrupt()` does
# (InterruptException), and the pending signal then stops the command right after. The job
# must outlast all that: with TRAIN's 30 epochs and early stopping (about 10 s in all on CI)
# the worker finished while the query was parked, and the run read `finished`, rightly; so
# the script turns early stopping off and asks for 3000 epochs.
_LONG_TRAIN = [*TRAIN[:3], "--epochs", "3000", *TRAIN[5:]]
_SIGNAL_IN_A_QUERY = """
import os, signal, sys, threading
from tui.cli import main
from engine.service.training import TrainingOps
import engine.training.kind_params as kp

chosen = kp.kind_params
kp.kind_params = lambda kind, **given: {**chosen(kind, **given), "patience": 100000}

followed = TrainingOps.train_status
parked = []
def train_status(self, request):
    status = followed(self, request)
    if status.latest is None or parked:  # once: train_cancel asks for the status too
        return status
    parked.append(True)
    con, done = self.con(), threading.Event()
    def stop():
        if not done.wait(0.5):
            os.kill(os.getpid(), signal.SIGTERM)
        if not done.wait(5):
            con.interrupt()
    threading.Thread(target=stop, daemon=True).start()
    try:
        con.execute("select count(*) from range(1000000000000) t(a) where a % 7 = 3").fetchall()
    finally:
        done.set()
    return status
TrainingOps.train_status = train_status
sys.argv = ["upquant", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_signal_inside_a_query_interrupts_the_run(store: Path) -> None:
    stopped = subprocess.run(
        [str(Path(UPQUANT).with_name("python")), "-c", _SIGNAL_IN_A_QUERY, *_LONG_TRAIN],
        env={**os.environ, "UPQUANT_HOME": str(store)},
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == "interrupted (SIGTERM)"
    run = _run(store, 1)
    assert run.status == "interrupted" and run.error == "stopped by Ctrl-C or a signal", run
