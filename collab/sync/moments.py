"""A document's history as a person reads it: its stored history points grouped into moments. No I/O.

The store lists every point a document can be read at (`Store.history`): each
log row (a group commit of its updates, so a typist makes several a second) and
each checkpoint (a log row once compacted, thinned by retention). Points less
than `gap` seconds apart form one moment, from its first point (`start`) to its
last (`end`), whatever their kind: a compaction in the middle of a typing
session does not cut it in two. A moment is an "edits" moment if it holds a log
row, a "checkpoint" moment if it holds only checkpoints.

A moment's `at` is the time to ask for it by (`?at=`, `collab export --at`,
a restore): its last point's time rounded up to the millisecond that ISO 8601
as collab writes it (`units.format_time`) can say, so that a load at `at`
includes that point; points that would fall between its end and that
millisecond belong to the moment, so `at` never includes the next one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..store import HistoryPoint
from ..units import format_time, parse_time
from .journal import Journal

__all__ = ["DEFAULT_GAP", "DEFAULT_LIMIT", "MAX_LIMIT", "Moment", "group_moments", "history_json", "time_of"]

DEFAULT_GAP = 300.0
"""Seconds of quiet that end a moment."""
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
"""Moments one answer lists (newest first), by default and at most."""
RESTORE_REACH = 1.0
"""Seconds before a moment's first point that a restore in it may have been made: its log row is stamped when
queued, a moment after the restore was recorded (and with the updates of a group commit, at the last one's time)."""


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


def time_of(moment: float) -> float:
    """The smallest time, in whole milliseconds, whose `format_time` reads back (`parse_time`) at or after `moment`."""
    at = math.ceil(moment * 1000) / 1000
    while parse_time(format_time(at), 0.0) < moment:  # a float a hair short of the millisecond: the next one
        at += 0.001
    return at


def group_moments(points: Sequence[HistoryPoint], gap: float = DEFAULT_GAP) -> list[Moment]:
    """`points` (oldest first, as the store lists them) grouped into moments, oldest first."""
    moments: list[Moment] = []
    group: list[HistoryPoint] = []
    at = 0.0
    for point in points:
        if group and point.at - group[-1].at >= gap and point.at > at:
            moments.append(_moment(group, at))
            group = []
        group.append(point)
        at = time_of(point.at)
    if group:
        moments.append(_moment(group, at))
    return moments


def _moment(points: list[HistoryPoint], at: float) -> Moment:
    kind: Literal["edits", "checkpoint"] = "edits" if any(point.kind == "update" for point in points) else "checkpoint"
    return Moment(points[0].at, points[-1].at, at, kind, len(points), sum(point.size for point in points))


def history_json(
    name: str,
    points: Sequence[HistoryPoint],
    journal: Journal,
    *,
    gap: float = DEFAULT_GAP,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """What `GET /api/history/<name>` answers: the newest `limit` moments, with who was there and what they
    restored as far as this process saw (`journal`)."""
    moments = group_moments(points, gap)
    newest = moments[::-1][:limit]
    return {
        "name": name,
        "moments": [_moment_json(name, moment, journal) for moment in newest],
        "truncated": len(moments) > limit,
    }


def _moment_json(name: str, moment: Moment, journal: Journal) -> dict[str, Any]:
    restore_of = journal.restore_of(name, moment.start - RESTORE_REACH, moment.at)
    return {
        "at": format_time(moment.at),
        "at_unix": moment.at,
        "from": format_time(moment.start),
        "kind": moment.kind,
        "changes": moment.changes,
        "bytes": moment.size,
        "people": journal.people(name, moment.start, moment.end),
        "restore_of": None if restore_of is None else format_time(restore_of),
    }
