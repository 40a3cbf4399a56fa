"""The in-process Workstation's hold on the store: one DuckDB connection, a cursor per thread.

A one-shot command opens the store on its first operation and closes it when done; the
server keeps one open for its lifetime and runs operations on worker threads, each with its
own cursor of the same database (DuckDB's way to use one database from several threads).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    import duckdb


class StoreHolder:
    """Owns the store connection of an in-process Workstation."""

    def __init__(self, con: duckdb.DuckDBPyConnection | None = None) -> None:
        self._root = con
        self._owned = con is None  # a connection handed in is its giver's to close
        self._local = threading.local()
        self._lock = threading.Lock()

    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection to the store (opened, and migrated, on first use)."""
        cursor = getattr(self._local, "con", None)
        if cursor is None:
            with self._lock:
                if self._root is None:
                    from store.db import connect

                    self._root = connect()
                root = self._root
            cursor = self._local.con = root if threading.current_thread() is threading.main_thread() else root.cursor()
        return cursor

    def close(self) -> None:
        with self._lock:
            if self._root is not None and self._owned:
                self._root.close()
            self._root = None
            self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
