"""An in-memory engine: the same group commit as SQLite, with dicts for tables.

For unit tests of rooms, and as the smallest example of a second engine.
Nothing survives the process.
"""

from __future__ import annotations

from ..errors import HistoryError
from . import DocumentInfo, HistoryPoint, StoredRecord
from .group_commit import GroupCommitStore, WriteOp

__all__ = ["MemoryStore"]


class MemoryStore(GroupCommitStore):
    """Documents in a dict; `commits` counts successful group commits."""

    def __init__(self, *, commit_interval: float = 0.0) -> None:
        super().__init__(commit_interval=commit_interval)
        self._records: dict[str, list[StoredRecord]] = {}
        self._times: dict[str, tuple[float, float]] = {}
        self._next_id = 1
        self.commits = 0

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _commit(self, batch: list[WriteOp]) -> None:
        for op in batch:
            records = self._records.setdefault(op.name, [])
            if op.kind == "compact":
                records.clear()
            records.append(StoredRecord("snapshot" if op.kind == "compact" else "update", self._next_id, op.data))
            self._next_id += 1
            created_at, _ = self._times.get(op.name, (op.at, op.at))
            self._times[op.name] = (created_at, op.at)
        self.commits += 1

    def _load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        if at is not None:
            raise HistoryError("the memory store keeps no history")
        return list(self._records.get(name, []))

    def _history(self, name: str) -> list[HistoryPoint]:
        return []

    def _documents(self, wanted: str | None = None) -> list[DocumentInfo]:
        return [
            DocumentInfo(
                name=name,
                size=sum(len(record.data) for record in records),
                log_length=sum(record.kind == "update" for record in records),
                created_at=self._times[name][0],
                updated_at=self._times[name][1],
            )
            for name, records in sorted(self._records.items())
            if wanted is None or name == wanted
        ]
