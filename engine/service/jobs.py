"""Training jobs: each run fitted in a worker process, recorded by the process that holds the
store (DESIGN: one owner of the store).

`JobManager.start` / `resume` create (or claim) the run's `training_runs` row, read what it
learns from (`engine.training.train.gather_inputs`) and return at once; the run is fitted by
`engine.training.worker` in a `spawn`ed process that never opens DuckDB. A thread per job
reads the worker's pipe and applies each event to the store as it arrives (epoch metrics,
progress, heartbeat, checkpoint; at the end the model registered in one transaction), so the
server's event loop, its predictions and the live engine never wait on a fit.

One job per device at a time: cpu jobs and cuda jobs queue separately, a waiting one reads
`queued`. `cancel` stops a job's worker (its run `interrupted`, resumable from its last
checkpoint); `shutdown` does so for every job (the server's SIGTERM, the end of a one-shot
command). If the owner dies without a word, its workers notice and exit, and its runs read
`interrupted` from the owner's pid (store.processes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

    from engine.training.fit import FitInputs, Progress  # torch: loaded by the worker, not here
    from engine.training.train import TrainReport

# how long a stopped worker gets to say so before it is killed
STOP_GRACE_S = 10.0


@dataclass
class Job:
    """A training job this process owns: its run, device, state and what it reported."""

    run_id: int
    device: str
    config: dict[str, Any]
    inputs: FitInputs | None
    state: str = "queued"  # queued, running, finished, failed, interrupted
    process: BaseProcess | None = None
    phases: dict[str, Progress] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    report: TrainReport | None = None
    error: str | None = None
    hint: str | None = None
    stop_reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.done.is_set()


def job_device(config: dict[str, Any]) -> str:
    """The device queue a run waits in: `cpu`, or the CUDA device its model asks for."""
    if config["kind"] == "ensemble":
        return "cpu"
    from models.devices import resolve_device

    return resolve_device(str(config["params"].get("device", "auto")))


def _stderr_usable() -> bool:
    """Whether sys.stderr is a file with a descriptor: not inside a Textual app (a TUI hosting
    the server), where it is a capture with none (fileno -1) and the terminal is the TUI's."""
    import sys

    try:
        return sys.stderr is not None and sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is a ValueError
        return False


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (spawned workers report to it) where it
    could not start itself: it hands its process sys.stderr's descriptor, which a Textual
    app's capture lacks, so every spawn failed with "bad value(s) in fds_to_keep". There
    its stderr is /dev/null (the terminal is the TUI's)."""
    from multiprocessing import resource_tracker

    if _stderr_usable():
        return  # the spawn starts it itself
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        resource_tracker.ensure_running()


class JobManager:
    """The training jobs of one store owner (see the module docstring). `con` gives the
    calling thread's connection to the store."""

    def __init__(
        self,
        con: Callable[[], duckdb.DuckDBPyConnection],
        on_event: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self._con = con
        self._on_event = on_event  # each status or progress change, as a `job` event
        self._lock = threading.Lock()  # jobs, queues, devices
        self._write = threading.Lock()  # one job write at a time: no conflicting updates
        self._jobs: dict[int, Job] = {}
        self._queues: dict[str, deque[Job]] = {}
        self._busy: dict[str, Job] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False

    # --- starting ------------------------------------------------------------------------
    def start(self, settings: dict[str, Any]) -> int:
        """A new run with `settings` (`engine.training.train.prepare_run`'s arguments):
        started, or queued behind its device's job; returns its run id."""
        run_id, config = self.prepare(settings)
        return self._enqueue(run_id, config)

    def prepare(self, settings: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`start`'s first half: the run's row created, with its settings (run id, settings);
        `enqueue` them next. A caller that must know the run even when its start fails (a
        retrain reports it) calls both."""
        from engine.training.train import prepare_run

        with self._write:
            return prepare_run(self._con(), **settings)

    def enqueue(self, run_id: int, config: dict[str, Any]) -> int:
        """`start`'s second half: the prepared run started, or queued behind its device's job
        (a failure to read what it learns from marks it failed and raises)."""
        return self._enqueue(run_id, config)

    def resume(self, run_id: int, restart: bool = False, kind: str = "", market: str = "") -> int:
        """Continue interrupted or failed run `run_id` (from scratch with `restart`)."""
        from engine.training.train import resume_run

        with self._lock:
            job = self._jobs.get(run_id)
            if job is not None and not job.finished:
                from engine.service.core import Conflict

                raise Conflict(
                    f"run {run_id} is {job.state} here",
                    f"cancel it first: DELETE /api/v1/training-runs/{run_id}",
                )
        with self._write:
            config = resume_run(self._con(), run_id, restart, kind=kind, market=market)
        return self._enqueue(run_id, config)

    def _enqueue(self, run_id: int, config: dict[str, Any]) -> int:
        from engine.training.train import gather_inputs
        from store.registry import update_run

        con = self._con()
        try:
            if self._closed:
                raise RuntimeError("the job owner is shutting down; start the run again later")
            device = job_device(config)
            inputs = gather_inputs(con, config)
        except BaseException as exc:  # the run was refused before its worker: failed
            with self._write:
                update_run(con, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        job = Job(run_id, device, config, inputs)
        with self._lock:
            self._jobs[run_id] = job
            if device in self._busy:
                self._queues.setdefault(device, deque()).append(job)
                with self._write:
                    update_run(con, run_id, status="queued", log=f"queued for {device}")
                self._notify(job, "queued", message=f"queued for {device}")
                return run_id
            self._busy[device] = job
            self._launch(job)
        return run_id

    def _launch(self, job: Job) -> None:
        """Spawn the job's worker and the thread that records its events (under `_lock`)."""
        from engine.training import worker
        from store.db import home

        context = multiprocessing.get_context("spawn")
        _start_resource_tracker()
        receive, send = context.Pipe(duplex=False)
        # not a daemon: a daemonic process may not start the processes joblib's trials use
        job.process = context.Process(
            target=worker.main,
            args=(send, str(home()), os.getpid(), job.run_id, job.config, job.inputs),
            # under a TUI its output would be drawn over the screen (its failure is reported)
            kwargs={"quiet": not _stderr_usable()},
            name=f"upquant-train-{job.run_id}",
        )
        job.process.start()
        send.close()  # the worker holds the only writing end: its exit closes the pipe
        job.inputs = None  # the worker has them
        job.state = "running"
        self._notify(job, "running")
        thread = threading.Thread(
            target=self._follow, args=(job, receive), name=f"upquant-job-{job.run_id}"
        )
        self._threads.append(thread)
        thread.start()

    # --- following -----------------------------------------------------------------------
    def _follow(self, job: Job, receive: Connection) -> None:
        """Record the worker's events in the store until its final one, or its exit."""
        from store.registry import update_run

        con = self._con()
        final: tuple[Any, ...] | None = None
        try:
            if job.state == "queued":  # it waited: it is the device's now
                with self._write:
                    update_run(con, job.run_id, status="running")
            while final is None:
                try:
                    event = receive.recv()
                except (EOFError, OSError):  # the worker exited without a final word
                    break
                if event[0] in ("done", "failed", "interrupted"):
                    final = event
                else:
                    self._apply(con, job, event)
            self._end(con, job, final)
        finally:
            receive.close()
            process = job.process
            if process is not None:
                process.join(STOP_GRACE_S)
                if process.is_alive():
                    process.kill()
                    process.join()
            job.done.set()
            self._next(job.device)

    def _apply(self, con: duckdb.DuckDBPyConnection, job: Job, event: tuple[Any, ...]) -> None:
        from store.registry import beat, log_epoch, update_run

        what = event[0]
        with self._write:
            if what == "epoch":
                log_epoch(con, job.run_id, event[1], event[2], split=event[3])
            elif what == "progress":
                update_run(con, job.run_id, progress=float(event[1]))
            elif what == "beat":
                beat(con, job.run_id)
            elif what == "checkpoint":
                update_run(con, job.run_id, checkpoint=str(event[1]))
        if what == "progress":
            self._notify(job, "running", progress=float(event[1]))
        if what == "notify":
            progress: Progress = event[1]
            if progress.phase == "step":
                job.messages.append(progress.text)
            else:
                job.phases[progress.phase] = progress

    def _notify(
        self, job: Job, status: str, progress: float | None = None, message: str | None = None
    ) -> None:
        if self._on_event is not None:
            from engine.service.events import job_event

            with contextlib.suppress(Exception):  # a listener never stops a job
                self._on_event(job_event(job.run_id, status, progress, message))

    def _end(self, con: duckdb.DuckDBPyConnection, job: Job, final: tuple[Any, ...] | None) -> None:
        """Record how the job ended: registered and finished, failed, or interrupted."""
        try:
            self._record_end(con, job, final)
        finally:
            report = job.report
            message = (
                f"registered {report.model.ref}"
                if job.state == "finished" and report
                else job.error
            )
            self._notify(job, job.state, 1.0 if job.state == "finished" else None, message)

    def _record_end(
        self, con: duckdb.DuckDBPyConnection, job: Job, final: tuple[Any, ...] | None
    ) -> None:
        from engine.training.train import finish_run, register
        from store.registry import beat, update_run

        if final is not None and final[0] == "done" and job.stop_reason is None:
            try:
                with self._write:
                    beat(con, job.run_id)
                    job.report = register(con, job.run_id, job.config, final[1])
                    finish_run(con, job.run_id)
                job.state = "finished"
                return
            except Exception as exc:  # noqa: BLE001  recorded as the run's failure
                final = ("failed", type(exc).__name__, str(exc), getattr(exc, "hint", None))
        if final is not None and final[0] == "failed" and job.stop_reason is None:
            _, kind, message, hint = final
            job.state, job.error, job.hint = "failed", message, hint
            with self._write:
                update_run(con, job.run_id, status="failed", error=f"{kind}: {message}")
            return
        reason = job.stop_reason or (
            final[1]
            if final is not None and final[0] == "interrupted"
            else f"its worker process exited with code {job.process and job.process.exitcode}"
        )
        job.state, job.error = "interrupted", reason
        with self._write:
            update_run(con, job.run_id, status="interrupted", error=reason)

    def _next(self, device: str) -> None:
        """The device is free: start the next job queued for it."""
        with self._lock:
            if self._busy.get(device) is not None and self._busy[device].finished:
                del self._busy[device]
            queue = self._queues.get(device)
            while queue and not self._closed:
                job = queue.popleft()
                if job.finished:  # cancelled while queued
                    continue
                self._busy[device] = job
                self._launch(job)
                return

    # --- asking and stopping -------------------------------------------------------------
    def get(self, run_id: int) -> Job | None:
        """The job of run `run_id`, when this process ran or runs it."""
        with self._lock:
            return self._jobs.get(run_id)

    def status(self, run_id: int) -> str | None:
        job = self.get(run_id)
        return None if job is None else job.state

    def cancel(self, run_id: int, reason: str = "cancelled", timeout: float = 30.0) -> Job | None:
        """Stop run `run_id`'s job (its run `interrupted`, resumable); returns once it has
        stopped (within `timeout`), None when this process does not run it."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or job.finished:
                return job
            job.stop_reason = job.stop_reason or reason
            queued = job.state == "queued"
            if queued:
                queue = self._queues.get(job.device)
                if queue is not None and job in queue:
                    queue.remove(job)
                job.state, job.error = "interrupted", job.stop_reason
                job.inputs = None
                job.done.set()
            elif job.process is not None and job.process.is_alive():
                job.process.terminate()  # SIGTERM: the worker stops as on Ctrl-C
        if queued:
            from store.registry import update_run

            with self._write:
                update_run(self._con(), run_id, status="interrupted", error=job.stop_reason)
            self._notify(job, "interrupted", message=job.stop_reason)
            return job
        if not job.done.wait(min(timeout, STOP_GRACE_S)) and job.process is not None:
            job.process.kill()  # it did not stop when asked: a cancelled job ends now
            job.done.wait(max(timeout - STOP_GRACE_S, STOP_GRACE_S))
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job (their runs `interrupted`, resumable) and wait for their workers
        (killed after `timeout`); no job starts afterwards."""
        with self._lock:
            self._closed = True
            jobs = [job for job in self._jobs.values() if not job.finished]
        for job in sorted(jobs, key=lambda j: j.state != "queued"):  # queued first: none starts
            self.cancel(job.run_id, "stopped: its owner shut down", timeout)
        for thread in self._threads:
            thread.join(STOP_GRACE_S)
