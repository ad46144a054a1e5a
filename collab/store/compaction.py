"""What a compaction writes, worked out from the rows it read: the same for every engine. No I/O.

A compaction replaces a document's snapshot and log by one new snapshot. With
several processes writing one document (each commits its own clients' updates),
the room asking for it may not have seen every row yet, so the new snapshot is
the room's state *merged with* the snapshot and log rows read inside the
compaction's transaction, and exactly those rows are deleted: a row another
process commits meanwhile was not read, so it survives. Rows this engine wrote
itself (`OwnRows`) came from this process's rooms, so the room's state holds
them already and they are not merged again: a single server pays no merge,
and a row another process wrote is never lost.

The log rows read become history checkpoints (`history`): the first checkpoint
of a document whole, every later one the change since the one before; then
retention thins the chain, folding each dropped checkpoint's change into the
next kept one. An engine reads the rows, calls `plan_compaction`, and writes
the `CompactionPlan` in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pycrdt import get_state, merge_updates

from ..errors import InvalidUpdateError
from ..sync.yupdate import check_update
from .history import Retention, to_keep

__all__ = ["CheckpointMeta", "CompactionPlan", "LogRow", "NewCheckpoint", "OwnRows", "plan_compaction"]

logger = logging.getLogger("collab.store")


class LogRow(NamedTuple):
    """A snapshot or log row as read for a compaction."""

    id: int
    created_at: float
    data: bytes
    checked: bool
    """Walked before it was stored (`StoredRecord.checked`); one that was not is walked before merging."""


class CheckpointMeta(NamedTuple):
    """A stored checkpoint without its data: pruning reads the data of only the rows it merges."""

    id: int
    created_at: float
    base: bool


class NewCheckpoint(NamedTuple):
    created_at: float
    base: bool
    data: bytes


class OwnRows:
    """The snapshot and log rows this engine wrote, by table, document and id, with a hash of their data.

    A room's state holds every row its process wrote for its document (it made them, or loaded them), so a
    compaction need not merge those. An id another process's row took over (SQLite reuses the highest id
    after a delete) counts as foreign unless that row is of the same document with the same bytes, which
    the room then holds all the same. Changes made inside a transaction count at
    once for that transaction and are kept only if it commits (`committed`, `rolled_back`).
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int, int], int] = {}
        self._changes: dict[tuple[str, int, int], int | None] = {}
        """This transaction's: a hash for a row written, None for one deleted."""

    def wrote(self, table: str, rows: Iterable[tuple[int, int, bytes]]) -> None:
        """Rows written, as (doc_id, row id, data)."""
        for doc_id, row_id, part in rows:
            self._changes[table, doc_id, row_id] = hash(part)

    def deleted(self, table: str, doc_id: int, ids: Sequence[int]) -> None:
        for row_id in ids:
            self._changes[table, doc_id, row_id] = None

    def holds(self, table: str, doc_id: int, row: LogRow) -> bool:
        key = (table, doc_id, row.id)
        known = self._changes[key] if key in self._changes else self._rows.get(key)
        return known is not None and known == hash(row.data)

    def committed(self) -> None:
        for key, known in self._changes.items():
            if known is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = known
        self._changes.clear()

    def rolled_back(self) -> None:
        self._changes.clear()


@dataclass(slots=True)
class CompactionPlan:
    """Everything one compaction writes, in the order an engine should write it."""

    snapshot: bytes
    """The new snapshot: the room's state with every readable row merged in."""
    delete_snapshots: list[int] = field(default_factory=list)
    delete_updates: list[int] = field(default_factory=list)
    """Exactly the log rows read and merged; never a range."""
    delete_checkpoints: list[int] = field(default_factory=list)
    rewrite_checkpoints: list[tuple[int, bool, bytes]] = field(default_factory=list)
    """(id, base, data) of kept checkpoints that now carry the change of dropped ones before them."""
    insert_checkpoints: list[NewCheckpoint] = field(default_factory=list)
    drop_history: bool = False
    """History is off: delete every checkpoint of the document (the chain would miss these changes)."""
    room_state_only: bool = True
    """The snapshot is the room's state as given, no stored row merged in: the room holds all of it."""


def plan_compaction(
    name: str,
    room_snapshot: bytes,
    snapshot: LogRow | None,
    log: Sequence[LogRow],
    checkpoints: Sequence[CheckpointMeta],
    checkpoint_data: Callable[[list[int]], dict[int, bytes]],
    *,
    own: OwnRows,
    doc_id: int,
    now: float,
    retention: Retention,
) -> CompactionPlan | None:
    """The writes that compact `name`: `snapshot` and `log` as read (log in id order), `checkpoints` its chain.

    `checkpoint_data(ids)` reads the data of stored checkpoints, called only for those pruning merges.
    Rows `own` holds (of document `doc_id`) are in the room's state already; the others are merged into it.
    None when the compaction must not happen: the stored snapshot, or the rows together, do not decode or
    merge, and a new snapshot would hide them (loads read the latest snapshot only). A log row that does not
    decode is neither merged nor deleted. What is kept is logged, for an operator to see.
    """
    snapshot_is_own = snapshot is not None and own.holds("snapshots", doc_id, snapshot)
    if snapshot is not None and not snapshot_is_own and not _readable(name, snapshot, "snapshot"):
        return None
    readable_log = [row for row in log if own.holds("updates", doc_id, row) or _readable(name, row)]
    foreign = [] if snapshot is None or snapshot_is_own else [snapshot]
    foreign += [row for row in readable_log if not own.holds("updates", doc_id, row)]
    merged, room_state_only = room_snapshot, True
    if foreign:
        try:
            merged = merge_updates(room_snapshot, *(row.data for row in foreign))
            room_state_only = False
        except ValueError as error:
            logger.error("compacting %r: stored rows do not merge, not compacted: %s", name, error)
            return None
    plan = CompactionPlan(
        snapshot=merged,
        delete_snapshots=[] if snapshot is None else [snapshot.id],
        delete_updates=[row.id for row in readable_log],
        room_state_only=room_state_only,
    )
    if not retention.enabled:
        plan.drop_history = True
        return plan
    new: list[NewCheckpoint] = []
    rest = readable_log
    if readable_log and not checkpoints:
        # The chain starts whole: the snapshot so far (if any) with the first change.
        first, rest = readable_log[0], readable_log[1:]
        whole = first.data if snapshot is None else merge_updates(snapshot.data, first.data)
        new.append(NewCheckpoint(first.created_at, True, whole))
    new.extend(NewCheckpoint(row.created_at, False, row.data) for row in rest)
    _prune(plan, checkpoints, new, checkpoint_data, now, retention)
    return plan


def _readable(name: str, row: LogRow, kind: str = "update") -> bool:
    if row.checked:
        return True
    try:
        check_update(row.data, strict=False)  # a stored row, before pycrdt merges it (see collab.sync.yupdate)
        get_state(row.data)  # what yrs itself refuses, as the room's load checks it
    except (InvalidUpdateError, ValueError) as error:
        logger.error("compacting %r: stored %s #%d does not decode, kept as it is: %s", name, kind, row.id, error)
        return False
    return True


def _prune(
    plan: CompactionPlan,
    stored: Sequence[CheckpointMeta],
    new: list[NewCheckpoint],
    checkpoint_data: Callable[[list[int]], dict[int, bytes]],
    now: float,
    retention: Retention,
) -> None:
    """Keep what retention keeps of the stored chain followed by `new`; fold each dropped change into the next kept."""
    times = [meta.created_at for meta in stored] + [checkpoint.created_at for checkpoint in new]
    keep = to_keep(times, now, retention)
    # Data of stored checkpoints is read only where a merge needs it: dropped ones, and the kept one after them.
    needed = [
        meta.id
        for index, meta in enumerate(stored)
        if index not in keep or (index > 0 and index - 1 not in keep and not meta.base)
    ]
    data = checkpoint_data(needed) if needed else {}
    carried: tuple[bool, bytes] | None = None  # (base, data) of the dropped run before a kept one
    for index in range(len(times)):
        if index < len(stored):
            meta = stored[index]
            base, part, stored_id = meta.base, data.get(meta.id), meta.id
        else:
            checkpoint = new[index - len(stored)]
            base, part, stored_id = checkpoint.base, checkpoint.data, None
        if index not in keep:
            assert part is not None
            if stored_id is not None:
                plan.delete_checkpoints.append(stored_id)
            carried = (base, part) if carried is None else (carried[0], merge_updates(carried[1], part))
            continue
        if carried is not None and not base:
            assert part is not None
            base, part = carried[0], merge_updates(carried[1], part)
            if stored_id is not None:
                plan.rewrite_checkpoints.append((stored_id, base, part))
        carried = None
        if stored_id is None:
            assert part is not None
            plan.insert_checkpoints.append(NewCheckpoint(times[index], base, part))
