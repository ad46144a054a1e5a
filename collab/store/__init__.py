"""Persistence behind a small interface, so that rooms never see an engine.

A store keeps, per document name, a snapshot (a whole-document Yjs update) and
a log of the updates accepted since. Rooms call `append` for every accepted
update and `compact` to replace the log with a fresh snapshot; both are queued
and committed in groups, and `flush` waits until what was queued is durable.
`collab.store.sqlite.SQLiteStore` is the engine; `collab.store.memory` holds
an in-memory one for tests. A new engine subclasses `GroupCommitStore` (or
implements `Store` outright) and nothing in rooms changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["DocumentInfo", "HistoryPoint", "Store", "StoredRecord"]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One stored piece of a document, in the order it must be applied."""

    kind: Literal["snapshot", "update", "checkpoint"]
    id: int
    data: bytes
    checked: bool = False
    """Written by a collab that walks everything before storing it (`collab.yupdate`): it need not be walked
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


class Store(Protocol):
    async def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        """Everything stored for `name` (as of Unix time `at`, if given), in order; [] for a new document.

        Raises `StorageError` when the engine cannot read (never returns [] then), and
        `HistoryError` when no state that old is kept.
        """
        ...

    def append(self, name: str, update: bytes, updates: int = 1) -> None:
        """Queue an accepted update (merging `updates` client updates); durable after the next group commit."""
        ...

    def compact(self, name: str, snapshot: bytes) -> None:
        """Queue replacing everything appended for `name` so far by `snapshot`."""
        ...

    async def flush(self) -> None:
        """Return once everything queued before the call is committed."""
        ...

    async def history(self, name: str) -> list[HistoryPoint]:
        """The moments `name` can be loaded at, oldest first."""
        ...

    async def documents(self, name: str | None = None) -> list[DocumentInfo]:
        """Every stored document by name, or only `name` ([] if it is not stored)."""
        ...

    async def close(self) -> None:
        """Flush, then release the engine."""
        ...
