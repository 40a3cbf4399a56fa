"""Where the store lives and how a connection to it is opened and migrated."""

from __future__ import annotations

import os
import re
import threading
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


# This process's count of finished writes to the store (candles, models): a cache of what a
# write can change (series versions, model references) is current while it is unchanged.
# Each writer of those tables bumps it after its statements, and `transaction` after every
# commit or rollback, so a reader that notes it BEFORE querying never keeps a stale answer
# under a current count. The server is the store's only writer (DESIGN: one owner).
_generation = 0
_bumping = threading.Lock()


def write_generation() -> int:
    """The current count of finished writes in this process (see `bump_writes`)."""
    return _generation


def bump_writes() -> None:
    """Say a write to the store finished (or was rolled back): caches keyed on
    `write_generation` read the store again."""
    global _generation
    with _bumping:  # monotonic even when two writers finish at once
        _generation += 1


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All statements inside commit together or not at all: an exception, Ctrl-C included,
    rolls back, and a killed process keeps neither."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        bump_writes()
        raise
    con.commit()
    bump_writes()


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


class StoreError(Exception):
    """The store cannot be used as it is; `hint` says what the user can do about it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class StoreLocked(StoreError):
    """Another process holds the store's file (DuckDB admits one writing process)."""


class StoreCorrupt(StoreError):
    """The store's file is not a readable DuckDB database (truncated, overwritten, bad
    checksums)."""


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")
_CORRUPT = (
    "not a valid DuckDB database",
    "Corrupt database file",
    "checksum",
    "Could not read enough bytes",
    "database file is corrupt",
)


def _command_of(pid: int) -> str | None:
    """The command line of process `pid` as a user would type it (`upquant tui ...`), or None
    where it cannot be read (another host's /proc, a process that has exited)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in argv if a]
    if len(words) > 1 and Path(words[0]).name.startswith("python") and words[1].endswith("upquant"):
        words = words[1:]  # `python .../bin/upquant ...`: the script is what the user ran
    if words and words[0].endswith("/upquant"):
        words[0] = "upquant"
    return " ".join(words) or None


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` is DuckDB's answer to Ctrl-C (or a signal the CLI turns into it) arriving
    during a query: DuckDB swallows the KeyboardInterrupt and raises RuntimeError("Query
    interrupted") instead (InterruptException from some calls). Callers that mark work as
    interrupted on Ctrl-C must treat it as one, or a stopped run reads as failed."""
    if isinstance(exc, duckdb.InterruptException):
        return True
    return type(exc) is RuntimeError and str(exc) == "Query interrupted"


def explain(exc: duckdb.Error, path: Path | None = None) -> Exception:
    """A DuckDB error on the store's file as a StoreError a user can act on (who holds the lock,
    what to do with a damaged file), or `exc` itself when it is about something else."""
    text = str(exc)
    where = path or db_path()
    held = _LOCK_HOLDER.search(text)
    if held is not None or "Could not set lock" in text:
        pid = int(held["pid"]) if held else None
        command = _command_of(pid) if pid is not None else None
        holder = (
            f"`{command}` (pid {pid})"
            if command
            else f"process {pid}"
            if pid is not None
            else "another process"
        )
        return StoreLocked(
            f"the store {where} is in use by {holder}; DuckDB lets one process at a time"
            " write a store",
            f"wait for that command to finish or stop it (e.g. `kill {pid or 'PID'}` stops it"
            " cleanly), then run this again; or point UPQUANT_HOME at another store",
        )
    if any(sign in text for sign in _CORRUPT):
        return StoreCorrupt(
            f"the store {where} is damaged and cannot be read ({text.splitlines()[0]})",
            f"move it aside (`mv {where} {where}.damaged`) and restore a backup to {where},"
            " or start an empty store there and re-import or re-fetch the candles; the model"
            f" artifacts under {where.parent / 'artifacts'} are kept",
        )
    return exc


def connect(
    path: Path | str | None = None, *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open (creating and migrating if needed) the store's DuckDB file; StoreLocked when
    another process holds it, StoreCorrupt when it is not a readable database."""
    target = Path(path) if path is not None else db_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(target), read_only=read_only)
    except duckdb.Error as exc:
        raise explain(exc, target) from exc
    if not read_only and target.exists() and target.stat().st_mode & PRIVATE_UMASK:  # older
        target.chmod(0o600)
    try:
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            migrate(con)
    except duckdb.Error as exc:
        con.close()
        raise explain(exc, target) from exc
    return con
