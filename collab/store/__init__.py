"""Persistence behind small interfaces, so that rooms never see an engine.

A store keeps, per document name, a snapshot (a whole-document Yjs update) and
a log of the updates accepted since. The layer has three interfaces, each
sized to its callers:

    Store   what rooms, the server, metrics and the HTTP API call (async, on the event loop);
            `group_commit.GroupCommitStore` is the one implementation: it queues writes, commits
            them in groups on one worker thread and retries a failing commit forever (a delete or
            a rename runs on that thread too, in order with the commits, and is not retried).
    Engine  what a database implements (blocking, run on that worker thread): open, commit a
            batch, load, documents, history, check_writable, restore, delete, rename, outbox (the
            webhook events, see `outbox`), close. `sqlite.SQLiteEngine` and `postgres.PostgresEngine`
            are the real ones, `memory.MemoryEngine` the smallest example.
    Reader  what the command line reads (export, rooms, history, stats, copy): one consistent
            read-only moment of a database, which a running server keeps writing.

`engines` maps a `--db` value to its kind of database (`open_store`, `open_reader`),
so a new engine is one entry there and nothing in rooms, the server, the API or
the CLI changes. This module imports nothing with I/O: `collab.sync` imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, Self, TypeVar

if TYPE_CHECKING:
    from .outbox import Listing, OutboxTables

__all__ = [
    "Commit",
    "DocumentDump",
    "DocumentInfo",
    "Engine",
    "HistoryPoint",
    "Reader",
    "Store",
    "StoredRecord",
    "StoredRow",
    "WriteOp",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One stored piece of a document, in the order it must be applied."""

    kind: Literal["snapshot", "update", "checkpoint"]
    id: int
    data: bytes
    checked: bool = False
    """Written by a collab that walks everything before storing it (`collab.sync.yupdate`): it need not be walked
    again before pycrdt reads it. False for rows an older collab wrote, which may hold what crashes pycrdt."""


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """A moment a document's state can be reconstructed at."""

    at: float
    kind: Literal["checkpoint", "update"]
    size: int


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """What a listing shows about a stored document."""

    name: str
    size: int
    """Bytes stored: the snapshot plus the log."""
    log_length: int
    """Log rows not yet compacted into the snapshot."""
    created_at: float
    updated_at: float
    """Unix time of the last committed change."""
    history_size: int = 0
    """Bytes of point-in-time checkpoints kept besides the snapshot and log."""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of a document as stored, with its time: what `collab copy` carries between databases."""

    kind: Literal["snapshot", "update", "checkpoint"]
    created_at: float
    data: bytes
    base: bool = False
    """For a checkpoint: True if it is the whole document, False if it is the change since the one before."""


@dataclass(frozen=True, slots=True)
class DocumentDump:
    """Everything stored for one document, history included, in a form any engine can write back."""

    name: str
    created_at: float
    updated_at: float
    rows: list[StoredRow]
    """Its snapshot (at most one) first, then its log in order, then its checkpoints oldest first."""


class WriteOp(NamedTuple):
    """One queued write, in the order the rooms made it; engines get them in batches.

    One is made per batch of accepted updates, on the relay's hot path: a NamedTuple is built in half
    the time of a frozen dataclass, with the same fields and the same immutability.
    """

    kind: Literal["append", "compact"]
    name: str
    data: bytes
    """An update to add to the log (append), or the whole document as its room holds it (compact): that holds
    everything appended and compacted through this store for the document, so the engine merges into it only
    the rows other processes wrote (see `compaction`)."""
    at: float
    """Unix time the update was accepted (or the snapshot taken)."""
    updates: int = 1
    """How many client updates `data` merges (for counting what was persisted)."""


@dataclass(frozen=True, slots=True)
class Commit:
    """One group commit that succeeded, as the store reports it to `Store.on_commit` (metrics count them)."""

    seconds: float
    """How long the engine took, retries not included."""
    updates: int
    """Client updates it made durable."""
    compactions: int


class Store(Protocol):
    """What rooms, the server, metrics and the HTTP API use; `GroupCommitStore` implements it."""

    on_commit: Callable[[Commit], None] | None
    """Called on the event loop after every successful commit; the server's metrics set it."""

    async def start(self) -> None:
        """Open the engine (creating and migrating it if needed); `StorageError` says why not."""
        ...

    async def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        """Everything stored for `name` (as of Unix time `at`, if given), in order; [] for a new document.

        Writes queued for `name` are committed first. Raises `StorageError` when the engine cannot read
        (never returns [] then), and `HistoryError` when no state that old is kept.
        """
        ...

    def append(self, name: str, update: bytes, updates: int = 1) -> None:
        """Queue an accepted update (merging `updates` client updates); durable after the next group commit."""
        ...

    def compact(self, name: str, snapshot: bytes) -> None:
        """Queue replacing the stored log of `name` by `snapshot`, the room's whole state (see `WriteOp.data`)."""
        ...

    async def flush(self) -> None:
        """Return once everything queued before the call is committed (however many retries that takes)."""
        ...

    async def documents(self, name: str | None = None) -> list[DocumentInfo]:
        """Every stored document by name, or only `name` ([] if it is not stored)."""
        ...

    async def history(self, name: str) -> list[HistoryPoint]:
        """The moments `name` can be loaded at (`load(name, at)`), oldest first; [] if it is not stored.

        Writes queued for `name` are committed first, so that the change just made is listed.
        """
        ...

    async def delete(self, name: str) -> None:
        """Remove `name` and everything stored of it, history included: a document later written by that name
        starts empty, as a new document.

        Writes of `name` queued before the call are committed first, so that none lands after the delete and
        brings part of it back; close the document's room before, since a room still open would go on writing
        to a new document by that name. Raises `NotFoundError` if `name` is not stored, `StorageError` if the
        database fails (not retried, unlike a commit: say so to whoever asked).
        """
        ...

    async def rename(self, old: str, new: str) -> None:
        """Give the document `old` the name `new`, with its history and times; `old` is then unknown.

        Writes of either name queued before the call are committed first (under the name they were queued
        for); close both rooms before, as for `delete`. Raises `NotFoundError` if `old` is not stored,
        `AlreadyExistsError` if `new` is (`old` itself included; nothing changed then), `StorageError` if the
        database fails (not retried).
        """
        ...

    async def check_writable(self) -> None:
        """Raise `StorageError` unless a commit could start right now (what `/readyz` asks)."""
        ...

    async def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        """`work` on the webhook outbox (see `outbox`), in one transaction on the store's thread, in turn with
        the commits; `StorageError` if the database fails (not retried: the webhook sender tries again)."""
        ...

    async def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        """`work` reading the outbox in one transaction of a connection of its own, beside the commits (the
        sender's heavy reads: what to send next); it must not write."""
        ...

    @property
    def failing(self) -> bool:
        """True while commits fail (they are retried); cleared by the next successful commit."""
        ...

    @property
    def pending(self) -> int:
        """Writes queued or being committed, not yet durable."""
        ...

    async def close(self) -> None:
        """Flush, then release the engine."""
        ...


class Engine(Protocol):
    """A database under a `GroupCommitStore`: blocking calls, made one at a time from the store's worker thread.

    Raise `StorageError` (or let the driver's own error out: the store wraps it) when the database cannot
    do what is asked; never return [] for a read that failed. A failed `commit` is retried with the same
    writes, so it must be all or nothing, and leave nothing behind (a cached id of a row it rolled back)
    that would fail the retry.
    """

    def open(self) -> None:
        """Connect, creating and migrating the schema if needed; `StorageError` for a schema from a newer collab.

        Called once, by `Store.start`: nothing calls it again after a failure.
        """
        ...

    def commit(self, batch: Sequence[WriteOp]) -> None:
        """Write `batch` in order, in one transaction: all of it or none.

        The store retries a failed commit forever and never calls `open` again, so an engine whose
        connection can be lost (a database server restarting) must reconnect here, on its own.
        """
        ...

    def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        """What to apply, in order, to get `name` now or as of Unix time `at`; [] if unknown.

        `HistoryError` when `at` is older than what is kept.
        """
        ...

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        """Every stored document by name, or only `name` ([] if unknown)."""
        ...

    def history(self, name: str) -> list[HistoryPoint]:
        """The moments `name` can be loaded at, oldest first: its log rows and its checkpoints; [] if unknown."""
        ...

    def check_writable(self) -> None:
        """A cheap probe that raises when a commit could not start now (a lock held elsewhere, a read-only disk)."""
        ...

    def restore(self, dump: DocumentDump) -> None:
        """Write `dump` as a new document, rows and times as they are, in one transaction (`collab copy`).

        The caller has walked every row (`collab.sync.yupdate`); `StorageError` if `dump.name` is already stored.
        """
        ...

    def delete(self, name: str) -> bool:
        """Remove the document `name` and every row of it, in one transaction; False if it is not stored.

        A document written by that name afterwards (by this engine or another on the same database) gets a
        new id: nothing of the old one, cached or stored, is taken for part of it.
        """
        ...

    def rename(self, old: str, new: str) -> None:
        """Give the document `old` the name `new`, rows and times as they are, in one transaction.

        `NotFoundError` if `old` is not stored, `AlreadyExistsError` if `new` is (nothing changed then). A
        later commit to `old` makes a new document by that name, here and on every engine of the database.
        """
        ...

    def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        """`work` on the webhook outbox tables, in one transaction: all of it or none."""
        ...

    def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        """`work` reading the outbox, in one transaction of a connection other than the one commits use; called
        from a thread of its own, one call at a time, while commits run on theirs."""
        ...

    def close(self) -> None:
        """Release the connection; the engine may be opened again."""
        ...


class Reader(Protocol):
    """A read-only view of a database as of one moment: every read inside `with` sees the same state.

    Opened by `engines.open_reader(db)`; it never writes and never blocks a server writing meanwhile.
    """

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        """Every stored document by name, or only `name` ([] if unknown)."""
        ...

    def records(self, name: str, at: float | None = None) -> list[StoredRecord]:
        """What to apply to get `name` now or as of `at` (`HistoryError` if not kept); [] if unknown."""
        ...

    def history(self, name: str) -> list[HistoryPoint]:
        """The moments `name` can be exported at, oldest first; [] if unknown."""
        ...

    def dump(self, name: str) -> DocumentDump | None:
        """Every row stored for `name`, history included (`collab copy`); None if unknown."""
        ...

    def webhooks(self, *, failed_only: bool = False) -> Listing:
        """The webhook events not yet delivered everywhere, with their deliveries (`collab webhooks`)."""
        ...
