"""Walk-forward evaluations as jobs (engine.service.evaluation): real XGBoost models trained on
real candles, each walk-forward fitted in a spawned worker process and recorded in the store
(`evaluation_runs`): the result equals the in-thread computation, progress counts folds, a
cancel, a shutdown or an owner killed (no orphan worker left) leaves the run interrupted, a
second one queues, and a new process reads a stored result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from engine.service import NotFound, ServiceError, Workstation
from engine.service.evaluation import (
    EvaluateRequest,
    EvaluationRunRequest,
    EvaluationRunStatus,
    walk_forward_result,
)
from engine.training.evaluation import walk_forward_evaluate
from store.processes import _running
from tests.engine.service import test_registry_ops
from tests.engine.service.test_registry_ops import NAME

# the registry tests' store (two xgb versions on KRW-BTC, eth on KRW-ETH), a copy per test
trained, ws = test_registry_ops.trained, test_registry_ops.ws

pytestmark = pytest.mark.slow


def wait_for[T](what: Callable[[], T], timeout: float = 240.0) -> T:
    """`what()` once it is truthy, polling; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return value


def ended(ws: Workstation, run: int) -> EvaluationRunStatus:
    def check() -> EvaluationRunStatus | None:
        status = ws.evaluation_status(EvaluationRunRequest(run=run))
        return None if status.status in ("queued", "running") else status

    return wait_for(check)


def test_a_walk_forward_job_stores_what_the_in_thread_computation_gives(ws: Workstation) -> None:
    started = ws.evaluate(EvaluateRequest(model=f"{NAME}@1", walk_forward=True, folds=3, wait=0))
    assert started.pending and started.run == 1 and started.status in ("queued", "running")
    assert started.status_url == "/api/v1/evaluation-runs/1"
    done = ended(ws, 1)
    assert done.status == "finished" and done.error is None, done
    assert (done.folds_done, done.folds_total, done.progress) == (3, 3, 1.0)
    assert done.finished is not None and done.finished >= done.started
    expected = walk_forward_result(walk_forward_evaluate(ws.con(), f"{NAME}@1", 3))
    assert done.result == expected  # same folds, same numbers
    # a generous wait answers the result itself, as a synchronous evaluation did
    quick = ws.evaluate(EvaluateRequest(model=f"{NAME}@1", walk_forward=True, folds=3, wait=300))
    assert not quick.pending and quick.status == "finished" and quick.run == 2
    assert quick.walk_forward == expected


def test_cancel_leaves_it_interrupted_and_a_second_one_queues(ws: Workstation) -> None:
    first = ws.evaluate(EvaluateRequest(model=f"{NAME}@1", walk_forward=True, folds=3, wait=0))
    stopped = ws.evaluation_cancel(EvaluationRunRequest(run=first.run or 0, reason="enough"))
    assert stopped.status == "interrupted", stopped
    assert stopped.error == "enough" and stopped.result is None and stopped.finished is not None
    again = ws.evaluation_cancel(EvaluationRunRequest(run=first.run or 0))  # ended: as it is
    assert again.status == "interrupted" and again.error == "enough"
    running = ws.evaluate(EvaluateRequest(model=f"{NAME}@1", walk_forward=True, folds=3, wait=0))
    queued = ws.evaluate(EvaluateRequest(model="eth", walk_forward=True, folds=2, wait=0))
    assert queued.status == "queued"  # one walk-forward fits at a time
    cancelled = ws.evaluation_cancel(EvaluationRunRequest(run=queued.run or 0))
    assert cancelled.status == "interrupted" and cancelled.error == "cancelled"
    assert ended(ws, running.run or 0).status == "finished"  # the line moves on
    third = ws.evaluate(EvaluateRequest(model="eth", walk_forward=True, folds=2, wait=300))
    assert third.status == "finished" and third.walk_forward is not None


def test_a_failed_fit_is_recorded_and_answered_as_an_error(ws: Workstation) -> None:
    with pytest.raises(ServiceError, match="too few for 5 folds"):
        ws.evaluate(EvaluateRequest(model=NAME, walk_forward=True, folds=5, wait=300))
    failed = ws.evaluation_status(EvaluationRunRequest(run=1))
    assert failed.status == "failed" and "too few for 5 folds" in (failed.error or "")
    assert failed.result is None and failed.folds_done == 0


def test_runs_outlive_their_owner(ws: Workstation) -> None:
    done = ws.evaluate(EvaluateRequest(model=NAME, walk_forward=True, folds=2, wait=300))
    running = ws.evaluate(EvaluateRequest(model=NAME, walk_forward=True, folds=3, wait=0))
    ws.close()  # the server's stop: its jobs end, their runs interrupted
    with Workstation() as again:
        stored = again.evaluation_status(EvaluationRunRequest(run=done.run or 0))
        assert stored.status == "finished" and stored.result == done.walk_forward
        stopped = again.evaluation_status(EvaluationRunRequest(run=running.run or 0))
        assert stopped.status == "interrupted" and "shut down" in (stopped.error or "")
        with pytest.raises(NotFound, match="no evaluation run 99"):
            again.evaluation_status(EvaluationRunRequest(run=99))


def test_what_cannot_be_walked_forward_fails_at_once(ws: Workstation) -> None:
    with pytest.raises(KeyError, match="no model 'nope'"):  # answered 404
        ws.evaluate(EvaluateRequest(model="nope", walk_forward=True, wait=0))
    rows = ws.con().execute("SELECT count(*) FROM evaluation_runs").fetchall()
    assert rows == [(0,)]  # nothing recorded for a refused one
    with pytest.raises(ValidationError, match="leave start and end out"):
        EvaluateRequest.model_validate(
            {"model": NAME, "walk_forward": True, "start": "2024-01-01T00:00:00Z"}
        )


_OWNER = """
import json, sys, time
from engine.service import Workstation
from engine.service.evaluation import EvaluateRequest
ws = Workstation()
run = ws.evaluate(EvaluateRequest(model="xgb@1", walk_forward=True, folds=3, wait=0)).run
print(json.dumps({"run": run, "worker": ws.evaluations.get(run).process.pid}), flush=True)
time.sleep(600)
"""


def test_an_owner_killed_leaves_no_worker_and_an_interrupted_run(ws: Workstation) -> None:
    ws.close()  # the store is the owner's below
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),  # UPQUANT_HOME: this test's copy of the store
    )
    assert owner.stdout is not None
    started = json.loads(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    wait_for(lambda: not _running(started["worker"]), timeout=30)  # no orphan worker
    with Workstation() as again:
        run = again.evaluation_status(EvaluationRunRequest(run=started["run"]))
        assert run.status == "interrupted" and "is gone" in (run.error or ""), run
        assert run.result is None
