"""Reading collab's SQLite schema: shared by the store and by read-only readers (export).

Every function takes a `sqlite3.Connection`; `SQLiteReader` runs them inside
one read transaction for a consistent view while a server keeps writing (WAL
lets readers and the writer proceed without blocking).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

from pycrdt import merge_updates

from ..errors import CorruptDocumentError, HistoryError, InvalidUpdateError, StorageError
from ..sync.yupdate import check_update
from ..units import format_time
from . import DocumentInfo, HistoryPoint, StoredRecord

__all__ = [
    "SQLiteReader",
    "connect_read_only",
    "first_checked_ids",
    "read_documents",
    "read_history",
    "read_records",
]


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


def _doc_id(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT id FROM documents WHERE name = ?", [name]).fetchone()
    return None if row is None else int(row[0])


def read_records(
    conn: sqlite3.Connection, name: str, at: float | None, first_checked: dict[str, int]
) -> list[StoredRecord]:
    """What to apply, in order, to get `name` now or as it was at Unix time `at`; [] if unknown.

    `first_checked` is `first_checked_ids(conn)`: a row is marked `checked` from its table's id on.

    Raises `HistoryError` if `at` is before the history kept for the document.
    """
    doc_id = _doc_id(conn, name)
    if doc_id is None:
        return []
    snapshot = conn.execute(
        "SELECT id, created_at, data FROM snapshots WHERE doc_id = ? ORDER BY id DESC LIMIT 1", [doc_id]
    ).fetchone()
    if at is None or snapshot is None or at >= snapshot[1]:
        first_snapshot, first_update = first_checked.get("snapshots"), first_checked.get("updates")
        records = (
            []
            if snapshot is None
            else [
                StoredRecord(
                    "snapshot", snapshot[0], snapshot[2], first_snapshot is not None and snapshot[0] >= first_snapshot
                )
            ]
        )
        condition, args = ("", [doc_id]) if at is None else (" AND created_at <= ?", [doc_id, at])
        records += [
            StoredRecord("update", update_id, data, first_update is not None and update_id >= first_update)
            for update_id, data in conn.execute(
                f"SELECT id, data FROM updates WHERE doc_id = ?{condition} ORDER BY id", args
            )
        ]
        return records
    return [_checkpoint_at(conn, name, doc_id, at)]


def _checkpoint_at(conn: sqlite3.Connection, name: str, doc_id: int, at: float) -> StoredRecord:
    chain = conn.execute(
        "SELECT id, created_at, base, data FROM checkpoints WHERE doc_id = ? AND created_at <= ? ORDER BY id",
        [doc_id, at],
    ).fetchall()
    if not chain:
        oldest = conn.execute("SELECT min(created_at) FROM checkpoints WHERE doc_id = ?", [doc_id]).fetchone()[0]
        kept = "no history is kept" if oldest is None else f"history starts at {format_time(oldest)}"
        raise HistoryError(f"document {name!r} has no state for {format_time(at)}: {kept}")
    start = max((index for index, row in enumerate(chain) if row[2]), default=None)
    if start is None:
        raise CorruptDocumentError(f"document {name!r}: checkpoint chain has no base before {format_time(at)}")
    parts = [row[3] for row in chain[start:]]
    if len(parts) == 1:
        return StoredRecord("checkpoint", chain[-1][0], parts[0])
    for checkpoint_id, _, _, data in chain[start:]:
        try:
            check_update(data, strict=False)  # before pycrdt merges it (see collab.sync.yupdate)
        except InvalidUpdateError as error:
            # The text `room.check_records` gives a row it walks.
            raise CorruptDocumentError(
                f"document {name!r}: stored checkpoint #{checkpoint_id} does not decode ({error})"
            ) from error
    # Every part was walked just now, so the merge need not be walked again (`room.check_records`).
    return StoredRecord("checkpoint", chain[-1][0], merge_updates(*parts), checked=True)


def read_history(conn: sqlite3.Connection, name: str) -> list[HistoryPoint]:
    """Every moment `name` can be exported at, oldest first; [] if unknown."""
    doc_id = _doc_id(conn, name)
    if doc_id is None:
        return []
    rows = conn.execute(
        """SELECT created_at, 'checkpoint', length(data) FROM checkpoints WHERE doc_id = ?1
           UNION ALL SELECT created_at, 'update', length(data) FROM updates WHERE doc_id = ?1
           ORDER BY 1""",
        [doc_id],
    )
    return [HistoryPoint(at, kind, size) for at, kind, size in rows]


def read_documents(conn: sqlite3.Connection, name: str | None = None) -> list[DocumentInfo]:
    """Every stored document by name, or just `name` (then [] if it is unknown)."""
    where, args = ("", []) if name is None else ("WHERE d.name = ?", [name])
    rows = conn.execute(
        f"""SELECT d.name, d.created_at, d.updated_at,
             coalesce((SELECT sum(length(data)) FROM snapshots s WHERE s.doc_id = d.id), 0),
             coalesce((SELECT sum(length(data)) FROM updates u WHERE u.doc_id = d.id), 0),
             (SELECT count(*) FROM updates u WHERE u.doc_id = d.id),
             coalesce((SELECT sum(length(data)) FROM checkpoints c WHERE c.doc_id = d.id), 0)
           FROM documents d {where} ORDER BY d.name""",
        args,
    )
    return [
        DocumentInfo(
            name=name,
            size=snapshot_bytes + log_bytes,
            log_length=log_length,
            created_at=created_at,
            updated_at=updated_at,
            history_size=history_bytes,
        )
        for name, created_at, updated_at, snapshot_bytes, log_bytes, log_length, history_bytes in rows
    ]


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
        self._first_checked: dict[str, int] = {}

    def __enter__(self) -> Self:
        try:
            self.conn.execute("BEGIN")
            self._first_checked = first_checked_ids(self.conn)
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
        return self._reading(read_documents, self.conn, name)

    def records(self, name: str, at: float | None = None) -> list[StoredRecord]:
        return self._reading(read_records, self.conn, name, at, self._first_checked)

    def history(self, name: str) -> list[HistoryPoint]:
        return self._reading(read_history, self.conn, name)

    def _reading(self, read: Callable[..., T], *args: object) -> T:
        """`read(*args)`, with the driver's errors (a damaged file, an unknown schema) as `StorageError`."""
        try:
            return read(*args)
        except sqlite3.Error as error:
            raise StorageError(f"cannot read {self.path}: {error}") from error
