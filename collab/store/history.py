"""Point-in-time history: which checkpoints to keep, and time arithmetic for them. No I/O.

When a document's log is compacted, its rows are not thrown away: each becomes
a checkpoint (the first of a document whole, every later one the change since
the one before). Retention then thins them out: every checkpoint for
`recent_for` (an hour by default), the newest of each clock hour for
`hourly_for` (a day), the newest of each day for `daily_for` (30 days), and
always the newest of all. A dropped checkpoint's change is folded into the next
kept one, so the chain still adds up to every kept state.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["DAY", "HOUR", "Retention", "format_time", "parse_time", "to_keep"]

HOUR = 3600.0
DAY = 86400.0

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY, "w": 7 * DAY}


@dataclass(frozen=True, slots=True)
class Retention:
    """How long checkpoints are kept at each granularity; all zero keeps no history."""

    recent_for: float = HOUR
    hourly_for: float = DAY
    daily_for: float = 30 * DAY

    @property
    def enabled(self) -> bool:
        return self.recent_for > 0 or self.hourly_for > 0 or self.daily_for > 0


def to_keep(times: list[float], now: float, retention: Retention) -> set[int]:
    """Indexes of the checkpoints (taken at `times`, oldest first) that retention keeps."""
    if not times:
        return set()
    newest_per_bucket: dict[tuple[str, int], int] = {}
    for index, time in enumerate(times):
        age = now - time
        if age <= retention.recent_for:
            newest_per_bucket[("each", index)] = index
        if age <= retention.hourly_for:
            newest_per_bucket[("hour", math.floor(time / HOUR))] = index
        if age <= retention.daily_for:
            newest_per_bucket[("day", math.floor(time / DAY))] = index
    return set(newest_per_bucket.values()) | {len(times) - 1}


def parse_time(text: str, now: float) -> float:
    """'2h' (ago), '3d', '2026-11-28T14:00:00Z' or '2026-11-28' -> Unix time.

    An ISO 8601 time without a zone is taken as UTC.
    """
    match = _RELATIVE.match(text)
    if match:
        return now - float(match[1]) * _UNITS[match[2].lower()]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (try 2h, 3d, 2026-11-28T14:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(timestamp: float) -> str:
    """Unix time -> '2026-11-28T14:00:00.000Z'."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
