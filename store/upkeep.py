"""Store upkeep (`upquant store check`): the integrity of every registered artifact, and what
crashes and deletions leave behind under `$UPQUANT_HOME`, found and (with `fix`) removed.

Left behind: artifacts no model uses (an ensemble's members count as used), temporary `.part`
files and directories, cache entries no model uses or that differ from their artifact,
checkpoint directories of runs that finished or are gone, files group or others may read, and
a database file grown far beyond what it keeps.

An encrypted artifact's sha256 is checked without the key (it is the encrypted file's); with
the key it was written with, its contents are checked too; with another key configured it
is reported `wrong-key`, with an unusable key setting `key-error` (and that setting is a
finding of its own). A cache entry of an encrypted artifact is a decrypted copy left on disk
(loads keep none): it goes. That one is compacted by copying the store
into a new file, which replaces it only once every table, row and sequence is verified the
same; the old file stays beside it until the replaced store verifies again.

The check holds the store's read-write connection throughout: DuckDB lets no other process
open the store meanwhile, so nothing it removes is in use.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from store.artifacts import (
    ARTIFACTS,
    CACHE,
    PART,
    ArtifactError,
    artifact_files,
    artifact_path,
    holds_exactly,
    read_artifact,
    remove_tree,
)
from store.crypto import (
    ArtifactKey,
    KeyConfigError,
    SealError,
    configured_key,
    is_sealed,
    sealed_key_id,
    unseal,
)
from store.db import DB_FILENAME, PRIVATE_UMASK, connect, home
from store.registry import ModelRecord, list_models

RUNS = "runs"
KEEP_RUNS = ("running", "interrupted", "failed")  # a checkpoint in use, or to resume from
BACKUP = ".bak"  # the store file before a compaction, until the compacted one is verified
COMPACT = ".compact" + PART
# Worth compacting: more of the file is free than in use, and that is a sizeable amount.
GROWN_FREE_BYTES = 16 * 2**20
_ARTIFACT_NAME = re.compile(r"([0-9a-f]{64})\.tar")


@dataclass
class ArtifactCheck:
    """One registered model's artifact file: `ok`, `missing` or `damaged` (saying why); an
    encrypted one also `wrong-key` (another key is configured) or `key-error` (the key
    setting cannot be used)."""

    model: str
    id: int
    path: str
    status: str
    detail: str = ""


@dataclass
class Finding:
    """Something left behind, by its path under the home; `fixed` once dealt with. A backup
    that differs from the store is not `fixable`: only the user knows which is right."""

    kind: str
    path: str
    detail: str
    size: int = 0
    fixable: bool = True
    fixed: bool = False


@dataclass
class DatabaseSize:
    file_bytes: int
    used_bytes: int
    free_bytes: int
    compacted_bytes: int | None = None

    @property
    def grown(self) -> bool:
        return self.free_bytes >= GROWN_FREE_BYTES and self.free_bytes > self.used_bytes


@dataclass
class StoreReport:
    home: Path
    artifacts: list[ArtifactCheck] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    database: DatabaseSize | None = None

    @property
    def problems(self) -> int:
        """What is still wrong: artifacts not ok (nothing here can repair them: retrain or
        delete those models) and findings not fixed."""
        return sum(a.status != "ok" for a in self.artifacts) + sum(
            not f.fixed for f in self.findings
        )

    def to_dict(self) -> dict[str, Any]:
        database = None
        if self.database is not None:
            database = {**vars(self.database), "grown": self.database.grown}
        return {
            "home": str(self.home),
            "artifacts": [vars(a) for a in self.artifacts],
            "findings": [vars(f) for f in self.findings],
            "database": database,
            "problems": self.problems,
        }


def check_store(fix: bool = False) -> StoreReport:
    """Check the store at `$UPQUANT_HOME`; with `fix`, remove what is left behind, make what
    others may read private, and compact a grown database file. Missing or damaged artifacts
    are reported, never touched."""
    root = home()
    report = StoreReport(root)
    con = connect()
    try:
        records = list_models(con)
        runs = {
            int(i): str(s)
            for i, s in con.execute("SELECT id, status FROM training_runs").fetchall()
        }
        key, key_problem = _key()
        report.artifacts = [_check_artifact(r, key, key_problem) for r in records]
        report.findings = [
            *([key_problem] if key_problem else []),
            *_artifact_leftovers(root, records),
            *_cache_leftovers(root, records),
            *_run_leftovers(root, runs),
            *_root_leftovers(root, con),
        ]
        for finding in report.findings:
            if fix and finding.fixable:
                remove_tree(root / finding.path)
                finding.fixed = True
        report.findings += _loose_permissions(root, fix)
        con.execute("CHECKPOINT")
        report.database = database = _database_size(con, root / DB_FILENAME)
    finally:
        con.close()
    if database.grown:
        grown = Finding(
            "database",
            DB_FILENAME,
            f"{_mib(database.free_bytes)} of its {_mib(database.file_bytes)} is"
            " free space; compacting copies what it keeps into a smaller file",
            database.free_bytes,
        )
        report.findings.append(grown)
        if fix:
            database.compacted_bytes = compact(root / DB_FILENAME)
            grown.fixed = True
    return report


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def _used(records: list[ModelRecord]) -> set[str]:
    """The sha256 of every artifact a model uses, an ensemble's members included."""
    shas = {r.sha256 for r in records}
    for r in records:
        shas |= {str(m["sha256"]) for m in r.params.get("members", []) if "sha256" in m}
    return shas


def _key() -> tuple[ArtifactKey | None, Finding | None]:
    """The configured artifact key, or the finding that says why its setting is unusable."""
    try:
        return configured_key(), None
    except KeyConfigError as exc:
        return None, Finding("key", exc.variable, f"{exc}; {exc.hint}", fixable=False)


def _check_artifact(
    record: ModelRecord, key: ArtifactKey | None, key_problem: Finding | None
) -> ArtifactCheck:
    path = artifact_path(record.artifact, record.sha256)
    check = ArtifactCheck(record.ref, record.id, str(path), "ok")
    if not path.exists():
        check.status, check.detail = "missing", f"{path} does not exist"
        return check
    try:
        data = read_artifact(path, record.sha256, record.size)  # integrity first, keyless
        if not is_sealed(data):
            artifact_files(data, path)
            return check
        written_with = sealed_key_id(data)
        if key_problem is not None:
            check.status = "key-error"
            check.detail = f"encrypted (key id {written_with}); {key_problem.detail}"
        elif key is None:
            check.detail = (
                f"encrypted (key id {written_with}): sha256 verified; its contents are"
                " checked with the key only"
            )
        elif written_with != key.id:
            check.status = "wrong-key"
            check.detail = (
                f"encrypted with key id {written_with}; the configured key ({key.source})"
                f" has id {key.id}"
            )
        else:
            artifact_files(unseal(data, key, path), path)
            check.detail = f"encrypted (key id {written_with})"
    except (ArtifactError, SealError) as exc:
        check.status, check.detail = "damaged", str(exc)
    return check


def _walk(root: Path) -> Iterator[Path]:
    """`root` and everything under it, links listed but never followed."""
    yield root
    for parent, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            yield Path(parent) / name


def _entries(directory: Path) -> list[Path]:
    if not directory.is_dir() or directory.is_symlink():
        return []
    return sorted(directory.iterdir())


def _finding(root: Path, kind: str, path: Path, detail: str) -> Finding:
    size = sum(p.lstat().st_size for p in _walk(path) if not p.is_dir() or p.is_symlink())
    return Finding(kind, path.relative_to(root).as_posix(), detail, size)


def _artifact_leftovers(root: Path, records: list[ModelRecord]) -> Iterator[Finding]:
    used = _used(records)
    for entry in _entries(root / ARTIFACTS):
        named = _ARTIFACT_NAME.fullmatch(entry.name)
        if entry.name.endswith(PART):
            yield _finding(root, "temporary", entry, "left by an interrupted write")
        elif named is None or entry.is_symlink() or not entry.is_file():
            yield _finding(root, "artifact", entry, "not an artifact file")
        elif named.group(1) not in used:
            yield _finding(root, "artifact", entry, "no model uses it")


def _cache_leftovers(root: Path, records: list[ModelRecord]) -> Iterator[Finding]:
    """A cache entry is an unpacked artifact: one no model uses, or that differs from its
    artifact (an unpacking cut short, or altered), goes; a load unpacks it again."""
    used = _used(records)
    for entry in _entries(root / CACHE):
        if entry.name.endswith(PART):
            yield _finding(root, "temporary", entry, "left by an interrupted unpacking")
            continue
        if entry.name not in used:
            yield _finding(root, "cache", entry, "no model uses it")
            continue
        path = artifact_path(None, entry.name)
        try:
            data = read_artifact(path, entry.name, path.stat().st_size)
            if is_sealed(data):
                yield _finding(root, "cache", entry, "a decrypted copy of an encrypted artifact")
                continue
            files = artifact_files(data, path)
        except (ArtifactError, OSError):
            yield _finding(root, "cache", entry, "its artifact is missing or damaged")
            continue
        if not holds_exactly(entry, files):
            yield _finding(root, "cache", entry, "incomplete: it differs from its artifact")


def _run_leftovers(root: Path, runs: dict[int, str]) -> Iterator[Finding]:
    for entry in _entries(root / RUNS):
        status = runs.get(int(entry.name)) if entry.name.isdigit() else None
        if status in KEEP_RUNS and entry.is_dir() and not entry.is_symlink():
            if status != "running":  # a running one may be writing its .part right now
                for part in sorted(entry.rglob(f"*{PART}")):
                    yield _finding(root, "temporary", part, "left by an interrupted checkpoint")
            continue
        why = f"run {entry.name} is {status}" if status else "no such training run"
        yield _finding(root, "checkpoint", entry, why)


def _root_leftovers(root: Path, con: duckdb.DuckDBPyConnection) -> Iterator[Finding]:
    for entry in _entries(root):
        if entry.name.endswith((PART, PART + ".wal")):  # a compaction's copy, and its WAL
            yield _finding(root, "temporary", entry, "left by an interrupted write")
        elif entry.name == DB_FILENAME + BACKUP:
            if _same_database(con, entry):
                yield _finding(
                    root, "backup", entry, "left by a compaction; the store holds the same"
                )
            else:
                finding = _finding(
                    root,
                    "backup",
                    entry,
                    "left by a compaction and it differs from the store: keep it until you"
                    " know which is right, then move it out of the home",
                )
                finding.fixable = False
                yield finding


def _loose_permissions(root: Path, fix: bool) -> Iterator[Finding]:
    """Files and directories group or others may use (made by an older upquant, or by hand)."""
    for path in _walk(root):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or not mode & PRIVATE_UMASK:
            continue
        private = stat.S_IMODE(mode) & 0o700 | (0o700 if stat.S_ISDIR(mode) else 0o600)
        finding = Finding(
            "permissions",
            path.relative_to(root).as_posix(),
            f"{stat.filemode(mode)}: group or others may use it",
        )
        if fix:
            path.chmod(private)
            finding.fixed = True
        yield finding


# --- the database file --------------------------------------------------------------------------
def _database_size(con: duckdb.DuckDBPyConnection, path: Path) -> DatabaseSize:
    """The file's size on disk beside what DuckDB keeps in it. DuckDB's own count of free
    blocks includes ones past a truncated end of the file, which take no space."""
    block, used = con.execute(
        "SELECT block_size, used_blocks FROM pragma_database_size()"
        " WHERE database_name = current_database()"
    ).fetchall()[0]
    stat_ = path.stat()
    on_disk = min(stat_.st_size, getattr(stat_, "st_blocks", 0) * 512 or stat_.st_size)
    used_bytes = int(used) * int(block)
    return DatabaseSize(on_disk, used_bytes, max(0, on_disk - used_bytes))


def _fingerprint(con: duckdb.DuckDBPyConnection, database: str) -> dict[str, Any]:
    """What a copy must keep: the schema (tables, views, indexes, and sequences with their next
    values, as SQL) and every table's rows (their count and an order-free hash of them)."""
    catalog = {
        kind: sorted(
            str(sql)
            for (sql,) in con.execute(
                f"SELECT sql FROM duckdb_{kind}() WHERE database_name = ?", [database]
            ).fetchall()
        )
        for kind in ("tables", "views", "indexes", "sequences")
    }
    tables = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1, 2",
        [database],
    ).fetchall()
    rows = {
        f"{schema}.{table}": con.execute(
            f'SELECT count(*), coalesce(sum(hash(t)), 0)::VARCHAR FROM "{database}"."{schema}"."{table}" AS t'
        ).fetchall()[0]
        for schema, table in tables
    }
    return {"catalog": catalog, "rows": rows}


def _attach(
    con: duckdb.DuckDBPyConnection, path: Path, alias: str, read_only: bool = False
) -> None:
    quoted = str(path).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS {alias}{' (READ_ONLY)' if read_only else ''}")


def _same_database(con: duckdb.DuckDBPyConnection, other: Path) -> bool:
    mine = con.execute("SELECT current_database()").fetchall()[0][0]
    try:
        _attach(con, other, "upkeep_other", read_only=True)
    except duckdb.Error:
        return False
    try:
        return _fingerprint(con, mine) == _fingerprint(con, "upkeep_other")
    finally:
        con.execute("DETACH upkeep_other")


class CompactionError(Exception):
    """The compacted copy of the store did not verify; the store was left as it was."""


def compact(path: Path) -> int:
    """Rewrite the store file at `path` without its free space; returns its new size. No
    connection to `path` may be open. The copy replaces the file only once its schema, rows
    and sequences are verified the same, and the old file stays beside it (`.bak`, a second
    name for it, so the swap is one atomic rename) until the replaced store verifies again;
    any failure leaves, or puts back, the old file."""
    fresh = path.with_name(path.name + COMPACT)
    backup = path.with_name(path.name + BACKUP)
    remove_tree(fresh)
    with duckdb.connect(str(path)) as con:
        source = con.execute("SELECT current_database()").fetchall()[0][0]
        _attach(con, fresh, "upkeep_fresh")
        try:
            con.execute(f'COPY FROM DATABASE "{source}" TO upkeep_fresh')
            same = _fingerprint(con, source) == _fingerprint(con, "upkeep_fresh")
        finally:
            con.execute("DETACH upkeep_fresh")
    if not same:
        remove_tree(fresh)
        raise CompactionError(f"the compacted copy of {path} differs from it; nothing was replaced")
    remove_tree(backup)
    try:
        os.link(path, backup)
    except OSError:  # a file system without hard links
        shutil.copy2(path, backup)
    try:
        os.replace(fresh, path)
        with duckdb.connect(str(path)) as con:
            if not _same_database(con, backup):
                raise CompactionError(f"the compacted {path} differs from its backup; put back")
    except BaseException:
        os.replace(backup, path)
        remove_tree(fresh)
        raise
    backup.unlink()
    return path.stat().st_size
