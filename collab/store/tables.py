"""collab's tables, read and compacted in SQL that SQLite and PostgreSQL both run.

    documents(id, name UNIQUE, created_at, updated_at)
                                                 -- an id is never handed out again once deleted
    snapshots(id, doc_id, created_at, data)      -- the document as of its last compaction
    updates(id, doc_id, created_at, data)        -- the log since that snapshot
    checkpoints(id, doc_id, created_at, base, data)
                                                 -- past states: base whole, else the change since the previous one

Both engines keep this schema (`sqlite`, `postgres`); they differ in how a
connection runs a statement and in how a row says it was walked before it was
stored (`checked`): a column on PostgreSQL, an id range on SQLite (rows from
before the walk existed). A `Tables` holds those two differences, and every
read here works the same on both: a reader's consistent view, the store's
loads, `collab copy`'s dumps, a compaction's reads and writes, a delete, a rename.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pycrdt import merge_updates

from ..errors import (
    AlreadyExistsError,
    CorruptDocumentError,
    HistoryError,
    InvalidUpdateError,
    NotFoundError,
    StorageError,
)
from ..sync.yupdate import check_update
from ..units import format_time
from . import DocumentDump, DocumentInfo, HistoryPoint, StoredRecord, StoredRow, WriteOp
from .compaction import CheckpointMeta, CompactionPlan, LogRow, OwnRows, plan_compaction
from .history import Retention

__all__ = ["Execute", "ExecuteMany", "InsertRows", "Tables"]


class Execute(Protocol):
    """Run one statement written with `?` placeholders; its rows."""

    def __call__(self, sql: str, params: Sequence[Any] = (), /) -> Iterable[tuple[Any, ...]]: ...


class ExecuteMany(Protocol):
    """Run one statement written with `?` placeholders once per row of parameters (nothing for no rows)."""

    def __call__(self, sql: str, rows: Sequence[Sequence[Any]], /) -> object: ...


class InsertRows(Protocol):
    """Add walked (doc_id, created_at, data) rows to `snapshots` or `updates`, in order; their new ids, in order."""

    def __call__(self, table: str, rows: Sequence[tuple[int, float, bytes]], /) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Tables:
    """collab's tables through one connection, in one transaction the caller holds."""

    execute: Execute
    """Runs the statement at once and fetches every row."""
    stream: Execute
    """Runs the statement and yields rows as the database sends them: read it to the end before the next."""
    execute_many: ExecuteMany
    insert_rows: InsertRows
    """How this engine inserts log and snapshot rows (marking them walked) and learns their ids."""
    checked: Mapping[str, str]
    """Per table with walked rows (snapshots, updates), the SQL expression that is true for a walked row."""

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = list(self.execute(sql, params))
        return rows[0] if rows else None

    def doc_id(self, name: str) -> int | None:
        row = self._one("SELECT id FROM documents WHERE name = ?", [name])
        return None if row is None else int(row[0])

    def records(self, name: str, at: float | None = None) -> list[StoredRecord]:
        """What to apply, in order, to get `name` now or as it was at Unix time `at`; [] if unknown.

        Now: the latest snapshot and the log after it, read as they stream in; history is not read.
        Raises `HistoryError` if `at` is before the history kept for the document.
        """
        # One statement: the snapshot and the log of one moment of the database, even outside a transaction.
        # Ordered here rather than by SQL, which would sort (and so copy) every row's data first.
        by_name = "doc_id = (SELECT id FROM documents WHERE name = ?)"
        rows = self.stream(
            f"""SELECT * FROM (SELECT 0, id, created_at, data, {self.checked["snapshots"]} FROM snapshots
                               WHERE {by_name} ORDER BY id DESC LIMIT 1) AS snapshot
                UNION ALL
                SELECT 1, id, created_at, data, {self.checked["updates"]} FROM updates WHERE {by_name}""",
            [name, name],
        )
        snapshot: StoredRecord | None = None
        log: list[StoredRecord] = []
        for is_update, row_id, created_at, data, checked in rows:
            if not is_update:
                snapshot_at = created_at
                snapshot = StoredRecord("snapshot", row_id, bytes(data), bool(checked))
            elif at is None or created_at <= at:
                log.append(StoredRecord("update", row_id, bytes(data), bool(checked)))
        if snapshot is not None and at is not None and at < snapshot_at:
            doc_id = self.doc_id(name)
            assert doc_id is not None
            return [self._checkpoint_at(name, doc_id, at)]
        log.sort(key=lambda record: record.id)
        return log if snapshot is None else [snapshot, *log]

    def _checkpoint_at(self, name: str, doc_id: int, at: float) -> StoredRecord:
        chain = list(
            self.execute(
                "SELECT id, created_at, base, data FROM checkpoints WHERE doc_id = ? AND created_at <= ? ORDER BY id",
                [doc_id, at],
            )
        )
        if not chain:
            oldest = self._one("SELECT min(created_at) FROM checkpoints WHERE doc_id = ?", [doc_id])
            kept = (
                "no history is kept"
                if oldest is None or oldest[0] is None
                else f"history starts at {format_time(oldest[0])}"
            )
            raise HistoryError(f"document {name!r} has no state for {format_time(at)}: {kept}")
        start = max((index for index, row in enumerate(chain) if row[2]), default=None)
        if start is None:
            raise CorruptDocumentError(f"document {name!r}: checkpoint chain has no base before {format_time(at)}")
        parts = [bytes(row[3]) for row in chain[start:]]
        if len(parts) == 1:
            return StoredRecord("checkpoint", chain[-1][0], parts[0])
        for checkpoint_id, _, _, data in chain[start:]:
            try:
                check_update(bytes(data), strict=False)  # before pycrdt merges it (see collab.sync.yupdate)
            except InvalidUpdateError as error:
                # The text `room.check_records` gives a row it walks.
                raise CorruptDocumentError(
                    f"document {name!r}: stored checkpoint #{checkpoint_id} does not decode ({error})"
                ) from error
        # Every part was walked just now, so the merge need not be walked again (`room.check_records`).
        return StoredRecord("checkpoint", chain[-1][0], merge_updates(*parts), checked=True)

    def history(self, name: str) -> list[HistoryPoint]:
        """Every moment `name` can be exported at, oldest first; [] if unknown."""
        doc_id = self.doc_id(name)
        if doc_id is None:
            return []
        rows = self.execute(
            """SELECT created_at, 'checkpoint', length(data) FROM checkpoints WHERE doc_id = ?
               UNION ALL SELECT created_at, 'update', length(data) FROM updates WHERE doc_id = ?
               ORDER BY 1, 2""",
            [doc_id, doc_id],
        )
        return [HistoryPoint(at, kind, size) for at, kind, size in rows]

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        """Every stored document by name, or just `name` (then [] if it is unknown)."""
        where, args = ("", []) if name is None else ("WHERE d.name = ?", [name])
        rows = self.execute(
            f"""SELECT d.name, d.created_at, d.updated_at,
                 coalesce((SELECT sum(length(data)) FROM snapshots s WHERE s.doc_id = d.id), 0),
                 coalesce((SELECT sum(length(data)) FROM updates u WHERE u.doc_id = d.id), 0),
                 (SELECT count(*) FROM updates u WHERE u.doc_id = d.id),
                 coalesce((SELECT sum(length(data)) FROM checkpoints c WHERE c.doc_id = d.id), 0)
               FROM documents d {where}""",
            args,
        )
        # Sorted here, not in SQL: PostgreSQL's collation would order names unlike SQLite (code points).
        rows = sorted(rows, key=lambda row: str(row[0]))
        return [
            DocumentInfo(
                name=doc_name,
                size=int(snapshot_bytes) + int(log_bytes),
                log_length=int(log_length),
                created_at=created_at,
                updated_at=updated_at,
                history_size=int(history_bytes),
            )
            for doc_name, created_at, updated_at, snapshot_bytes, log_bytes, log_length, history_bytes in rows
        ]

    def dump(self, name: str) -> DocumentDump | None:
        """Every row of `name` with its time (`collab copy`); None if unknown."""
        row = self._one("SELECT id, created_at, updated_at FROM documents WHERE name = ?", [name])
        if row is None:
            return None
        doc_id, created_at, updated_at = row
        kinds: tuple[tuple[str, Literal["snapshot", "update"]], ...] = (
            ("snapshots", "snapshot"),
            ("updates", "update"),
        )
        rows = [
            StoredRow(kind, at, bytes(data))
            for table, kind in kinds
            for at, data in self.stream(f"SELECT created_at, data FROM {table} WHERE doc_id = ? ORDER BY id", [doc_id])
        ]
        rows += [
            StoredRow("checkpoint", at, bytes(data), bool(base))
            for at, base, data in self.stream(
                "SELECT created_at, base, data FROM checkpoints WHERE doc_id = ? ORDER BY id", [doc_id]
            )
        ]
        return DocumentDump(name, created_at, updated_at, rows)

    # A compaction's reads (inside the write transaction that then applies its plan).

    def compaction_rows(self, doc_id: int) -> tuple[LogRow | None, list[LogRow], list[CheckpointMeta]]:
        """The document's latest snapshot, its log in order and its checkpoint chain (without data)."""
        snapshot = self._one(
            f"SELECT id, created_at, data, {self.checked['snapshots']} FROM snapshots"
            " WHERE doc_id = ? ORDER BY id DESC LIMIT 1",
            [doc_id],
        )
        log = [
            LogRow(row_id, at, bytes(data), bool(checked))
            for row_id, at, data, checked in self.stream(
                f"SELECT id, created_at, data, {self.checked['updates']} FROM updates WHERE doc_id = ? ORDER BY id",
                [doc_id],
            )
        ]
        chain = [
            CheckpointMeta(row_id, at, bool(base))
            for row_id, at, base in self.execute(
                "SELECT id, created_at, base FROM checkpoints WHERE doc_id = ? ORDER BY id", [doc_id]
            )
        ]
        stored = None if snapshot is None else LogRow(snapshot[0], snapshot[1], bytes(snapshot[2]), bool(snapshot[3]))
        return stored, log, chain

    # Writes.

    def compact(self, doc_id: int, compaction: WriteOp, own: OwnRows, retention: Retention) -> None:
        """Compact the document (see `compaction`), in the write transaction the caller holds on its row."""
        snapshot, log, chain = self.compaction_rows(doc_id)
        plan = plan_compaction(
            compaction.name,
            compaction.data,
            snapshot,
            log,
            chain,
            self.checkpoint_data,
            own=own,
            doc_id=doc_id,
            now=compaction.at,
            retention=retention,
        )
        if plan is None:
            return  # the log stays as it is, to be loaded (and compacted) whole
        snapshot_id = self.apply(doc_id, plan, compaction.at)
        own.deleted("updates", doc_id, plan.delete_updates)
        own.deleted("snapshots", doc_id, plan.delete_snapshots)
        if plan.room_state_only:
            own.wrote("snapshots", [(doc_id, snapshot_id, plan.snapshot)])

    def apply(self, doc_id: int, plan: CompactionPlan, at: float) -> int:
        """Write a compaction's plan: delete exactly what it read, store its snapshot and checkpoints; its id."""
        many = self.execute_many
        if plan.drop_history:
            many("DELETE FROM checkpoints WHERE doc_id = ?", [(doc_id,)])
        many("DELETE FROM updates WHERE id = ?", [(row_id,) for row_id in plan.delete_updates])
        many("DELETE FROM snapshots WHERE id = ?", [(row_id,) for row_id in plan.delete_snapshots])
        many("DELETE FROM checkpoints WHERE id = ?", [(row_id,) for row_id in plan.delete_checkpoints])
        many(
            "UPDATE checkpoints SET base = ?, data = ? WHERE id = ?",
            [(base, data, row_id) for row_id, base, data in plan.rewrite_checkpoints],
        )
        self.insert_checkpoints(doc_id, plan.insert_checkpoints)
        [snapshot_id] = self.insert_rows("snapshots", [(doc_id, at, plan.snapshot)])
        return snapshot_id

    def insert_checkpoints(self, doc_id: int, checkpoints: Iterable[tuple[float, bool, bytes]]) -> None:
        self.execute_many(
            "INSERT INTO checkpoints (doc_id, created_at, base, data) VALUES (?, ?, ?, ?)",
            [(doc_id, at, base, data) for at, base, data in checkpoints],
        )

    def restore(self, dump: DocumentDump) -> None:
        """Write `dump` as a new document; `StorageError` if one of that name is stored."""
        if self.doc_id(dump.name) is not None:
            raise StorageError(f"document {dump.name!r} is already stored: merge into it instead")
        self.execute_many(
            "INSERT INTO documents (name, created_at, updated_at) VALUES (?, ?, ?)",
            [(dump.name, dump.created_at, dump.updated_at)],
        )
        doc_id = self.doc_id(dump.name)
        assert doc_id is not None
        for kind, table in (("snapshot", "snapshots"), ("update", "updates")):
            self.insert_rows(table, [(doc_id, row.created_at, row.data) for row in dump.rows if row.kind == kind])
        self.insert_checkpoints(
            doc_id, [(row.created_at, row.base, row.data) for row in dump.rows if row.kind == "checkpoint"]
        )

    def delete(self, doc_id: int, own: OwnRows) -> None:
        """Remove document `doc_id` and every row of it, in the write transaction the caller holds on its row.

        `own` forgets its snapshot and log rows with it (if the transaction commits).
        """
        for table in ("snapshots", "updates"):
            ids = [row_id for (row_id,) in self.execute(f"SELECT id FROM {table} WHERE doc_id = ?", [doc_id])]
            own.deleted(table, doc_id, ids)
        for table in ("checkpoints", "updates", "snapshots"):
            self.execute_many(f"DELETE FROM {table} WHERE doc_id = ?", [(doc_id,)])
        self.execute_many("DELETE FROM documents WHERE id = ?", [(doc_id,)])

    def rename(self, old: str, new: str) -> None:
        """Give document `old` the name `new`, its rows and times kept, in the write transaction the caller holds.

        `NotFoundError` if `old` is unknown, `AlreadyExistsError` if `new` is stored (`old` itself included).
        """
        doc_id = self.doc_id(old)
        if doc_id is None:
            raise NotFoundError(f"no document named {old!r}")
        if self.doc_id(new) is not None:
            raise AlreadyExistsError.for_name(new)
        self.execute_many("UPDATE documents SET name = ? WHERE id = ?", [(new, doc_id)])

    def checkpoint_data(self, ids: list[int]) -> dict[int, bytes]:
        return {
            row_id: bytes(data)
            for row_id, data in self.execute(
                f"SELECT id, data FROM checkpoints WHERE id IN ({', '.join('?' * len(ids))})", ids
            )
        }
