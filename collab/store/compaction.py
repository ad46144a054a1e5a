"""What a compaction writes, worked out from the rows it read: the same for every engine. No I/O.

A compaction replaces a document's snapshot and log by one new snapshot. With
several processes writing one document (each commits its own clients' updates),
the room asking for it may not have seen every row yet, so the new snapshot is
the room's state *merged with* the snapshot and log rows read inside the
compaction's transaction, and exactly those rows are deleted: a row another
process commits meanwhile was not read, so it survives. Merging what the room
already holds changes nothing (CRDT merges are idempotent), so one process
pays a merge and loses nothing.

The log rows read become history checkpoints (`history`): the first checkpoint
of a document whole, every later one the change since the one before; then
retention thins the chain, folding each dropped checkpoint's change into the
next kept one. An engine reads the rows, calls `plan_compaction`, and writes
the `CompactionPlan` in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pycrdt import merge_updates

from ..errors import InvalidUpdateError
from ..sync.yupdate import check_update
from .history import Retention, to_keep

__all__ = ["CheckpointMeta", "CompactionPlan", "LogRow", "NewCheckpoint", "plan_compaction"]

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


def plan_compaction(
    name: str,
    room_snapshot: bytes,
    snapshot: LogRow | None,
    log: Sequence[LogRow],
    checkpoints: Sequence[CheckpointMeta],
    checkpoint_data: Callable[[list[int]], dict[int, bytes]],
    *,
    now: float,
    retention: Retention,
) -> CompactionPlan:
    """The writes that compact `name`: `snapshot` and `log` as read (log in id order), `checkpoints` its chain.

    `checkpoint_data(ids)` reads the data of stored checkpoints, called only for those pruning merges.
    A row that does not decode is neither merged nor deleted: it stays for an operator to see.
    """
    readable_snapshot = snapshot if snapshot is not None and _readable(name, snapshot) else None
    readable_log = [row for row in log if _readable(name, row)]
    parts = [room_snapshot]
    if readable_snapshot is not None:
        parts.append(readable_snapshot.data)
    parts.extend(row.data for row in readable_log)
    plan = CompactionPlan(
        snapshot=merge_updates(*parts) if len(parts) > 1 else room_snapshot,
        delete_snapshots=[] if readable_snapshot is None else [readable_snapshot.id],
        delete_updates=[row.id for row in readable_log],
    )
    if not retention.enabled:
        plan.drop_history = True
        return plan
    new: list[NewCheckpoint] = []
    rest = readable_log
    if readable_log and not checkpoints:
        # The chain starts whole: the snapshot so far (if any) with the first change.
        first, rest = readable_log[0], readable_log[1:]
        whole = first.data if readable_snapshot is None else merge_updates(readable_snapshot.data, first.data)
        new.append(NewCheckpoint(first.created_at, True, whole))
    new.extend(NewCheckpoint(row.created_at, False, row.data) for row in rest)
    _prune(plan, checkpoints, new, checkpoint_data, now, retention)
    return plan


def _readable(name: str, row: LogRow) -> bool:
    if row.checked:
        return True
    try:
        check_update(row.data, strict=False)  # a stored row, before pycrdt merges it (see collab.sync.yupdate)
    except InvalidUpdateError as error:
        logger.error("compacting %r: stored row #%d does not decode, kept as it is: %s", name, row.id, error)
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
