"""Where the store lives and how a connection to it is opened and migrated."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb

DB_FILENAME = "upquant.duckdb"
PRIVATE_UMASK = 0o077  # no permission for group or others


def home() -> Path:
    """`$UPQUANT_HOME`, default `~/.local/share/upquant`; created on first use, private."""
    root = Path(os.environ.get("UPQUANT_HOME") or Path.home() / ".local" / "share" / "upquant")
    # What is created under the store is private (directories 0700, files 0600) whatever
    # umask the process came with: DuckDB (the database and its WAL, recreated after every
    # checkpoint) and torch (checkpoints) create files themselves and honour only the umask.
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if root.stat().st_mode & PRIVATE_UMASK:  # a home made by hand or by an older upquant
        root.chmod(0o700)
    return root


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All statements inside commit together or not at all: an exception, Ctrl-C included,
    rolls back, and a killed process keeps neither."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


def db_path() -> Path:
    return home() / DB_FILENAME


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in store/migrations, in version order."""
    found = []
    for entry in resources.files("store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations, each in its own transaction; returns the schema version."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name VARCHAR,"
        " applied_at TIMESTAMPTZ DEFAULT now())"
    )
    applied = {row[0] for row in con.execute("SELECT version FROM schema_version").fetchall()}
    current = max(applied, default=0)
    for version, name, sql in _migrations():
        if version in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current


def connect(
    path: Path | str | None = None, *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating if needed) the store's DuckDB file."""
    target = Path(path) if path is not None else db_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(target), read_only=read_only)
    if not read_only and target.exists() and target.stat().st_mode & PRIVATE_UMASK:  # older
        target.chmod(0o600)
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        migrate(con)
    return con
