"""The worker side of a training job: a spawned process that fits one run and never opens
the store.

Its owner (`engine.service.jobs.JobManager`, in the process that holds the store) hands it
the run's settings and what it learns from (`FitInputs`); it answers over a one-way pipe
with events the owner records (`PipeSink`): ("epoch", step, metrics, split), ("progress",
value), ("beat",), ("checkpoint", path), ("notify", Progress), then one final event:
("done", FitResult) (the artifact already written under $UPQUANT_HOME), ("failed", type,
message, hint) or ("interrupted", reason). SIGTERM (the owner cancelling it) and SIGINT
(Ctrl-C in its terminal) stop it as Ctrl-C stops an in-process run: checkpoint kept,
nothing written. It does not outlive its owner: a watcher thread ends it as soon as its
parent is gone (kill -9 of the server or of `upquant train`), and a closed pipe ends it on
its next event.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.training.fit import FitInputs, Progress

# how often the worker looks for its owner (a dead owner's orphan stops within this)
PARENT_POLL_S = 0.05


class PipeSink:
    """A run's reports sent to its owner over a pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, *event: Any) -> None:
        if _stopping.is_set() and event[0] != "interrupted":
            raise KeyboardInterrupt  # the stop signal's own exception was swallowed somewhere
        try:
            self.conn.send(event)
        except (BrokenPipeError, EOFError, OSError):  # the owner is gone: so is this run
            os._exit(3)

    def epoch(self, step: int, metrics: dict[str, float], split: str = "epoch") -> None:
        self.send("epoch", step, metrics, split)

    def progress(self, value: float) -> None:
        self.send("progress", value)

    def beat(self) -> None:
        self.send("beat")

    def checkpoint(self, path: Path) -> None:
        self.send("checkpoint", str(path))

    def notify(self, progress: Progress) -> None:
        self.send("notify", progress)


def _watch_parent(parent: int) -> None:
    """End this process once its parent is gone (it is re-parented: getppid changes)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(4)


# set by the first stop signal: a KeyboardInterrupt raised inside a C callback (numba's
# compiler, a ctypes hook) is printed and dropped, so the next event raises it again
_stopping = threading.Event()


def _stop(_signum: int, _frame: object) -> None:
    if _stopping.is_set():  # asked twice: no more grace
        os._exit(5)
    _stopping.set()
    raise KeyboardInterrupt


PRIORITIES = ("idle", "low", "normal")


def lower_priority(priority: str | None = None) -> str:
    """Give this process's CPU to its owner first (`UPQUANT_JOB_PRIORITY`, default `idle`):
    `idle` runs it only on CPU time nothing else wants (Linux SCHED_IDLE; nice 19 where there
    is none), `low` nice 10, `normal` as its owner. The server answers predictions and runs
    the live engine while a job trains: on the 2-core benchmark machine nice 19 did not help
    (a nice-19 busy loop cost the server 43% of its predict throughput and doubled its p99)
    and SCHED_IDLE did (scripts/bench_server.py: during an `idle` job, as idle). Returns
    the priority applied."""
    chosen = (priority or os.environ.get("UPQUANT_JOB_PRIORITY") or "idle").strip().lower()
    if chosen not in PRIORITIES:
        raise ValueError(
            f"UPQUANT_JOB_PRIORITY={chosen!r} is not one of {', '.join(PRIORITIES)}"
            " (idle: only spare CPU, the default; low: nice 10; normal: as the server)"
        )
    if chosen == "idle" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif chosen != "normal":
        os.nice(max(0, (19 if chosen == "idle" else 10) - os.nice(0)))
    return chosen


def main(
    conn: Connection,
    store_home: str,
    parent: int,
    run_id: int,
    config: dict[str, Any],
    inputs: FitInputs,
    quiet: bool = False,
) -> None:
    """Fit run `run_id` (the target of the job's spawned process); `quiet`: its stdout and
    stderr to /dev/null (its owner's terminal is a TUI's screen)."""
    if quiet:
        sink_fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink_fd, 1)
        os.dup2(sink_fd, 2)
        os.close(sink_fd)
    os.environ["UPQUANT_HOME"] = store_home  # artifacts and checkpoints go to the owner's store
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGTERM, _stop)
    sink = PipeSink(conn)

    try:
        lower_priority()  # before the fit: the threads and processes it starts inherit it
        from engine.training.fit import fit_run

        result = fit_run(run_id, config, inputs, sink)
    except KeyboardInterrupt:
        sink.send("interrupted", "stopped by Ctrl-C or a signal")
    except Exception as exc:  # noqa: BLE001  the owner records it as the run's error
        sink.send("failed", type(exc).__name__, str(exc), getattr(exc, "hint", None))
    else:
        if _stopping.is_set():
            sink.send("interrupted", "stopped by Ctrl-C or a signal")
        else:
            sink.send("done", result)
    finally:
        conn.close()
