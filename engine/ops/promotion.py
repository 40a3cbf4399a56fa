"""The promotion gate: a model takes an alias of its market/unit (champion, challenger,
shadow) only with an artifact that loads and verifies; a rollback moves the champion alias
back to its previous holder; every move is appended to the alias history (`store.registry`).
A deleted model takes its artifact (when no other row uses it) and its unpacked copy with
it. Every face (CLI, API) calls these, so the rules hold whatever asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

    from store.registry import AliasEvent, ModelRecord


def artifact_integrity(record: ModelRecord) -> str:
    """`verified` when the model's artifact loads (checksum, format, kind); otherwise
    `REFUSED: why`."""
    from engine.live.inference import load_record
    from store.artifacts import ArtifactError

    try:
        load_record(record)
    except (ArtifactError, OSError, ValueError) as exc:
        return f"REFUSED: {exc}"
    return "verified"


def promote(
    con: duckdb.DuckDBPyConnection, ref: str, *, by: str = "user", reason: str | None = None
) -> ModelRecord:
    """Make model `ref` (name, name@version or id) the champion of its market/unit, after
    verifying its artifact: a model whose artifact is bad is refused (the error says why)."""
    from store.registry import get_model

    record = get_model(con, ref)
    move(con, record, "champion", by=by, reason=reason)
    return record


def move(
    con: duckdb.DuckDBPyConnection,
    record: ModelRecord,
    alias: str,
    *,
    by: str = "user",
    reason: str | None = None,
) -> list[AliasEvent]:
    """Give `alias` to `record` after verifying its artifact (a model that cannot load serves
    no alias); the events appended (none when it holds it already)."""
    from engine.live.inference import load_record
    from store.registry import move_alias

    load_record(record)  # refuse an alias to a model whose artifact is bad
    return move_alias(con, record.id, alias, by=by, reason=reason)


def release(
    con: duckdb.DuckDBPyConnection,
    record: ModelRecord,
    alias: str,
    *,
    by: str = "user",
    reason: str | None = None,
) -> AliasEvent:
    """Take `challenger` or `shadow` from `record` (the champion alias only moves)."""
    from store.registry import release_alias

    return release_alias(con, record.id, alias, by=by, reason=reason)


def rollback(
    con: duckdb.DuckDBPyConnection,
    market: str,
    unit: str,
    *,
    by: str = "user",
    reason: str | None = None,
) -> tuple[ModelRecord, ModelRecord]:
    """Move the champion alias of `market`/`unit` back to its previous holder, the demoted one
    `rolled_back`: (demoted, restored)."""
    from engine.upbit.markets import check_market, check_unit
    from store.registry import rollback as registry_rollback

    check_market(market)
    return registry_rollback(con, market, check_unit(unit), by=by, reason=reason)


def delete(con: duckdb.DuckDBPyConnection, record: ModelRecord) -> bool:
    """Delete the model's row and metrics, then its artifact file and cached copy when no
    other row uses them; True when the artifact went too."""
    from store.artifacts import discard_artifact
    from store.registry import delete_model

    deleted, orphan = delete_model(con, record.id)
    if orphan:
        discard_artifact(deleted.artifact, deleted.sha256)
    return orphan
