"""The SQLite engine: WAL mode, one writer thread, an update log and snapshots.

    documents(id, name UNIQUE, created_at, updated_at)
    snapshots(id, doc_id, created_at, data)   -- the newest one is the base
    updates(id, doc_id, created_at, data)     -- the log since that snapshot

Loading reads the newest snapshot plus the log. Compaction inserts a snapshot
and deletes the log rows it covers, in the same transaction as the writes
before it. The schema is versioned with ordered sqlite-utils migrations; a
database written by a newer collab is refused, never modified or moved aside.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ..errors import ConfigError, StorageError
from . import DocumentInfo, StoredRecord
from .group_commit import GroupCommitStore, WriteOp

__all__ = ["SQLiteStore", "migrations"]

migrations = Migrations("collab")
MIGRATION_NAMES: list[str] = []


def migration(function: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register a schema migration; they run in the order they are defined, each once."""
    MIGRATION_NAMES.append(function.__name__)
    return migrations()(function)


@migration
def m001_documents_snapshots_updates(db: Database) -> None:
    db.execute(
        """CREATE TABLE documents (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)"""
    )
    for table in ("snapshots", "updates"):
        db.execute(
            f"""CREATE TABLE {table} (
                id INTEGER PRIMARY KEY,
                doc_id INTEGER NOT NULL REFERENCES documents(id),
                created_at REAL NOT NULL,
                data BLOB NOT NULL)"""
        )
        db.execute(f"CREATE INDEX {table}_by_doc ON {table}(doc_id, id)")


SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")


class SQLiteStore(GroupCommitStore):
    """Documents in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        commit_interval: float = 0.05,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(commit_interval=commit_interval)
        if synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._db: Database | None = None
        self._doc_ids: dict[str, int] = {}

    @property
    def db(self) -> Database:
        if self._db is None:
            raise StorageError("store is not open")
        return self._db

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise StorageError(f"cannot open database {self.path}: {error}") from error
        db = Database(conn)
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StorageError(f"{self.path}: SQLite refused WAL mode")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        unknown = {m.name for m in migrations.applied(db)} - set(MIGRATION_NAMES)
        if unknown:
            conn.close()
            raise ConfigError(
                f"{self.path} was migrated by a newer collab ({', '.join(sorted(unknown))}); upgrade collab"
            )
        migrations.apply(db)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None

    def _doc_id(self, name: str, at: float) -> int:
        doc_id = self._doc_ids.get(name)
        if doc_id is None:
            row = self.db.execute("SELECT id FROM documents WHERE name = ?", [name]).fetchone()
            if row is None:
                cursor = self.db.execute(
                    "INSERT INTO documents (name, created_at, updated_at) VALUES (?, ?, ?)", [name, at, at]
                )
                doc_id = cursor.lastrowid
            else:
                doc_id = row[0]
            assert doc_id is not None
            self._doc_ids[name] = doc_id
        return doc_id

    def _commit(self, batch: list[WriteOp]) -> None:
        try:
            with self.db.atomic():
                for op in batch:
                    self._write(op)
        except BaseException:
            # Ids of documents inserted by the rolled back transaction are void.
            self._doc_ids.clear()
            raise

    def _write(self, op: WriteOp) -> None:
        db = self.db
        doc_id = self._doc_id(op.name, op.at)
        if op.kind == "compact":
            db.execute("DELETE FROM updates WHERE doc_id = ?", [doc_id])
            db.execute("DELETE FROM snapshots WHERE doc_id = ?", [doc_id])
            table = "snapshots"
        else:
            table = "updates"
        db.execute(f"INSERT INTO {table} (doc_id, created_at, data) VALUES (?, ?, ?)", [doc_id, op.at, op.data])
        db.execute("UPDATE documents SET updated_at = max(updated_at, ?) WHERE id = ?", [op.at, doc_id])

    def _load(self, name: str) -> list[StoredRecord]:
        db = self.db
        row = db.execute("SELECT id FROM documents WHERE name = ?", [name]).fetchone()
        if row is None:
            return []
        doc_id = row[0]
        records = [
            StoredRecord("snapshot", snapshot_id, data)
            for snapshot_id, data in db.execute(
                "SELECT id, data FROM snapshots WHERE doc_id = ? ORDER BY id DESC LIMIT 1", [doc_id]
            )
        ]
        records += [
            StoredRecord("update", update_id, data)
            for update_id, data in db.execute("SELECT id, data FROM updates WHERE doc_id = ? ORDER BY id", [doc_id])
        ]
        return records

    def _documents(self) -> list[DocumentInfo]:
        rows = self.db.execute(
            """SELECT d.name, d.created_at, d.updated_at,
                 coalesce((SELECT sum(length(data)) FROM snapshots s WHERE s.doc_id = d.id), 0),
                 coalesce((SELECT sum(length(data)) FROM updates u WHERE u.doc_id = d.id), 0),
                 (SELECT count(*) FROM updates u WHERE u.doc_id = d.id)
               FROM documents d ORDER BY d.name"""
        )
        return [
            DocumentInfo(
                name=name,
                size=snapshot_bytes + log_bytes,
                log_length=log_length,
                created_at=created_at,
                updated_at=updated_at,
            )
            for name, created_at, updated_at, snapshot_bytes, log_bytes, log_length in rows
        ]
