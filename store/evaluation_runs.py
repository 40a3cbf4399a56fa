"""Walk-forward evaluation runs (`evaluation_runs`, migration 007): one row per job, owned by
the process that holds the store (`engine.service.evaluation`), read by anyone.

A `queued` or `running` row whose owner is gone (store.processes: killed, out of memory, its
terminal closed) reads, and is stored where the connection may write, as `interrupted`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import duckdb

from store.processes import Owner, gone, this_process

EVALUATION_STATUSES = ("queued", "running", "finished", "failed", "interrupted")
_COLUMNS = (
    "id, model_id, model, folds, threshold, status, folds_done, folds_total, started, finished,"
    " error, result, pid, host, process_start, heartbeat"
)


@dataclass(frozen=True)
class EvaluationRun:
    id: int
    model_id: int
    model: str
    folds: int
    threshold: float
    status: str
    folds_done: int
    folds_total: int | None
    started: datetime
    finished: datetime | None
    error: str | None
    result: dict[str, Any] | None
    pid: int | None = None
    host: str | None = None
    process_start: str | None = None
    heartbeat: datetime | None = None

    @property
    def owner(self) -> Owner | None:
        if self.pid is None or self.host is None:
            return None
        return Owner(self.pid, self.host, self.process_start)


def start_evaluation_run(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    model: str,
    folds: int,
    threshold: float,
    status: str = "queued",
) -> int:
    """A new run owned by this process."""
    me, now = this_process(), datetime.now(UTC)
    rows = con.execute(
        "INSERT INTO evaluation_runs (model_id, model, folds, threshold, status, started, pid,"
        " host, process_start, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [model_id, model, folds, threshold, status, now, me.pid, me.host, me.start, now],
    ).fetchall()
    return int(rows[0][0])


def update_evaluation_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    *,
    status: str | None = None,
    folds_done: int | None = None,
    folds_total: int | None = None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """Record a run's progress (a heartbeat too); a final status stamps `finished`."""
    if status is not None and status not in EVALUATION_STATUSES:
        raise ValueError(f"unknown evaluation status {status!r}")
    sets: list[str] = ["heartbeat = ?"]
    params: list[object] = [datetime.now(UTC)]
    for column, value in (
        ("status", status),
        ("folds_done", folds_done),
        ("folds_total", folds_total),
        ("error", error),
        ("result", None if result is None else json.dumps(result)),
    ):
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(value)
    if status is not None and status not in ("queued", "running"):
        sets.append("finished = ?")
        params.append(datetime.now(UTC))
    con.execute(f"UPDATE evaluation_runs SET {', '.join(sets)} WHERE id = ?", [*params, run_id])


def get_evaluation_run(con: duckdb.DuckDBPyConnection, run_id: int) -> EvaluationRun:
    """The run (KeyError when there is none); an unfinished one whose owner is gone comes
    back `interrupted`, saying why."""
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM evaluation_runs WHERE id = ?", [run_id]
    ).fetchall()
    if not rows:
        raise KeyError(f"no evaluation run {run_id}")
    values = list(rows[0])
    values[11] = json.loads(values[11]) if values[11] is not None else None
    run = EvaluationRun(*values)
    if run.status not in ("queued", "running"):
        return run
    reason = gone(run.owner, run.heartbeat)
    if reason is None:
        return run
    error = f"{reason}: killed, out of memory or its terminal closed"
    finished = run.heartbeat or datetime.now(UTC)
    try:
        con.execute(
            "UPDATE evaluation_runs SET status = 'interrupted', error = ?, finished = ?"
            " WHERE id = ? AND status IN ('running', 'queued')",
            [error, finished, run.id],
        )
    except duckdb.Error:  # a read-only connection: the next writer that reads it records it
        pass
    return replace(run, status="interrupted", error=error, finished=finished)
