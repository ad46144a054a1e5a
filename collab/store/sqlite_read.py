"""Reading collab's SQLite database: shared by the store and by read-only readers (export).

The reads themselves are `tables.Tables`, the same on every engine; this
module connects them to a `sqlite3.Connection`. `SQLiteReader` runs them
inside one read transaction for a consistent view while a server keeps
writing (WAL lets readers and the writer proceed without blocking).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from ..errors import StorageError
from . import DocumentDump, DocumentInfo, HistoryPoint, StoredRecord
from .outbox import Listing, OutboxTables
from .tables import Tables

__all__ = ["SQLiteReader", "connect_read_only", "first_checked_ids", "outbox_tables", "sqlite_tables"]


T = TypeVar("T")

CHECKED_TABLES = ("snapshots", "updates")
"""Tables whose rows are marked `checked` when a walking collab wrote them (migration m004_checked_rows)."""


def connect_read_only(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to the database at `path` that can never write to it (autocommit: `BEGIN` yourself)."""
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=check_same_thread
    )


def first_checked_ids(conn: sqlite3.Connection) -> dict[str, int]:
    """Per table, the first row id a walking collab wrote; tables missing (an older schema) count none.

    The table never changes after its migration: read it once per connection (or read transaction).
    Any other failure (a locked database, an I/O error) raises `StorageError`: reading it as "no row
    checked" would walk every row again, and hide the failure until the next read.
    """
    try:
        return dict(conn.execute("SELECT tab, first_id FROM checked_rows").fetchall())
    except sqlite3.Error as error:
        if str(error) == "no such table: checked_rows":  # a database this collab has not migrated yet
            return {}
        raise StorageError(f"cannot read which rows are checked: {error}") from error


def sqlite_tables(conn: sqlite3.Connection, first_checked: dict[str, int]) -> Tables:
    """collab's tables through `conn`; `first_checked` is `first_checked_ids(conn)`."""
    checked = {
        table: f"id >= {int(first_checked[table])}" if table in first_checked else "0" for table in CHECKED_TABLES
    }

    def execute(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return conn.execute(sql, params).fetchall()

    def insert_rows(table: str, rows: Sequence[tuple[int, float, bytes]]) -> list[int]:
        # Rows from the first id in checked_rows on count as walked: nothing to mark.
        sql = f"INSERT INTO {table} (doc_id, created_at, data) VALUES (?, ?, ?)"
        return [_row_id(conn.execute(sql, row).lastrowid) for row in rows]

    return Tables(execute, conn.execute, conn.executemany, insert_rows, checked)


def outbox_tables(conn: sqlite3.Connection) -> OutboxTables:
    """The webhook outbox through `conn` (see `outbox`)."""
    return OutboxTables(lambda sql, params=(): conn.execute(sql, params).fetchall(), conn.executemany)


def _row_id(row_id: int | None) -> int:
    assert row_id is not None, "an INSERT gives its row's id"
    return row_id


class SQLiteReader:
    """A read-only view of a collab database as of one moment (a `Reader`): it can never write to it.

    Reads inside `with` share one read transaction, which starts at the first read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StorageError(f"no database at {self.path}")
        try:
            self.conn = connect_read_only(self.path)
            self.conn.execute("SELECT count(*) FROM documents").fetchone()
        except sqlite3.Error as error:
            raise StorageError(f"{self.path} is not a collab database: {error}") from error
        self._tables = sqlite_tables(self.conn, {})

    def __enter__(self) -> Self:
        try:
            self.conn.execute("BEGIN")
            self._tables = sqlite_tables(self.conn, first_checked_ids(self.conn))
        except BaseException:
            self.conn.close()  # `with` calls no __exit__ when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.execute("COMMIT")
        finally:
            self.conn.close()

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        return self._reading(self._tables.documents, name)

    def records(self, name: str, at: float | None = None) -> list[StoredRecord]:
        return self._reading(self._tables.records, name, at)

    def history(self, name: str) -> list[HistoryPoint]:
        return self._reading(self._tables.history, name)

    def dump(self, name: str) -> DocumentDump | None:
        return self._reading(self._tables.dump, name)

    def webhooks(self, *, failed_only: bool = False) -> Listing:
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'webhook_events'").fetchall():
            return Listing([], {})  # a database this collab has not migrated yet
        return self._reading(lambda: outbox_tables(self.conn).listing(failed_only=failed_only))

    def _reading(self, read: Callable[..., T], *args: object) -> T:
        """`read(*args)`, with the driver's errors (a damaged file, an unknown schema) as `StorageError`."""
        try:
            return read(*args)
        except sqlite3.Error as error:
            raise StorageError(f"cannot read {self.path}: {error}") from error
