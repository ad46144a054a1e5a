"""Point-in-time history: which checkpoints to keep. No I/O; times are parsed and shown by `collab.units`.

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
from dataclasses import dataclass

__all__ = ["DAY", "HOUR", "Retention", "to_keep"]

HOUR = 3600.0
DAY = 86400.0


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
