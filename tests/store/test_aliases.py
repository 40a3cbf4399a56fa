"""Aliases with history on a real DuckDB store: champion exclusive per market/unit, many
challengers and shadows, rollback as a move, deletes release aliases, the backfill of a
store from before the history (migrations up to 007), and the history append-only: no code
updates or deletes it, and no public function rewrites it."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from store.db import _migrations, migrate
from store.model_refs import resolve
from store.registry import (
    AliasRefused,
    alias_history,
    alias_holders,
    champion,
    delete_model,
    get_model,
    list_models,
    model_aliases,
    move_alias,
    register_model,
    release_alias,
    rollback,
    set_champion,
)

ROOT = Path(__file__).resolve().parents[2]


def model(con: duckdb.DuckDBPyConnection, name: str = "m", market: str = "KRW-BTC", unit: str = "1",
          promote: bool = False) -> int:
    """A registry row (its artifact is never loaded here: the store's rules do not load)."""
    record = register_model(
        con, name=name, kind="xgboost", market=market, unit=unit, feature_spec={},
        feature_spec_hash="h", label_spec={}, params={}, artifact="a", sha256="s", size=1,
        status="candidate", metrics={}, promote=promote,
    )
    return record.id


def events(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("SELECT * FROM alias_events ORDER BY id").fetchall()


def holders(con: duckdb.DuckDBPyConnection, market: str = "KRW-BTC") -> list[tuple[str, int]]:
    return [(h.alias, h.model_id) for h in alias_holders(con, market, "1")]


def test_champion_is_exclusive_and_every_move_is_an_event(con) -> None:
    a, b, c = model(con), model(con), model(con)
    other = model(con, "eth", market="KRW-ETH", promote=True)
    assert set_champion(con, a)[0].previous_model_id is None
    moved = set_champion(con, b, reason="better")
    assert [(e.alias, e.previous_model_id, e.model_id, e.moved_by, e.reason) for e in moved] == [
        ("champion", a, b, "user", "better")
    ]
    assert moved[0].previous_ref == "m@1" and moved[0].model_ref == "m@2"
    assert champion(con, "KRW-BTC", "1").id == b and get_model(con, a).status == "retired"
    assert champion(con, "KRW-ETH", "1").id == other  # another market's seat is its own
    assert set_champion(con, b) == []  # already held: nothing moves, nothing is appended
    assert [m.id for m in list_models(con) if m.status == "champion"] == [b, other]
    # the champion's model takes no other alias; champion is not released, it moves
    with pytest.raises(AliasRefused, match="is the champion"):
        move_alias(con, b, "challenger")
    with pytest.raises(AliasRefused, match="not released"):
        release_alias(con, b, "champion")
    with pytest.raises(ValueError, match="moved by"):
        move_alias(con, c, "challenger", by="someone")
    assert resolve(con, "eth@champion").id == other and resolve(con, "m@champion").id == b


def test_many_challengers_and_shadows_each_move_recorded(con) -> None:
    champ, x, y, z = model(con, promote=True), model(con), model(con), model(con)
    for challenger in (x, y):
        move_alias(con, challenger, "challenger", reason="retrained")
    move_alias(con, z, "shadow", by="schedule")
    assert holders(con) == [("champion", champ), ("challenger", x), ("challenger", y), ("shadow", z)]
    assert resolve(con, "m@challenger").id == y  # the name's newest holder
    assert resolve(con, "m@shadow").id == z
    # a model holds one alias: making x a shadow releases its challenger alias first
    moved = move_alias(con, x, "shadow")
    assert [(e.alias, e.previous_model_id, e.model_id) for e in moved] == [
        ("challenger", x, None), ("shadow", None, x)
    ]
    assert model_aliases(con, x) == ["shadow"]
    release_alias(con, y, "challenger", reason="worse live")
    with pytest.raises(AliasRefused, match="holds no challenger"):
        release_alias(con, y, "challenger")
    with pytest.raises(KeyError, match="no challenger"):
        resolve(con, "m@challenger")
    # promoting a shadow releases it, then takes the champion seat
    moved = set_champion(con, z)
    assert [(e.alias, e.previous_model_id, e.model_id) for e in moved] == [
        ("shadow", z, None), ("champion", champ, z)
    ]
    assert holders(con) == [("champion", z), ("shadow", x)]
    history = alias_history(con, "KRW-BTC", "1")
    assert [e.id for e in history] == sorted((e.id for e in history), reverse=True)  # newest first
    assert len(history) == 9 and alias_history(con, "KRW-BTC", "1", limit=2) == history[:2]
    assert history[-1].reason == "registered as champion"


def test_rollback_moves_the_champion_back_through_the_history(con) -> None:
    a, b, c = model(con), model(con), model(con)
    for m in (a, b, c):
        set_champion(con, m)
    demoted, restored = rollback(con, "KRW-BTC", "1", reason="bad fills")
    assert (demoted.id, demoted.status, restored.id) == (c, "rolled_back", b)
    newest = alias_history(con, "KRW-BTC", "1", limit=1)[0]
    assert (newest.previous_model_id, newest.model_id, newest.reason) == (c, b, "bad fills")
    # promote an older model: a rollback goes to the previous holder, not to a smaller id
    set_champion(con, a)
    demoted, restored = rollback(con, "KRW-BTC", "1")
    assert (demoted.id, restored.id) == (a, b)
    assert alias_history(con, "KRW-BTC", "1", limit=1)[0].reason == "rollback of m@1"
    with pytest.raises(KeyError, match="nothing to roll back to"):  # a and c were rolled back
        rollback(con, "KRW-BTC", "1")
    set_champion(con, c)  # promoted again: no longer rolled back once it serves
    demoted, restored = rollback(con, "KRW-BTC", "1")
    assert (demoted.id, restored.id) == (c, b)


def test_delete_releases_aliases_with_events_and_refuses_the_champion(con) -> None:
    champ, x = model(con, promote=True), model(con)
    move_alias(con, x, "challenger")
    with pytest.raises(ValueError, match="champion"):
        delete_model(con, champ)
    before = events(con)
    delete_model(con, x)
    after = events(con)
    assert after[: len(before)] == before and len(after) == len(before) + 1
    released = alias_history(con, "KRW-BTC", "1", limit=1)[0]
    assert (released.alias, released.previous_ref, released.model_id) == ("challenger", "m@2", None)
    assert released.reason == "m@2 deleted" and holders(con) == [("champion", champ)]


# --- the backfill of a store from before the history --------------------------------------------
def old_store(path: Path) -> duckdb.DuckDBPyConnection:
    """A store at the schema before alias history (every migration before 008)."""
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name VARCHAR,"
        " applied_at TIMESTAMPTZ DEFAULT now())"
    )
    for version, name, sql in _migrations():
        if version < 8:
            con.execute(sql)
            con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name])
    return con


def test_backfill_gives_each_current_champion_one_event(tmp_path: Path) -> None:
    con = old_store(tmp_path / "old.duckdb")
    assert "alias_events" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    rows = [  # (name, version, market, status): two champions of BTC from an old bug
        ("a", 1, "KRW-BTC", "retired"),
        ("a", 2, "KRW-BTC", "champion"),
        ("a", 3, "KRW-BTC", "champion"),
        ("e", 1, "KRW-ETH", "champion"),
        ("e", 2, "KRW-ETH", "candidate"),
        ("x", 1, "KRW-XRP", "rolled_back"),
    ]
    for name, version, market, status in rows:
        con.execute(
            "INSERT INTO models (name, version, kind, market, unit, feature_spec,"
            " feature_spec_hash, label_spec, params, artifact, sha256, size, status, created_at)"
            " VALUES (?, ?, 'xgboost', ?, '1', '{}', 'h', '{}', '{}', 'a', 's', 1, ?, now())",
            [name, version, market, status],
        )
    assert migrate(con) >= 8
    backfilled = con.execute(
        "SELECT market, unit, alias, model_id, previous_model_id, model_ref, moved_by, reason"
        " FROM alias_events ORDER BY id"
    ).fetchall()
    assert backfilled == [
        ("KRW-BTC", "1", "champion", 3, None, "a@3", "user", "from models.status before alias history"),
        ("KRW-ETH", "1", "champion", 4, None, "e@1", "user", "from models.status before alias history"),
    ]
    status = {m.ref: m.status for m in list_models(con)}
    assert status == {"a@1": "retired", "a@2": "retired", "a@3": "champion", "e@1": "champion",
                      "e@2": "candidate", "x@1": "rolled_back"}
    assert champion(con, "KRW-XRP", "1") is None
    # what worked before still works: a rollback to an earlier champion without events
    demoted, restored = rollback(con, "KRW-BTC", "1")
    assert (demoted.ref, restored.ref) == ("a@3", "a@2")
    assert resolve(con, "a@champion").ref == "a@2"
    assert migrate(con) >= 8 and len(events(con)) == 3  # migrating again adds nothing
    con.close()


# --- append-only ----------------------------------------------------------------------------------
REWRITE = re.compile(
    r"\b(UPDATE\s+alias_events|DELETE\s+FROM\s+alias_events|TRUNCATE\s+(TABLE\s+)?alias_events"
    r"|DROP\s+TABLE\s+(IF\s+EXISTS\s+)?alias_events|ALTER\s+TABLE\s+alias_events"
    r"|INSERT\s+OR\s+REPLACE\s+INTO\s+alias_events|REPLACE\s+INTO\s+alias_events)\b",
    re.IGNORECASE,
)


def test_no_code_updates_or_deletes_the_alias_history() -> None:
    """DuckDB has no triggers: append-only is the code's rule, so the code base is searched
    for any statement that rewrites `alias_events` (SQL split over string pieces included)."""
    sources = [
        p for folder in ("store", "engine", "models", "tui", "scripts")
        for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sql")
    ]
    assert len(sources) > 50
    offenders = []
    for path in sources:
        text = path.read_text()
        joined = re.sub(r'"\s*\n\s*f?"', "", text)  # "UPDATE alias_events" "SET ..." pieces
        if REWRITE.search(text) or REWRITE.search(joined):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    assert REWRITE.search('con.execute("DELETE FROM alias_events WHERE id = 1")')  # it can fail
    writers = [p for p in sources if re.search(r"INSERT\s+INTO\s+alias_events", p.read_text())]
    assert sorted(str(p.relative_to(ROOT)) for p in writers) == [
        "store/migrations/008_alias_events.sql", "store/registry.py"
    ]


def test_no_public_function_rewrites_the_history(con) -> None:
    """Every public way to move an alias, tried in turn: each leaves the events before it as
    they were (the history only grows)."""
    champ, x, y = model(con, promote=True), model(con), model(con)
    tries = [
        lambda: move_alias(con, x, "challenger"),
        lambda: move_alias(con, x, "shadow"),
        lambda: set_champion(con, y),
        lambda: set_champion(con, champ),
        lambda: rollback(con, "KRW-BTC", "1"),
        lambda: release_alias(con, x, "shadow"),
        lambda: release_alias(con, x, "shadow"),  # refused: nothing may change
        lambda: move_alias(con, y, "champion"),
        lambda: delete_model(con, x),
        lambda: delete_model(con, y),  # refused: the champion
        lambda: model(con, promote=True),
    ]
    seen = events(con)
    for attempt in tries:
        try:
            attempt()
        except (ValueError, KeyError):
            pass
        now = events(con)
        assert now[: len(seen)] == seen and len(now) >= len(seen)
        seen = now
    assert len(seen) >= 8
