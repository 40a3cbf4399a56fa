"""The promotion gate: a model becomes champion of its market/unit only with an artifact that
loads and verifies; a rollback restores the previous champion; a deleted model takes its
artifact (when no other row uses it) and its unpacked copy with it. Every face (CLI, API)
calls these, so the rules hold whatever asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

    from store.registry import ModelRecord


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


def promote(con: duckdb.DuckDBPyConnection, ref: str) -> ModelRecord:
    """Make model `ref` (name, name@version or id) the champion of its market/unit, after
    verifying its artifact: a model whose artifact is bad is refused (the error says why)."""
    from engine.live.inference import load_record
    from store.registry import get_model, set_champion

    record = get_model(con, ref)
    load_record(record)  # refuse to promote a model whose artifact is bad
    set_champion(con, record.id)
    return record


def rollback(
    con: duckdb.DuckDBPyConnection, market: str, unit: str
) -> tuple[ModelRecord, ModelRecord]:
    """Demote the champion of `market`/`unit` and restore the previous one:
    (demoted, restored)."""
    from engine.upbit.markets import check_market, check_unit
    from store.registry import rollback as registry_rollback

    check_market(market)
    return registry_rollback(con, market, check_unit(unit))


def delete(con: duckdb.DuckDBPyConnection, record: ModelRecord) -> bool:
    """Delete the model's row and metrics, then its artifact file and cached copy when no
    other row uses them; True when the artifact went too."""
    from store.artifacts import discard_artifact
    from store.registry import delete_model

    deleted, orphan = delete_model(con, record.id)
    if orphan:
        discard_artifact(deleted.artifact, deleted.sha256)
    return orphan
