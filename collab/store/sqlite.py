"""The SQLite engine: WAL mode, one writer thread, an update log, snapshots, checkpoints.

The tables are those of `tables` (the same on PostgreSQL), plus

    revocations(id, created_at, token_id, scope, before)
                                                 -- `collab revoke`, polled by the server (see `revocations`)
    checked_rows(tab, first_id)                  -- rows from first_id on were walked before they were stored

Loading reads the snapshot plus the log. Compaction, in the same transaction as
the writes before it, turns the log rows it read into checkpoints (see
`compaction`), merges them into a new snapshot and deletes exactly them. A
delete removes a document's rows and its id, which is never handed out again
(m005): a document later made by that name is a new one, to this engine and to
any other on the file. The schema is versioned with ordered sqlite-utils
migrations; a database written by a newer collab is refused, never modified or
moved aside. Reads live in `sqlite_read` and `tables`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ..errors import ConfigError, StorageError
from . import DocumentDump, DocumentInfo, HistoryPoint, StoredRecord, WriteOp
from .compaction import OwnRows
from .history import Retention
from .outbox import CREATED, DELETED, RENAMED, OutboxTables, Recording, RecordingSetting, changes_of, resolve
from .sqlite_read import CHECKED_TABLES, connect_read_only, first_checked_ids, outbox_tables, sqlite_tables
from .tables import Tables

__all__ = ["SQLiteEngine", "migrate", "migrations", "open_database"]

T = TypeVar("T")

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


@migration
def m002_checkpoints(db: Database) -> None:
    db.execute(
        """CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            doc_id INTEGER NOT NULL REFERENCES documents(id),
            created_at REAL NOT NULL,
            base INTEGER NOT NULL,
            data BLOB NOT NULL)"""
    )
    db.execute("CREATE INDEX checkpoints_by_doc ON checkpoints(doc_id, id)")


@migration
def m003_revocations(db: Database) -> None:
    # Either token_id (one token), or scope and before (a document's or prefix's tokens issued before then).
    db.execute(
        """CREATE TABLE revocations (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            token_id TEXT,
            scope TEXT,
            before REAL,
            CHECK ((token_id IS NOT NULL AND scope IS NULL AND before IS NULL)
                OR (token_id IS NULL AND scope IS NOT NULL AND before IS NOT NULL)))"""
    )


@migration
def m004_checked_rows(db: Database) -> None:
    # Rows from this migration on were walked (collab.sync.yupdate) before they were stored; older ones may hold
    # what crashes pycrdt and are walked when read. Ids are reused only below the first id recorded here
    # (SQLite picks max(rowid) + 1), so a row can be taken for older than it is, never for newer.
    db.execute("CREATE TABLE checked_rows (tab TEXT PRIMARY KEY, first_id INTEGER NOT NULL)")
    for table in CHECKED_TABLES:
        db.execute(f"INSERT INTO checked_rows (tab, first_id) SELECT ?, coalesce(max(id), 0) + 1 FROM {table}", [table])


@migration
def m005_document_ids_never_reused(db: Database) -> None:
    # SQLite gives a new row max(id) + 1, so a deleted newest document's id came back for the next one, which
    # an engine of another process still caching the id, or tracking its own rows by it (`OwnRows`), would take
    # for the deleted one. AUTOINCREMENT never hands out an id again. SQLite cannot alter a key: the table is
    # rebuilt the documented way, with foreign keys off (`open_database` turns them on after migrating), and
    # the tables referring to it keep referring to it by name.
    db.execute(
        """CREATE TABLE documents_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)"""
    )
    columns = "id, name, created_at, updated_at"
    db.execute(f"INSERT INTO documents_new ({columns}) SELECT {columns} FROM documents")
    db.execute("DROP TABLE documents")
    db.execute("ALTER TABLE documents_new RENAME TO documents")


@migration
def m006_webhook_outbox(db: Database) -> None:
    # See `outbox`: the events of each change, written in its transaction, until every webhook has them.
    db.execute(
        """CREATE TABLE webhook_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL,
            type TEXT NOT NULL,
            name TEXT NOT NULL,
            also TEXT,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL,
            gathering INTEGER NOT NULL,
            details TEXT,
            created_at REAL NOT NULL)"""
    )
    db.execute("CREATE UNIQUE INDEX webhook_events_gathering ON webhook_events(name) WHERE gathering")
    db.execute("CREATE INDEX webhook_events_undescribed ON webhook_events(id) WHERE details IS NULL")
    db.execute("CREATE UNIQUE INDEX webhook_events_uid ON webhook_events(uid)")
    db.execute(
        """CREATE TABLE webhook_deliveries (
            event_id INTEGER NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
            target TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_at REAL NOT NULL,
            since REAL,
            unreachable_at REAL,
            last_error TEXT,
            failed INTEGER NOT NULL,
            PRIMARY KEY (event_id, target))"""
    )
    db.execute("CREATE INDEX webhook_deliveries_queued ON webhook_deliveries(target, failed, event_id)")
    db.execute(
        "CREATE TABLE webhook_lease (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, until REAL NOT NULL)"
    )
    db.execute(
        """CREATE TABLE webhook_config (
            id INTEGER PRIMARY KEY CHECK (id = 1), targets TEXT NOT NULL, types TEXT NOT NULL)"""
    )


def migrate(db: Database, path: Path) -> None:
    """Bring the schema up to date; `StorageError` if a newer collab migrated it (never touch what we do not know).

    Not a `ConfigError`: the database is fine and so is the command line; this collab cannot use it (exit 5).
    """
    _refuse_newer(db, path)
    if not migrations.pending(db):
        return  # opening writes nothing: a write lock held elsewhere delays only the first commit
    # Under the write lock from the start, so that processes opening one new file at once (`--workers`)
    # take turns: the second waits (busy_timeout), then finds the migrations applied. In a deferred
    # transaction both would read, and the second's first write would fail at once ("database is locked").
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        _refuse_newer(db, path)
        migrations.apply(db)  # each migration in a savepoint of this transaction
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()


def _set_wal(db: Database, busy_timeout: float) -> str:
    """Put the database in WAL mode; the journal mode it is in after.

    Turning a new file to WAL needs it alone for a moment, and SQLite answers "database is locked" at once
    rather than wait for it: processes creating one file together (`--workers`) try again for up to
    `busy_timeout`, 10 ms apart.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _refuse_newer(db: Database, path: Path) -> None:
    unknown = {m.name for m in migrations.applied(db)} - set(MIGRATION_NAMES)
    if unknown:
        raise StorageError(f"{path} was migrated by a newer collab ({', '.join(sorted(unknown))}); upgrade collab")


SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")
DEFAULT_RETENTION = Retention()


def open_database(path: Path, busy_timeout: float = 5.0, synchronous: str = "full") -> Database:
    """Open (creating it and its folder if needed) and migrate the database at `path`, in WAL mode.

    Raises `StorageError` if it cannot be opened or a newer collab migrated it; the
    connection is closed on any failure. Usable from any thread (the store's writer thread opens it).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)
    except (OSError, sqlite3.Error) as error:
        raise StorageError(f"cannot open database {path}: {error}") from error
    try:
        db = Database(conn)
        if _set_wal(db, busy_timeout) != "wal":
            raise StorageError(f"{path}: SQLite refused WAL mode")
        db.execute(f"PRAGMA synchronous={synchronous}")
        migrate(db, path)
        db.execute("PRAGMA foreign_keys=ON")  # after: a migration rebuilding a table needs them off (m005)
    except sqlite3.Error as error:
        conn.close()
        raise StorageError(f"cannot open database {path}: {error}") from error
    except BaseException:
        conn.close()
        raise
    return db


class SQLiteEngine:
    """Documents in one SQLite file: the `Engine` `collab serve` runs on."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        retention: Retention = DEFAULT_RETENTION,
        recording: RecordingSetting = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.retention = retention
        self._recording_setting = recording
        self.recording: Recording | None = None
        """What each change adds to the webhook outbox (see `outbox`), once open; None: webhooks are off."""
        self._db: Database | None = None
        self._first_checked: dict[str, int] = {}
        """`first_checked_ids`, read once on open: the table never changes after its migration."""
        self._doc_ids: dict[str, int] = {}
        """Document ids by name, trusted only while no other connection has committed (`_data_version`)."""
        self._data_version: int | None = None
        self._own = OwnRows()
        """The rows this engine wrote, which the rooms' snapshots hold already (see `compaction`)."""
        self._created: list[tuple[str, float]] = []
        """Documents the commit under way made, for their document.created events."""
        self._outbox_reader: sqlite3.Connection | None = None
        """`read_outbox`'s own read-only connection (WAL: it reads while the store's connection writes)."""

    @property
    def db(self) -> Database:
        if self._db is None:
            raise StorageError("store is not open")
        return self._db

    def open(self) -> None:
        db = open_database(self.path, self.busy_timeout, self.synchronous)
        try:
            self._first_checked = first_checked_ids(db.conn)
        except BaseException:
            db.conn.close()
            raise
        self._db = db
        self.recording = self.outbox(lambda outbox: resolve(outbox, self._recording_setting))

    def check_writable(self) -> None:
        # Taking the write lock (and giving it back) is what a commit needs first.
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("ROLLBACK")

    def close(self) -> None:
        if self._outbox_reader is not None:
            self._outbox_reader.close()
            self._outbox_reader = None
        if self._db is not None:
            self._db.conn.close()
            self._db = None
            self._doc_ids.clear()
            self._data_version = None

    def _doc_id(self, name: str, at: float) -> int:
        doc_id = self._doc_ids.get(name)
        if doc_id is None:
            row = self.db.execute("SELECT id FROM documents WHERE name = ?", [name]).fetchone()
            if row is None:
                cursor = self.db.execute(
                    "INSERT INTO documents (name, created_at, updated_at) VALUES (?, ?, ?)", [name, at, at]
                )
                doc_id = cursor.lastrowid
                self._created.append((name, at))
            else:
                doc_id = row[0]
            assert doc_id is not None
            self._doc_ids[name] = doc_id
        return doc_id

    def commit(self, batch: Sequence[WriteOp]) -> None:
        try:
            with self._write_transaction():
                self._forget_ids_if_changed_elsewhere()
                self._created = []
                for op in batch:
                    self._write(op)
                if self.recording is not None:
                    outbox = self._outbox()
                    for name, at in self._created:
                        outbox.add(CREATED, name, at, {}, self.recording)
                    outbox.changed(changes_of(batch), self.recording)
        except BaseException:
            # Ids of documents and rows inserted by the rolled back transaction are void.
            self._doc_ids.clear()
            self._own.rolled_back()
            raise
        self._own.committed()

    def _forget_ids_if_changed_elsewhere(self) -> None:
        """Drop the cached document ids if another connection committed since this one last looked.

        It may have deleted or renamed a document (`collab delete` on the file, another `--workers`
        process): a cached id would then write to a document that is gone, or to another name. SQLite
        changes `data_version` for every commit of another connection, never for this one's, so a server
        alone on its file keeps its cache.
        """
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._doc_ids.clear()
            self._data_version = version

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """A transaction holding the write lock from its start (`BEGIN IMMEDIATE`).

        A deferred transaction that reads first (a compaction does) and then writes fails at once with
        "database is locked" if another connection committed meanwhile: SQLite cannot wait for a read
        snapshot to become writable. Taking the lock first makes it wait `busy_timeout` instead.
        """
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def _write(self, op: WriteOp) -> None:
        db = self.db
        doc_id = self._doc_id(op.name, op.at)
        tables = self._tables()
        if op.kind == "compact":
            # The transaction holds SQLite's write lock (BEGIN IMMEDIATE): no other writer meanwhile.
            tables.compact(doc_id, op, self._own, self.retention)
        else:
            [row_id] = tables.insert_rows("updates", [(doc_id, op.at, op.data)])
            self._own.wrote("updates", [(doc_id, row_id, op.data)])
        db.execute("UPDATE documents SET updated_at = max(updated_at, ?) WHERE id = ?", [op.at, doc_id])

    def _tables(self) -> Tables:
        return sqlite_tables(self.db.conn, self._first_checked)

    def _outbox(self) -> OutboxTables:
        return outbox_tables(self.db.conn)

    def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        with self._write_transaction():
            return work(self._outbox())

    def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        if self._outbox_reader is None:
            self._outbox_reader = connect_read_only(self.path, check_same_thread=False)
        conn = self._outbox_reader
        conn.execute("BEGIN")
        try:
            result = work(outbox_tables(conn))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def restore(self, dump: DocumentDump) -> None:
        with self._write_transaction():
            self._tables().restore(dump)

    def delete(self, name: str) -> bool:
        self._doc_ids.pop(name, None)
        try:
            with self._write_transaction():
                tables = self._tables()
                doc_id = tables.doc_id(name)
                if doc_id is not None:
                    tables.delete(doc_id, self._own)
                    if self.recording is not None:
                        self._outbox().add(DELETED, name, time.time(), {}, self.recording)
        except BaseException:
            self._own.rolled_back()
            raise
        self._own.committed()
        return doc_id is not None

    def rename(self, old: str, new: str) -> None:
        self._doc_ids.pop(old, None)
        with self._write_transaction():
            self._tables().rename(old, new)
            if self.recording is not None:
                self._outbox().add(RENAMED, old, time.time(), {"to": new}, self.recording)

    def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        return self._tables().records(name, at)

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        return self._tables().documents(name)

    def history(self, name: str) -> list[HistoryPoint]:
        return self._tables().history(name)
