"""A document's history as a person reads it: its stored history points grouped into moments. No I/O.

The store lists every point a document can be read at (`Store.history`): each
log row (a group commit of its updates, so a typist makes several a second) and
each checkpoint (a log row once compacted, thinned by retention). Points less
than `gap` seconds apart form one moment, from its first point (`start`) to its
last (`end`), whatever their kind: a compaction in the middle of a typing
session does not cut it in two. A moment is an "edits" moment if it holds a log
row, a "checkpoint" moment if it holds only checkpoints.

A restore always starts a moment of its own, however soon it follows the edits
before it, so that the moment before it can be restored again: the first point
at or after the time a restore was made (`Journal.restores`, what this process
saw) starts a moment, and that moment is the restore's (`restore_of`).

A moment's `at` is the time to ask for it by (`?at=`, `collab export --at`,
a restore): its last point's time rounded up to the millisecond that ISO 8601
as collab writes it (`units.format_time`) can say, so that a load at `at`
includes that point; points that would fall between its end and that
millisecond belong to the moment, so `at` never includes the next one.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..store import HistoryPoint
from ..units import format_time, parse_time
from .journal import Journal

__all__ = [
    "DEFAULT_GAP",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Moment",
    "group_moments",
    "history_json",
    "listed_moments",
    "time_of",
]

DEFAULT_GAP = 300.0
"""Seconds of quiet that end a moment."""
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
"""Moments one answer lists (newest first), by default and at most."""


@dataclass(frozen=True, slots=True)
class Moment:
    start: float
    end: float
    """Unix times of its first and last points."""
    at: float
    """The time that reads the document as of `end` (see the module docstring)."""
    kind: Literal["edits", "checkpoint"]
    changes: int
    """History points it groups."""
    size: int
    """Bytes they hold."""
    restore_of: float | None = None
    """For a moment a restore started, the time it restored to."""


def time_of(moment: float) -> float:
    """The smallest time, in whole milliseconds, whose `format_time` reads back (`parse_time`) at or after `moment`."""
    at = math.ceil(moment * 1000) / 1000
    while parse_time(format_time(at), 0.0) < moment:  # a float a hair short of the millisecond: the next one
        at += 0.001
    return at


def group_moments(
    points: Sequence[HistoryPoint], gap: float = DEFAULT_GAP, restores: Sequence[tuple[float, float]] = ()
) -> list[Moment]:
    """`points` (oldest first, as the store lists them) grouped into moments, oldest first.

    `restores`: (when, the time it restored to) of each restore made, oldest first (`Journal.restores`).
    Costs one `time_of` per moment, none per point.
    """
    moments: list[Moment] = []
    first = 0  # the index of the current moment's first point
    restore_of: float | None = None
    placed = 0  # restores already placed on a point
    for index, point in enumerate(points):
        restored = None  # the latest restore made since the point before this one
        while placed < len(restores) and restores[placed][0] <= point.at:
            restored = restores[placed][1]
            placed += 1
        if index > first:
            previous = points[index - 1].at
            at = _end_before(previous, point.at) if restored is not None or point.at - previous >= gap else None
            if at is not None:
                moments.append(_moment(points[first:index], at, restore_of))
                first, restore_of = index, None
        if restored is not None:
            restore_of = restored
    if first < len(points):
        moments.append(_moment(points[first:], time_of(points[-1].at), restore_of))
    return moments


def listed_moments(
    points: Sequence[HistoryPoint],
    restores: Sequence[tuple[float, float]] = (),
    *,
    gap: float = DEFAULT_GAP,
    limit: int = DEFAULT_LIMIT,
    before: float | None = None,
) -> tuple[list[Moment], bool]:
    """The newest `limit` moments of `points`, newest first, of those whose `at` is before `before` (to the
    millisecond: the `at` of the oldest moment listed asks for the ones before it), and whether older ones
    were left out."""
    moments = group_moments(points, gap, restores)
    if before is not None:
        moments = moments[: bisect_left(moments, round(before * 1000), key=lambda moment: round(moment.at * 1000))]
    return moments[: -limit - 1 : -1], len(moments) > limit


def history_json(name: str, moments: list[Moment], truncated: bool, journal: Journal) -> dict[str, Any]:
    """What `GET /api/history/<name>` answers for `moments` (`listed_moments`), with who was there as far as
    this process saw (`journal`)."""
    people = journal.people(name, [(moment.start, moment.end) for moment in moments])
    return {
        "name": name,
        "moments": [_moment_json(moment, names) for moment, names in zip(moments, people, strict=True)],
        "truncated": truncated,
    }


def _end_before(end: float, following: float) -> float | None:
    """The `at` of a moment ending at `end` if it does not include the point at `following`, else None."""
    if following <= math.ceil(end * 1000) / 1000:  # the same millisecond: no time tells them apart
        return None
    at = time_of(end)
    return at if following > at else None


def _moment(points: Sequence[HistoryPoint], at: float, restore_of: float | None) -> Moment:
    kind: Literal["edits", "checkpoint"] = "edits" if any(point.kind == "update" for point in points) else "checkpoint"
    size = sum(point.size for point in points)
    return Moment(points[0].at, points[-1].at, at, kind, len(points), size, restore_of)


def _moment_json(moment: Moment, people: list[str]) -> dict[str, Any]:
    return {
        "at": format_time(moment.at),
        "at_unix": moment.at,
        "from": format_time(moment.start),
        "kind": moment.kind,
        "changes": moment.changes,
        "bytes": moment.size,
        "people": people,
        "restore_of": None if moment.restore_of is None else format_time(moment.restore_of),
    }
