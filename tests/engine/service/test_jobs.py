"""Training jobs: real runs fitted in spawned worker processes and recorded by the store's
owner (engine.service.jobs through the training operations): progress while it runs,
cancel → interrupted → resume, one job per device (a second cpu job queues), shutdown, and
an owner killed with SIGKILL leaving no worker behind and a resumable run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from engine.service import Workstation
from engine.service.training import (
    TrainHistoryRequest,
    TrainRunRequest,
    TrainStartRequest,
    TrainStatus,
    TrainStatusRequest,
)
from store.candles import upsert_candles
from store.db import connect
from store.processes import _running
from store.registry import get_run, list_models

pytestmark = pytest.mark.slow

XGB = {"kind": "xgboost", "market": "KRW-BTC", "n_estimators": 40, "device": "cpu"}
# several epochs of a tiny network: still mid-training when its first epoch is recorded
# (early stopping waits for 3 bad epochs after the best: at least 4 more); windows of 20 rows
# (not the default 60) make each epoch a third of the work
LSTM = {
    "kind": "lstm",
    "market": "KRW-BTC",
    "epochs": 30,
    "batch_size": 32,
    "window": 20,
    "device": "cpu",
}


def wait_for[T](what: Callable[[], T], timeout: float = 240.0) -> T:
    """`what()` once it is truthy, polling; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return value


@pytest.fixture
def ws(home: Path, btc_1m: pd.DataFrame) -> Iterator[Workstation]:
    with Workstation() as workstation:
        upsert_candles(workstation.con(), btc_1m.iloc[:3000])
        yield workstation


def status(ws: Workstation, run: int) -> TrainStatus:
    return ws.train_status(TrainStatusRequest(run=run))


def finished(ws: Workstation, run: int) -> TrainStatus:
    return wait_for(lambda: (s := status(ws, run)).status not in ("queued", "running") and s)


def test_a_worker_process_trains_and_the_owner_registers(ws: Workstation) -> None:
    started = ws.train_start(TrainStartRequest(**XGB))
    assert started.status == "running" and started.status_url.endswith(f"/{started.run}")
    job = ws.jobs.get(started.run)
    assert job is not None and job.process is not None and job.process.pid != os.getpid()
    done = finished(ws, started.run)
    assert done.status == "finished", done.error
    assert done.result is not None and done.result.model == "xgboost-KRW-BTC-1@1"
    assert done.model == "xgboost-KRW-BTC-1@1" and done.progress == 1.0
    assert done.result.rows["train"] > 0 and "test" in done.result.metrics
    assert [m.ref for m in list_models(ws.con())] == ["xgboost-KRW-BTC-1@1"]
    run = get_run(ws.con(), started.run)
    assert run.pid == os.getpid() and run.model_id == done.result.id  # the owner holds it
    [history] = ws.train_history(TrainHistoryRequest(model="xgboost-KRW-BTC-1")).root
    assert history.run == started.run and len(history.epochs) == 40
    assert job.done.wait(30) and not job.process.is_alive()  # the worker is reaped


def test_a_refused_run_fails_at_once_with_the_reason(ws: Workstation) -> None:
    from engine.service import ServiceError

    with pytest.raises(Exception, match="no KRW-ETH unit 1 candles"):
        ws.train_start(TrainStartRequest(**{**XGB, "market": "KRW-ETH"}))
    with pytest.raises(ServiceError, match="restart goes with resume"):
        ws.train_start(TrainStartRequest(**XGB, restart=True))


def test_progress_shows_while_it_runs_and_a_cancelled_run_resumes(
    ws: Workstation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UPQUANT_JOB_PRIORITY")  # the default: SCHED_IDLE, checked below
    run = ws.train_start(TrainStartRequest(**LSTM)).run
    # the owner stores an epoch's metrics, then its progress, then its phase, one event at a
    # time: wait until the status shows both
    running = wait_for(lambda: (s := status(ws, run)).latest is not None and s.phases and s)
    assert running.status == "running" and running.latest is not None
    assert running.latest.split == "epoch" and "val_loss" in running.latest.metrics
    assert [p.phase for p in running.phases] == ["epoch"]
    worker = ws.jobs.get(run)
    assert worker is not None and worker.process is not None and worker.process.pid is not None
    if sys.platform == "linux":  # the job runs on the CPU the server leaves (SCHED_IDLE)
        assert os.sched_getscheduler(worker.process.pid) == os.SCHED_IDLE
    cancelled = ws.train_cancel(TrainRunRequest(run=run))
    assert cancelled.status == "interrupted" and cancelled.error == "cancelled"
    assert cancelled.checkpoint and Path(cancelled.checkpoint).exists()
    job = ws.jobs.get(run)
    assert job is not None and job.process is not None and not job.process.is_alive()
    epochs_before = len(ws.train_history(TrainHistoryRequest(run=run)).root[0].epochs)
    assert epochs_before >= 1

    assert ws.train_start(TrainStartRequest(resume=run)).run == run
    done = finished(ws, run)
    assert done.status == "finished" and "resumed from" in (done.log or "")
    [history] = ws.train_history(TrainHistoryRequest(run=run)).root
    steps = [e.step for e in history.epochs]
    assert steps == list(range(len(steps))) and len(steps) >= epochs_before  # one series


def test_a_second_cpu_job_queues_until_the_first_is_done(ws: Workstation) -> None:
    first = ws.train_start(TrainStartRequest(**LSTM)).run
    second = ws.train_start(TrainStartRequest(**XGB))
    assert second.status == "queued" and status(ws, second.run).status == "queued"
    assert get_run(ws.con(), second.run).status == "queued"
    ws.train_cancel(TrainRunRequest(run=first))
    done = finished(ws, second.run)
    assert done.status == "finished" and status(ws, first).status == "interrupted"


def test_a_cancelled_queued_job_never_starts(ws: Workstation) -> None:
    first = ws.train_start(TrainStartRequest(**LSTM)).run
    second = ws.train_start(TrainStartRequest(**XGB)).run
    assert ws.train_cancel(TrainRunRequest(run=second)).status == "interrupted"
    ws.train_cancel(TrainRunRequest(run=first))
    job = ws.jobs.get(second)
    assert job is not None and job.process is None


def test_shutdown_interrupts_the_jobs(home: Path, btc_1m: pd.DataFrame) -> None:
    ws = Workstation()
    upsert_candles(ws.con(), btc_1m.iloc[:3000])
    run = ws.train_start(TrainStartRequest(**LSTM)).run
    queued = ws.train_start(TrainStartRequest(**XGB)).run
    wait_for(lambda: status(ws, run).latest)
    job = ws.jobs.get(run)
    assert job is not None and job.process is not None
    ws.close()  # what `upquant serve` does on SIGTERM, and a command when it is done
    assert not job.process.is_alive()
    con = connect()
    try:
        for run_id in (run, queued):
            stopped = get_run(con, run_id)
            assert stopped.status == "interrupted", stopped
            assert stopped.error == "stopped: its owner shut down"
    finally:
        con.close()


_OWNER = """
import json, sys, time
from engine.service import Workstation
from engine.service.training import TrainStartRequest, TrainStatusRequest
ws = Workstation()
run = ws.train_start(TrainStartRequest(**json.loads(sys.argv[1]))).run
while ws.train_status(TrainStatusRequest(run=run)).latest is None:
    time.sleep(0.05)
print(json.dumps({"run": run, "worker": ws.jobs.get(run).process.pid}), flush=True)
time.sleep(600)
"""


def test_an_owner_killed_leaves_no_worker_and_a_resumable_run(home: Path, btc_1m) -> None:
    con = connect()
    upsert_candles(con, btc_1m.iloc[:3000])
    con.close()
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, json.dumps(LSTM)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "UPQUANT_HOME": str(home)},
    )
    assert owner.stdout is not None
    started = json.loads(owner.stdout.readline())
    assert _running(started["worker"])
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    wait_for(lambda: not _running(started["worker"]), timeout=30)  # no orphan worker
    with Workstation() as ws:
        run = get_run(ws.con(), started["run"])
        assert run.status == "interrupted" and "is gone" in (run.error or ""), run
        assert run.checkpoint and Path(run.checkpoint).exists()
        ws.train_start(TrainStartRequest(resume=started["run"]))
        assert finished(ws, started["run"]).status == "finished"
