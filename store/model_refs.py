"""How a model is named, and the registry edits of its description, tags and status.

A model reference is one of: an id (`12`), a name (`xgb-btc`: its newest version), an exact
version (`xgb-btc@3`) or an alias (`xgb-btc@champion`: the champion of the market/unit that
`xgb-btc` serves, whatever its name; `@challenger` and `@shadow` likewise, the name's own
holder first, else the newest). `resolve` is the one place that reads a reference; every face
(CLI, API, live) goes through it, so they agree on what a name means. Who holds an alias is
the alias history's answer (`store.registry`, the `aliases` view).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from store.db import transaction
from store.registry import ALIASES, ModelRecord, get_model

# Tags the trainer writes (the model's data split and run): the evaluation and held-out rules
# read them, so an edit may add and change other tags but never these.
SYSTEM_TAGS = frozenset(
    {
        "run_id",
        "train_from",
        "train_to",
        "validation_from",
        "validation_to",
        "test_from",
        "test_to",
    }
)
# Statuses an edit may set by hand; `champion` moves only by promotion or rollback.
EDITABLE_STATUSES = ("candidate", "retired")
REF_HINT = (
    "use an id, a name, name@<version>, name@champion, name@challenger or name@shadow"
    " (see `upquant models list`)"
)


class BadReference(ValueError):
    """A reference that cannot name a model (an unknown alias, an empty string)."""

    def __init__(self, message: str, hint: str | None = REF_HINT) -> None:
        super().__init__(message)
        self.hint = hint


def split_ref(ref: str) -> tuple[str, str | None]:
    """(name or id, the part after the last `@` or None)."""
    name, at, tail = ref.rpartition("@")
    return (name, tail) if at else (ref, None)


def is_alias(ref: str) -> bool:
    name, tail = split_ref(ref.strip())
    return bool(name) and tail in ALIASES


def resolve(con: duckdb.DuckDBPyConnection, ref: str | int) -> ModelRecord:
    """The registry row `ref` names (see the module docstring); KeyError if none."""
    if isinstance(ref, int):
        return get_model(con, ref)
    ref = ref.strip()
    name, tail = split_ref(ref)
    if not name:
        raise BadReference(f"{ref!r} is not a model reference")
    if tail is None or tail.isdigit():
        return get_model(con, ref)
    if tail not in ALIASES:
        raise BadReference(f"unknown alias {tail!r} in {ref!r}; aliases: {', '.join(ALIASES)}")
    # one query: the alias holder of any market/unit `name` serves, `name`'s own first
    rows = con.execute(
        "SELECT a.model_id FROM aliases a JOIN models m ON m.id = a.model_id"
        " WHERE a.alias = ? AND (a.market, a.unit) IN"
        " (SELECT market, unit FROM models WHERE name = ?)"
        " ORDER BY (m.name = ?) DESC, a.model_id DESC LIMIT 1",
        [tail, name, name],
    ).fetchall()
    if not rows:
        newest = get_model(con, name)  # KeyError when the name is unknown
        how = (
            f"promote one: `upquant models promote {newest.ref}`"
            if tail == "champion"
            else f"give one the alias: `upquant models alias {newest.ref} {tail}`"
        )
        raise KeyError(
            f"no {tail} for {newest.market} unit {newest.unit}, the market of {name!r} ({how})"
        )
    return get_model(con, int(rows[0][0]))


def canonical(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """`ref` as the engine's loaders take it: an alias becomes the exact `name@version` it
    names now; anything else is returned as given (a bare name keeps its meaning "newest
    intact version", which the loaders resolve with their fallback)."""
    return resolve(con, ref).ref if is_alias(ref) else ref.strip()


def update_model(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    *,
    tags: dict[str, Any] | None = None,
    status: str | None = None,
) -> ModelRecord:
    """Merge `tags` into the model's (a None value removes a tag) and set `status`, in one
    transaction. Trainer tags (SYSTEM_TAGS) and the champion's status are refused."""
    record = get_model(con, model_id)
    if tags:
        touched = sorted(SYSTEM_TAGS & set(tags))
        if touched:
            raise ValueError(
                f"tags {', '.join(touched)} of {record.ref} are the trainer's (its data split);"
                " they cannot be edited"
            )
    if status is not None:
        if status not in EDITABLE_STATUSES:
            raise ValueError(
                f"status {status!r} cannot be set by hand; choose {' or '.join(EDITABLE_STATUSES)}"
                " (champion moves by promotion or rollback)"
            )
        if record.status == "champion" and status != "champion":
            raise ValueError(
                f"{record.ref} is the champion of {record.market} unit {record.unit};"
                " promote another model or roll back first"
            )
    merged = dict(record.tags or {})
    for key, value in (tags or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    with transaction(con):
        if tags:
            con.execute(
                "UPDATE models SET tags = ? WHERE id = ?",
                [json.dumps(merged) if merged else None, model_id],
            )
        if status is not None:
            con.execute("UPDATE models SET status = ? WHERE id = ?", [status, model_id])
    return get_model(con, model_id)
