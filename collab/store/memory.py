"""The in-memory engine: the smallest complete `Engine`, with lists for tables.

For tests (a server or rooms with no file), and as the example to copy for a
new engine. It keeps what the SQLite engine keeps with history turned off: a
snapshot and the log since, so `load(name, at)` reaches back to the last
compaction and no further. Its webhook outbox is an in-memory SQLite database
running the SQL the other engines run (`outbox`). Nothing survives the process.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlite_utils import Database

from ..errors import AlreadyExistsError, HistoryError, NotFoundError, StorageError
from ..units import format_time
from . import DocumentDump, DocumentInfo, HistoryPoint, StoredRecord, WriteOp
from .group_commit import GroupCommitStore
from .outbox import CREATED, DELETED, RENAMED, OutboxTables, Recording, RecordingSetting, changes_of, resolve
from .sqlite import m006_webhook_outbox
from .sqlite_read import outbox_tables

__all__ = ["MemoryEngine", "MemoryStore"]

T = TypeVar("T")


@dataclass(slots=True)
class _Document:
    created_at: float
    updated_at: float
    rows: list[tuple[float, StoredRecord]] = field(default_factory=list)
    """(stored at, record): the snapshot, if any, first, then the log."""


class MemoryEngine:
    """Documents in a dict; `commits` counts successful commits (what a test of batching looks at)."""

    def __init__(self, recording: RecordingSetting = None) -> None:
        self._documents: dict[str, _Document] = {}
        self._next_id = 1
        self.commits = 0
        self._outbox_db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._outbox_lock = threading.Lock()
        m006_webhook_outbox(Database(self._outbox_db))
        self.recording: Recording | None = self.outbox(lambda outbox: resolve(outbox, recording))

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def check_writable(self) -> None:
        pass

    def commit(self, batch: Sequence[WriteOp]) -> None:
        # The outbox first, in its own transaction: if it fails, nothing changed and the batch is retried whole.
        # What follows cannot fail halfway, so applying op by op is all or nothing.
        if self.recording is not None:
            recording = self.recording
            created = [op for op in batch if op.name not in self._documents]
            self.outbox(lambda outbox: self._record(outbox, created, batch, recording))
        for op in batch:
            document = self._documents.setdefault(op.name, _Document(op.at, op.at))
            if op.kind == "compact":
                document.rows.clear()
            # Rooms walk every update before storing it (collab.sync.yupdate), as with the SQLite engine's rows.
            record = StoredRecord("snapshot" if op.kind == "compact" else "update", self._next_id, op.data, True)
            document.rows.append((op.at, record))
            document.updated_at = max(document.updated_at, op.at)
            self._next_id += 1
        self.commits += 1

    def _record(
        self, outbox: OutboxTables, created: list[WriteOp], batch: Sequence[WriteOp], recording: Recording
    ) -> None:
        first_at: dict[str, float] = {}
        for op in created:
            first_at.setdefault(op.name, op.at)
        for name, at in first_at.items():
            outbox.add(CREATED, name, at, {}, recording)
        outbox.changed(changes_of(batch), recording)

    def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        with self._outbox_lock:  # `read_outbox` comes from another thread
            self._outbox_db.execute("BEGIN")
            try:
                result = work(outbox_tables(self._outbox_db))
            except BaseException:
                self._outbox_db.execute("ROLLBACK")
                raise
            self._outbox_db.execute("COMMIT")
            return result

    def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        return self.outbox(work)

    def restore(self, dump: DocumentDump) -> None:
        if dump.name in self._documents:
            raise StorageError(f"document {dump.name!r} is already stored: merge into it instead")
        document = self._documents[dump.name] = _Document(dump.created_at, dump.updated_at)
        for row in dump.rows:  # no history is kept here: checkpoints are left out
            if row.kind != "checkpoint":
                document.rows.append((row.created_at, StoredRecord(row.kind, self._next_id, row.data, True)))
                self._next_id += 1

    def delete(self, name: str) -> bool:
        deleted = self._documents.pop(name, None) is not None
        if deleted and self.recording is not None:
            recording = self.recording
            self.outbox(lambda outbox: outbox.add(DELETED, name, time.time(), {}, recording))
        return deleted

    def rename(self, old: str, new: str) -> None:
        if old not in self._documents:
            raise NotFoundError(f"no document named {old!r}")
        if new in self._documents:
            raise AlreadyExistsError.for_name(new)
        self._documents[new] = self._documents.pop(old)
        if self.recording is not None:
            recording = self.recording
            self.outbox(lambda outbox: outbox.add(RENAMED, old, time.time(), {"to": new}, recording))

    def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        document = self._documents.get(name)
        if document is None:
            return []
        rows = document.rows
        if at is not None:
            if rows and rows[0][1].kind == "snapshot" and at < rows[0][0]:
                raise HistoryError(f"document {name!r} has no state for {format_time(at)}: no history is kept")
            rows = [(stored_at, record) for stored_at, record in rows if stored_at <= at]
        return [record for _, record in rows]

    def history(self, name: str) -> list[HistoryPoint]:
        document = self._documents.get(name)
        rows = [] if document is None else document.rows
        return [HistoryPoint(at, "update", len(record.data)) for at, record in rows if record.kind == "update"]

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        return [
            DocumentInfo(
                name=stored_name,
                size=sum(len(record.data) for _, record in document.rows),
                log_length=sum(record.kind == "update" for _, record in document.rows),
                created_at=document.created_at,
                updated_at=document.updated_at,
            )
            for stored_name, document in sorted(self._documents.items())
            if name is None or stored_name == name
        ]


class MemoryStore(GroupCommitStore[MemoryEngine]):
    """A store on a fresh `MemoryEngine` that commits at once: what unit tests of rooms start."""

    def __init__(self, *, commit_interval: float = 0.0) -> None:
        super().__init__(MemoryEngine(), commit_interval=commit_interval)
