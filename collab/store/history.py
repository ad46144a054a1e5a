"""Point-in-time history: which checkpoints to keep, and time arithmetic for them. No I/O.

When a document's log is compacted, the states it passed through are kept as
checkpoints: one at the end of every clock hour the log covers, and one for the
new snapshot. Retention then thins them out: the newest checkpoint of each hour
for `hourly_for` (a day by default), the newest of each day for `daily_for`
(30 days), and always the newest of all. Checkpoints are stored as a chain: the
oldest whole, each later one as the difference from the one before.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["DAY", "HOUR", "Retention", "format_time", "hour_ends", "parse_time", "to_keep"]

HOUR = 3600.0
DAY = 86400.0

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY, "w": 7 * DAY}


@dataclass(frozen=True, slots=True)
class Retention:
    """How long checkpoints are kept at each granularity; zero and zero keeps no history."""

    hourly_for: float = DAY
    daily_for: float = 30 * DAY

    @property
    def enabled(self) -> bool:
        return self.hourly_for > 0 or self.daily_for > 0


def to_keep(times: list[float], now: float, retention: Retention) -> set[int]:
    """Indexes of the checkpoints (taken at `times`, oldest first) that retention keeps."""
    if not times:
        return set()
    newest_per_bucket: dict[tuple[str, int], int] = {}
    for index, time in enumerate(times):
        age = now - time
        if age <= retention.hourly_for:
            newest_per_bucket[("hour", math.floor(time / HOUR))] = index
        if age <= retention.daily_for:
            newest_per_bucket[("day", math.floor(time / DAY))] = index
    return set(newest_per_bucket.values()) | {len(times) - 1}


def hour_ends(times: list[float]) -> list[int]:
    """Indexes of the last entry of each clock hour in `times` (ascending), except the final hour."""
    return [i for i in range(len(times) - 1) if math.floor(times[i] / HOUR) != math.floor(times[i + 1] / HOUR)]


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
