"""The one grammar for durations, sizes and moments, used by every flag, variable and query. No I/O.

    duration   a number and a unit: 500ms, 30s, 5m, 1.5h, 7d, 2w; a plain number is seconds
    size       a whole number and a unit: 512K, 64M, 1G (powers of 1024; KiB/MB also read); plain: bytes
    moment     a duration ago (2h, 500ms, 1w, "3d ago") or ISO 8601 (2026-11-28T14:00:00Z; UTC if no zone)

None of them is negative. A moment's duration needs its unit, since a bare
number could as well be an ISO 8601 basic date (20261128). The parsers raise
`ValueError` with a message fit to show a user as is (it names the value and
gives examples); the formatters write what the parsers read back.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

__all__ = ["LATEST_TIME", "format_duration", "format_size", "format_time", "parse_duration", "parse_size", "parse_time"]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_AGO = re.compile(r"\s*ago\s*$", re.IGNORECASE)

DURATION_EXAMPLES = "try 50ms, 30s, 5m, 1h, 7d or 2w"
SIZE_EXAMPLES = "try 1048576, 512K, 64M or 1G"
TIME_EXAMPLES = "try 2h, 500ms, 1w or 2026-11-28T14:00:00Z"
LATEST_TIME = 253_402_300_799
"""9999-12-31T23:59:59Z: the last second ISO 8601 as `format_time` writes it (four-digit years) can say."""


def parse_duration(text: str) -> float:
    """'50ms' -> 0.05, '1w' -> 604800.0; a plain number is seconds."""
    if text.strip().startswith("-"):
        raise ValueError(f"a duration cannot be negative: {text!r}")
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} ({DURATION_EXAMPLES})")
    seconds = float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r} is too long ({DURATION_EXAMPLES})")
    return seconds


def parse_size(text: str) -> int:
    """'64M' -> 67108864; a plain number is bytes."""
    if text.strip().startswith("-"):
        raise ValueError(f"a size cannot be negative: {text!r}")
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} ({SIZE_EXAMPLES})")
    return int(match[1]) * _SIZE_UNITS[match[2].lower()]


def parse_time(text: str, now: float) -> float:
    """'2h' (ago), '500ms', '1w ago', '2026-11-28T14:00:00Z' or '2026-11-28' -> Unix time.

    An ISO 8601 time without a zone is taken as UTC; one before 1970 or after LATEST_TIME is refused, so that
    `format_time` can write every time this returns.
    """
    relative = _AGO.sub("", text)
    match = _DURATION.match(relative)
    if match and match[2]:
        ago = now - parse_duration(relative)
        if ago < 0:  # before 1970, or an overflow (1e20d): no document is that old
            raise ValueError(f"not a time: {text!r} is before 1970 ({TIME_EXAMPLES})")
        return ago
    if relative.strip().startswith("-"):
        raise ValueError(f"not a time: {text!r} (a duration ago cannot be negative; {TIME_EXAMPLES})")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} ({TIME_EXAMPLES})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        timestamp = moment.timestamp()
    except (OverflowError, ValueError):  # year 1 in a zone east of UTC, and the like
        raise ValueError(f"not a time: {text!r} ({TIME_EXAMPLES})") from None
    if timestamp < 0:
        raise ValueError(f"not a time: {text!r} is before 1970 ({TIME_EXAMPLES})")
    if timestamp > LATEST_TIME:
        raise ValueError(f"not a time: {text!r} is after the year 9999 ({TIME_EXAMPLES})")
    return timestamp


def format_duration(seconds: float) -> str:
    """0.05 -> '50ms', 3600 -> '1h', 2592000 -> '30d': the largest unit that writes it whole."""
    for unit, length in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        count = seconds / length
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return "0s" if seconds == 0 else f"{seconds:g}s"


def format_size(size: int) -> str:
    """67108864 -> '64M', 1500 -> '1500': the largest unit that writes it whole."""
    for unit, length in sorted(_SIZE_UNITS.items(), key=lambda item: -item[1]):
        if size and size % length == 0:
            return f"{size // length}{unit.upper()}"
    return str(size)


def format_time(timestamp: float) -> str:
    """Unix time -> '2026-11-28T14:00:00.000Z' (ISO 8601, UTC, milliseconds)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
