"""Rows of the model registry (`models`, `metrics`, `training_runs`), and its aliases with
their history (`alias_events`).

Aliases: per market/unit one `champion` (moving it takes it from its holder), and any number
of `challenger`s and `shadow`s (held per model). A model holds at most one alias; a move to
another releases the one it held. Every move appends events to `alias_events` and nothing
rewrites them: `_append_event` is the table's only writer, an INSERT (DuckDB has no triggers
to enforce it; tests/store/test_aliases.py checks the code base has no other). Who holds what
is derived from the events (the `aliases` view). A model's `status` reads `champion` while it
holds that alias; otherwise its stored state: `candidate`, `retired` (has served as champion),
`rolled_back`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import duckdb

from store.artifacts import artifact_path, artifact_ref
from store.db import transaction
from store.processes import Owner, gone, this_process


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    version: int
    kind: str
    market: str
    unit: str
    feature_spec: dict[str, Any]
    feature_spec_hash: str
    label_spec: dict[str, Any]
    params: dict[str, Any]
    artifact: str  # the file in the current store (the row names it relative to the store)
    sha256: str
    size: int
    status: str
    created_at: datetime
    parent_id: int | None
    tags: dict[str, Any] | None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


_COLUMNS = (
    "id, name, version, kind, market, unit, feature_spec, feature_spec_hash, label_spec, params,"
    " artifact, sha256, size, status, created_at, parent_id, tags"
)


# The models as read: `status` is `champion` for the holder of that alias (from its history).
_ROWS = (
    "(SELECT models.* REPLACE (CASE WHEN holder IS NULL THEN models.status ELSE 'champion' END"
    " AS status) FROM models LEFT JOIN (SELECT model_id AS holder FROM aliases"
    " WHERE alias = 'champion') ON holder = models.id) AS models"
)


def _record(row: tuple) -> ModelRecord:
    values = list(row)
    for i in (6, 8, 9, 16):
        values[i] = json.loads(values[i]) if values[i] is not None else None
    values[10] = str(artifact_path(values[10], values[11]))
    return ModelRecord(*values)


def register_model(
    con: duckdb.DuckDBPyConnection,
    *,
    name: str,
    kind: str,
    market: str,
    unit: str,
    feature_spec: dict[str, Any],
    feature_spec_hash: str,
    label_spec: dict[str, Any],
    params: dict[str, Any],
    artifact: str,
    sha256: str,
    size: int,
    status: str,
    metrics: dict[str, dict[str, float]],
    tags: dict[str, Any] | None = None,
    parent_id: int | None = None,
    run_id: int | None = None,
    promote: bool = False,
) -> ModelRecord:
    """Insert a model row with the next version of `name` and its metrics, in one transaction;
    with `run_id`, the run's per-epoch metrics and the run are linked to the model and the run
    is marked finished; with `promote`, the model becomes champion of its market/unit (the old
    champion `retired`, the move in the alias history). All of it lands together or not at
    all, Ctrl-C included."""
    with _moving, transaction(con):
        version = con.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM models WHERE name = ?", [name]
        ).fetchall()[0][0]
        row = con.execute(
            f"INSERT INTO models ({_COLUMNS.replace('id, ', '', 1)}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [
                name,
                version,
                kind,
                market,
                unit,
                json.dumps(feature_spec),
                feature_spec_hash,
                json.dumps(label_spec),
                json.dumps(params),
                artifact_ref(artifact),
                sha256,
                size,
                status,
                datetime.now(UTC),
                parent_id,
                json.dumps(tags) if tags is not None else None,
            ],
        ).fetchall()
        model_id = row[0][0]
        metric_rows = [
            (model_id, split, metric, float(value), None, run_id)
            for split, named in metrics.items()
            for metric, value in named.items()
            if isinstance(value, int | float)
        ]
        if metric_rows:
            con.executemany(
                "INSERT INTO metrics (model_id, split, name, value, step, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                metric_rows,
            )
        if run_id is not None:
            con.execute("UPDATE metrics SET model_id = ? WHERE run_id = ?", [model_id, run_id])
            con.execute(
                "UPDATE training_runs SET model_id = ?, status = 'finished', progress = 1.0,"
                " finished = ? WHERE id = ?",
                [model_id, datetime.now(UTC), run_id],
            )
        if promote:
            _move(con, get_model(con, model_id), "champion", "user", "registered as champion")
    return get_model(con, model_id)


def get_model(con: duckdb.DuckDBPyConnection, ref: int | str) -> ModelRecord:
    """Look a model up by id, `name` (newest version) or `name@version`; KeyError if absent."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        rows = con.execute(f"SELECT {_COLUMNS} FROM {_ROWS} WHERE id = ?", [int(ref)]).fetchall()
    elif "@" in ref:
        name, version = ref.rsplit("@", 1)
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM {_ROWS} WHERE name = ? AND version = ?", [name, int(version)]
        ).fetchall()
    else:
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM {_ROWS} WHERE name = ? ORDER BY version DESC LIMIT 1", [ref]
        ).fetchall()
    if not rows:
        raise KeyError(f"no model {ref!r} in the registry (see `upquant models list`)")
    return _record(rows[0])


def list_models(
    con: duckdb.DuckDBPyConnection, market: str | None = None, unit: str | None = None
) -> list[ModelRecord]:
    where, params = [], []
    if market:
        where.append("market = ?")
        params.append(market)
    if unit:
        where.append("unit = ?")
        params.append(unit)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = con.execute(f"SELECT {_COLUMNS} FROM {_ROWS} {clause} ORDER BY id", params).fetchall()
    return [_record(r) for r in rows]


def champion(con: duckdb.DuckDBPyConnection, market: str, unit: str) -> ModelRecord | None:
    """The holder of the `champion` alias of market/unit, or None."""
    rows = con.execute(
        "SELECT model_id FROM aliases WHERE alias = 'champion' AND market = ? AND unit = ?",
        [market, unit],
    ).fetchall()
    return get_model(con, int(rows[0][0])) if rows else None


def set_champion(
    con: duckdb.DuckDBPyConnection, model_id: int, *, by: str = "user", reason: str | None = None
) -> list[AliasEvent]:
    """Make `model_id` the champion of its market/unit (the previous one stays `retired`); the
    events appended, none when it already is."""
    return move_alias(con, model_id, "champion", by=by, reason=reason)


def model_metrics(con: duckdb.DuckDBPyConnection, model_id: int) -> dict[str, dict[str, float]]:
    """Final metrics by split (per-epoch rows, which carry a step, are left out)."""
    out: dict[str, dict[str, float]] = {}
    for split, name, value in con.execute(
        "SELECT split, name, value FROM metrics WHERE model_id = ? AND step IS NULL"
        " ORDER BY split, name",
        [model_id],
    ).fetchall():
        out.setdefault(split, {})[name] = value
    return out


# --- aliases and their history -----------------------------------------------------------------
ALIASES = ("champion", "challenger", "shadow")
MOVERS = ("user", "gate", "schedule", "drift")  # who moved an alias
# One move at a time in this process (the store's one owner): a move reads the holders, then
# appends; two at once could both take the champion alias from the same holder.
_moving = threading.RLock()


class AliasRefused(ValueError):
    """A move the aliases' rules forbid (releasing the champion, a move of the champion's
    model to another alias, releasing an alias the model does not hold); `hint` says what to
    do instead."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class AliasEvent:
    """One move: `model_id` gained `alias` (None: released), `previous_model_id` lost it."""

    id: int
    market: str
    unit: str
    alias: str
    model_id: int | None
    previous_model_id: int | None
    model_ref: str | None
    previous_ref: str | None
    moved_at: datetime
    moved_by: str
    reason: str | None


@dataclass(frozen=True)
class AliasHolder:
    market: str
    unit: str
    alias: str
    model_id: int
    ref: str
    since: datetime


_EVENT_COLUMNS = (
    "id, market, unit, alias, model_id, previous_model_id, model_ref, previous_ref, moved_at,"
    " moved_by, reason"
)
_ALIAS_ORDER = "CASE alias WHEN 'champion' THEN 0 WHEN 'challenger' THEN 1 ELSE 2 END"


def alias_holders(
    con: duckdb.DuckDBPyConnection,
    market: str | None = None,
    unit: str | None = None,
    model_id: int | None = None,
) -> list[AliasHolder]:
    """Who holds which alias now (of market/unit, or of one model): champion first."""
    where, params = [], []
    for column, value in (("market", market), ("unit", unit), ("model_id", model_id)):
        if value is not None:
            where.append(f"a.{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = con.execute(
        "SELECT a.market, a.unit, a.alias, a.model_id,"
        " coalesce(m.name || '@' || m.version, a.model_ref), a.since"
        f" FROM aliases a LEFT JOIN models m ON m.id = a.model_id {clause}"
        f" ORDER BY a.market, a.unit, {_ALIAS_ORDER}, a.event_id",
        params,
    ).fetchall()
    return [AliasHolder(*row) for row in rows]


def model_aliases(con: duckdb.DuckDBPyConnection, model_id: int) -> list[str]:
    """The aliases model `model_id` holds (at most one, by the rules of a move)."""
    return [h.alias for h in alias_holders(con, model_id=model_id)]


def aliases_by_model(con: duckdb.DuckDBPyConnection) -> dict[int, list[str]]:
    """Every holder's aliases, by model id (one query for a listing)."""
    out: dict[int, list[str]] = {}
    for model_id, alias in con.execute(
        f"SELECT model_id, alias FROM aliases ORDER BY {_ALIAS_ORDER}"
    ).fetchall():
        out.setdefault(int(model_id), []).append(str(alias))
    return out


def alias_history(
    con: duckdb.DuckDBPyConnection, market: str, unit: str, limit: int | None = None
) -> list[AliasEvent]:
    """The alias moves of market/unit, newest first (at most `limit`)."""
    rows = con.execute(
        f"SELECT {_EVENT_COLUMNS} FROM alias_events WHERE market = ? AND unit = ?"
        " ORDER BY id DESC LIMIT ?",
        [market, unit, limit if limit is not None else 2**62],
    ).fetchall()
    return [AliasEvent(*row) for row in rows]


def _append_event(
    con: duckdb.DuckDBPyConnection,
    seat: ModelRecord,
    alias: str,
    to: ModelRecord | None,
    previous: ModelRecord | None,
    by: str,
    reason: str | None,
) -> AliasEvent:
    """Append one move to the history: the only statement that writes `alias_events`, and an
    INSERT. Nothing updates or deletes an event (see the module docstring)."""
    rows = con.execute(
        "INSERT INTO alias_events (market, unit, alias, model_id, previous_model_id, model_ref,"
        " previous_ref, moved_at, moved_by, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" RETURNING {_EVENT_COLUMNS}",
        [
            seat.market,
            seat.unit,
            alias,
            to.id if to else None,
            previous.id if previous else None,
            to.ref if to else None,
            previous.ref if previous else None,
            datetime.now(UTC),
            by,
            reason,
        ],
    ).fetchall()
    return AliasEvent(*rows[0])


def _check_move(alias: str, by: str) -> None:
    if alias not in ALIASES:
        raise AliasRefused(f"unknown alias {alias!r}", f"aliases: {', '.join(ALIASES)}")
    if by not in MOVERS:
        raise ValueError(f"an alias is moved by {', '.join(MOVERS)}, not {by!r}")


def move_alias(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    alias: str,
    *,
    by: str = "user",
    reason: str | None = None,
) -> list[AliasEvent]:
    """Give `alias` to model `model_id` (of its own market/unit, by construction): `champion`
    is taken from its holder, `challenger` and `shadow` are the model's own; the alias it held
    before is released. Returns the events appended, in order; none when it holds it already.
    AliasRefused for a move of the champion's model to another alias."""
    _check_move(alias, by)
    with _moving, transaction(con):  # bumps the write generation: cached `name@alias`es are stale
        return _move(con, get_model(con, model_id), alias, by, reason)


def _move(
    con: duckdb.DuckDBPyConnection, record: ModelRecord, alias: str, by: str, reason: str | None
) -> list[AliasEvent]:
    held = model_aliases(con, record.id)
    if alias in held:
        return []
    if "champion" in held:
        raise AliasRefused(
            f"{record.ref} is the champion of {record.market} unit {record.unit}: it takes"
            f" no {alias} alias",
            "promote another model or roll back first",
        )
    events = [
        _append_event(con, record, other, None, record, by, f"moved to {alias}") for other in held
    ]
    if alias == "champion":
        before = champion(con, record.market, record.unit)
        events.append(_append_event(con, record, alias, record, before, by, reason))
        # its state once it no longer holds the alias: served as champion (not rolled back)
        con.execute("UPDATE models SET status = 'retired' WHERE id = ?", [record.id])
    else:
        events.append(_append_event(con, record, alias, record, None, by, reason))
    return events


def release_alias(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    alias: str,
    *,
    by: str = "user",
    reason: str | None = None,
) -> AliasEvent:
    """Take `challenger` or `shadow` from model `model_id` (the champion alias only moves:
    promote another model or roll back). AliasRefused when it does not hold it."""
    _check_move(alias, by)
    if alias == "champion":
        raise AliasRefused(
            "the champion alias is not released, it moves",
            "promote another model or roll back",
        )
    with _moving, transaction(con):
        record = get_model(con, model_id)
        held = model_aliases(con, record.id)
        if alias not in held:
            raise AliasRefused(
                f"{record.ref} holds no {alias} alias (it holds {', '.join(held) or 'none'})",
                f"see `upquant models history {record.market} --unit {record.unit}`",
            )
        return _append_event(con, record, alias, None, record, by, reason)


# --- champions over time ------------------------------------------------------------------------
def previous_models(con: duckdb.DuckDBPyConnection, record: ModelRecord) -> list[ModelRecord]:
    """Earlier champions of the same market/unit that no user rolled back (`retired`), the
    latest to serve first (by the alias history; ones from before it, newest first, last): the
    fallbacks when `record` cannot be loaded, and where a rollback goes."""
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM {_ROWS} LEFT JOIN (SELECT model_id AS served, max(id) AS last"
        " FROM alias_events WHERE alias = 'champion' GROUP BY model_id) ON served = models.id"
        " WHERE market = ? AND unit = ? AND status = 'retired' AND id <> ?"
        " ORDER BY last DESC NULLS LAST, id DESC",
        [record.market, record.unit, record.id],
    ).fetchall()
    return [_record(r) for r in rows]


def fallback_models(con: duckdb.DuckDBPyConnection, record: ModelRecord) -> list[ModelRecord]:
    """What to load when `record`'s artifact is bad, in order: its earlier versions (newest
    first; not ones a user rolled back), then the earlier champions of its market/unit."""
    versions = con.execute(
        f"SELECT {_COLUMNS} FROM {_ROWS} WHERE name = ? AND version < ? AND status <> 'rolled_back'"
        " ORDER BY version DESC",
        [record.name, record.version],
    ).fetchall()
    earlier = [_record(r) for r in versions]
    seen = {r.id for r in earlier}
    return earlier + [r for r in previous_models(con, record) if r.id not in seen]


def rollback(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    *,
    by: str = "user",
    reason: str | None = None,
) -> tuple[ModelRecord, ModelRecord]:
    """Move the champion alias of market/unit back to its previous holder (by the history; not
    one rolled back before) and mark the demoted one `rolled_back`; returns (demoted,
    restored). KeyError when there is nothing to roll back to."""
    _check_move("champion", by)
    with _moving:
        current = champion(con, market, unit)
        if current is None:
            raise KeyError(f"no champion for {market} unit {unit} to roll back")
        earlier = previous_models(con, current)
        if not earlier:
            raise KeyError(
                f"{current.ref} is the only champion of {market} unit {unit} that was not"
                " rolled back; nothing to roll back to"
            )
        restored = earlier[0]
        with transaction(con):  # bumps the write generation: cached `name@champion`s are stale
            _move(con, restored, "champion", by, reason or f"rollback of {current.ref}")
            con.execute("UPDATE models SET status = 'rolled_back' WHERE id = ?", [current.id])
    return get_model(con, current.id), get_model(con, restored.id)


def ensembles_using(con: duckdb.DuckDBPyConnection, model_id: int) -> list[ModelRecord]:
    return [
        r
        for r in list_models(con)
        if r.kind == "ensemble"
        and any(int(m.get("id", -1)) == model_id for m in r.params.get("members", []))
    ]


def delete_model(con: duckdb.DuckDBPyConnection, ref: int | str) -> tuple[ModelRecord, bool]:
    """Delete a model row and its metrics, releasing its challenger or shadow alias (an event
    each; the history keeps its moves); returns (record, whether its artifact file is no
    longer referenced by any row). A champion or an ensemble member cannot be deleted."""
    with _moving:  # no move between the check and the delete
        record = get_model(con, ref)
        if record.status == "champion":
            raise ValueError(
                f"{record.ref} is the champion of {record.market} unit {record.unit};"
                " promote another model or roll back first"
            )
        users = ensembles_using(con, record.id)
        if users:
            raise ValueError(
                f"{record.ref} is a member of {', '.join(u.ref for u in users)}; delete those first"
            )
        with transaction(con):  # bumps the write generation: cached references are stale
            for alias in model_aliases(con, record.id):
                _append_event(con, record, alias, None, record, "user", f"{record.ref} deleted")
            con.execute("DELETE FROM metrics WHERE model_id = ?", [record.id])
            con.execute("UPDATE training_runs SET model_id = NULL WHERE model_id = ?", [record.id])
            con.execute("DELETE FROM models WHERE id = ?", [record.id])
    shared = con.execute("SELECT count(*) FROM models WHERE sha256 = ?", [record.sha256]).fetchall()
    return record, shared[0][0] == 0


# --- training runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    id: int
    model_id: int | None
    status: str
    progress: float | None
    started: datetime | None
    finished: datetime | None
    error: str | None
    log: str | None
    kind: str | None
    market: str | None
    unit: str | None
    config: dict[str, Any] | None
    checkpoint: str | None
    pid: int | None = None
    host: str | None = None
    process_start: str | None = None
    heartbeat: datetime | None = None

    @property
    def owner(self) -> Owner | None:
        """The process that runs (or ran) it; None for runs from before owners were kept."""
        if self.pid is None or self.host is None:
            return None
        return Owner(self.pid, self.host, self.process_start)


_RUN_COLUMNS = (
    "id, model_id, status, progress, started, finished, error, log, kind, market, unit, config,"
    " checkpoint, pid, host, process_start, heartbeat"
)
# queued: a job waiting for its device (engine.service.jobs), owned like a running one
RUN_STATUSES = ("queued", "running", "finished", "failed", "interrupted")


def start_run(
    con: duckdb.DuckDBPyConnection, kind: str, market: str, unit: str, config: dict[str, Any]
) -> int:
    """A `running` row owned by this process."""
    me, now = this_process(), datetime.now(UTC)
    rows = con.execute(
        "INSERT INTO training_runs (status, progress, started, kind, market, unit, config, pid,"
        " host, process_start, heartbeat) VALUES ('running', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        [now, kind, market, unit, json.dumps(config), me.pid, me.host, me.start, now],
    ).fetchall()
    return int(rows[0][0])


def claim_run(con: duckdb.DuckDBPyConnection, run_id: int, log: str | None = None) -> None:
    """Make this process the owner of a run it resumes: `running` again, heartbeat now."""
    me = this_process()
    con.execute(
        "UPDATE training_runs SET status = 'running', finished = NULL, error = NULL, pid = ?,"
        " host = ?, process_start = ?, heartbeat = ? WHERE id = ?",
        [me.pid, me.host, me.start, datetime.now(UTC), run_id],
    )
    if log is not None:
        update_run(con, run_id, log=log)


def get_run(con: duckdb.DuckDBPyConnection, run_id: int) -> RunRecord:
    """The run; a `running` one whose process is gone comes back (and is stored, where the
    connection may write) as `interrupted`, saying why."""
    rows = con.execute(
        f"SELECT {_RUN_COLUMNS} FROM training_runs WHERE id = ?", [run_id]
    ).fetchall()
    if not rows:
        raise KeyError(f"no training run {run_id}")
    values = list(rows[0])
    values[11] = json.loads(values[11]) if values[11] is not None else None
    return _settle(con, RunRecord(*values))


def _settle(con: duckdb.DuckDBPyConnection, run: RunRecord) -> RunRecord:
    if run.status not in ("running", "queued"):
        return run
    reason = gone(run.owner, run.heartbeat)
    if reason is None:
        return run
    error = f"{reason}: killed, out of memory or its terminal closed"
    finished = run.heartbeat or datetime.now(UTC)  # its last sign of life
    try:
        con.execute(
            "UPDATE training_runs SET status = 'interrupted', error = ?, finished = ?"
            " WHERE id = ? AND status IN ('running', 'queued')",
            [error, finished, run.id],
        )
    except duckdb.Error:  # a read-only connection: the next writer that reads it records it
        pass
    return replace(run, status="interrupted", error=error, finished=finished)


def list_runs(con: duckdb.DuckDBPyConnection, limit: int = 50) -> list[RunRecord]:
    ids = con.execute("SELECT id FROM training_runs ORDER BY id DESC LIMIT ?", [limit]).fetchall()
    return [get_run(con, i) for (i,) in ids]


def update_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    *,
    status: str | None = None,
    progress: float | None = None,
    log: str | None = None,
    checkpoint: str | None = None,
    error: str | None = None,
) -> None:
    """Record a run's progress as it happens; a final status also stamps `finished`."""
    if status is not None and status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    sets: list[str] = []
    params: list[object] = []
    if progress is not None:  # only the owner reports progress: a heartbeat too
        sets.append("heartbeat = ?")
        params.append(datetime.now(UTC))
    for column, value in (
        ("status", status),
        ("progress", progress),
        ("checkpoint", checkpoint),
        ("error", error),
    ):
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(value)
    if status is not None:
        unfinished = status in ("running", "queued")
        sets.append("finished = NULL" if unfinished else "finished = ?")
        if not unfinished:
            params.append(datetime.now(UTC))
    if log is not None:
        sets.append("log = coalesce(log || chr(10), '') || ?")
        params.append(log)
    if sets:
        con.execute(f"UPDATE training_runs SET {', '.join(sets)} WHERE id = ?", [*params, run_id])


def beat(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    """Stamp the run's heartbeat: its owner is alive (between progress reports)."""
    con.execute("UPDATE training_runs SET heartbeat = ? WHERE id = ?", [datetime.now(UTC), run_id])


def clear_run_epochs(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    """Forget a run's per-epoch (and per-trial) metrics: it starts again from scratch."""
    con.execute("DELETE FROM metrics WHERE run_id = ? AND model_id IS NULL", [run_id])


def log_epoch(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    step: int,
    metrics: dict[str, float],
    split: str = "epoch",
) -> None:
    rows = [(None, split, name, float(value), step, run_id) for name, value in metrics.items()]
    con.executemany(
        "INSERT INTO metrics (model_id, split, name, value, step, run_id) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def run_epochs(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for step, name, value in con.execute(
        "SELECT step, name, value FROM metrics WHERE run_id = ? AND step IS NOT NULL"
        " ORDER BY step, name",
        [run_id],
    ).fetchall():
        out.setdefault(int(step), {})[name] = value
    return out
