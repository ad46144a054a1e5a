"""What collab keeps in Redis, and how it is read back: keys, stream entries, positions, gaps. No I/O.

Keys (all under `--relay-prefix`, each with a time to live, so a cluster that is gone leaves nothing):

    <prefix>room:<name>     a stream per room: the frames its processes published, kept `--relay-retention`
    <prefix>processes       a hash: process name -> its last heartbeat, in Redis's clock (milliseconds)
    <prefix>epoch           a random value the first process to reach an empty Redis writes: when it is gone
                            or different, Redis lost what it held (restarted, failed over, emptied)
    <prefix>wake:<process>  a stream nobody else writes: a process adds to it to end its own blocking read
                            when it starts following another room

A stream entry has the publishing process (`o`) and either a frame (`f`) or a gap marker (`g`): a process
that could not publish something says so once it can, and the others reload the room from the store. An
entry that is neither (another program's, a damaged one) is skipped and counted, never the end of
delivery: one bad entry must not stop a room, let alone the others (y/hub #61).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "BEGINNING",
    "Entry",
    "Followed",
    "Gap",
    "after_outage",
    "decode_ended",
    "decode_entry",
    "ended_fields",
    "epoch_key",
    "frame_fields",
    "gap_fields",
    "id_millis",
    "processes_key",
    "room_key",
    "room_name",
    "wake_key",
]

BEGINNING = "0-0"
"""The position before every entry of a stream."""

ORIGIN, FRAME, GAP, SUBJECT, ENDED = b"o", b"f", b"g", b"s", b"e"
MAX_SUBJECT_BYTES = 1024
"""A token's `sub` longer than this is not one collab relayed (tokens are limited well below it)."""


def room_key(prefix: str, name: str) -> str:
    return f"{prefix}room:{name}"


def room_name(prefix: str, key: bytes | str) -> str | None:
    """The room a key is the stream of, or None for another key."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    start = f"{prefix}room:"
    return text[len(start) :] if text.startswith(start) else None


def processes_key(prefix: str) -> str:
    return f"{prefix}processes"


def epoch_key(prefix: str) -> str:
    return f"{prefix}epoch"


def wake_key(prefix: str, process: str) -> str:
    return f"{prefix}wake:{process}"


def frame_fields(process: str, frame: bytes, subject: str | None = None) -> dict[bytes, bytes]:
    fields = {ORIGIN: process.encode(), FRAME: frame}
    if subject is not None:
        fields[SUBJECT] = subject.encode()
    return fields


def gap_fields(process: str) -> dict[bytes, bytes]:
    return {ORIGIN: process.encode(), GAP: b"1"}


def ended_fields(process: str, code: int, reason: str) -> dict[bytes, bytes]:
    """An entry saying the room was deleted or renamed: its clients are closed with `code` and `reason`."""
    return {ORIGIN: process.encode(), ENDED: f"{code} {reason}".encode()}


class Ended(NamedTuple):
    """A room deleted or renamed by another process."""

    origin: str
    code: int
    reason: str


def decode_ended(fields: Mapping[bytes, bytes]) -> Ended | None:
    """The `ended_fields` entry `fields` hold, or None (another kind of entry, or not a valid one)."""
    value, origin = fields.get(ENDED), fields.get(ORIGIN)
    if not isinstance(value, bytes) or not isinstance(origin, bytes) or FRAME in fields or GAP in fields:
        return None
    code, _, reason = value.partition(b" ")
    if not code.isdigit() or not 1000 <= int(code) <= 4999 or len(reason) > 123:
        return None
    try:
        return Ended(origin.decode(), int(code), reason.decode())
    except UnicodeDecodeError:
        return None


class Entry(NamedTuple):
    """A decoded stream entry: a frame (with the `sub` owning its awareness entries, if any), or (frame None)
    a gap marker."""

    origin: str
    frame: bytes | None
    subject: str | None = None


class Gap(NamedTuple):
    """Why a followed room may have missed entries."""

    reason: str


def decode_entry(fields: Mapping[bytes, bytes]) -> Entry | None:
    """The entry `fields` hold, or None if they are not one collab wrote."""
    origin = fields.get(ORIGIN)
    if not isinstance(origin, bytes) or not origin:
        return None
    try:
        process = origin.decode()
    except UnicodeDecodeError:
        return None
    frame = fields.get(FRAME)
    subject = fields.get(SUBJECT)
    if subject is not None:
        if not isinstance(subject, bytes) or len(subject) > MAX_SUBJECT_BYTES:
            return None
        try:
            subject_text: str | None = subject.decode()
        except UnicodeDecodeError:
            return None
    else:
        subject_text = None
    if isinstance(frame, bytes) and frame and GAP not in fields:
        return Entry(process, frame, subject_text)
    if fields.get(GAP) == b"1" and FRAME not in fields:
        return Entry(process, None)
    return None


def id_millis(entry_id: bytes | str) -> int | None:
    """The Redis time (ms since the epoch) an entry id was made at, or None if it is not an id."""
    text = entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else entry_id
    millis, dash, sequence = text.partition("-")
    if not (millis.isdigit() and dash and sequence.isdigit()):
        return None
    return int(millis)


@dataclass
class Followed:
    """A room this process follows: where its reading stands."""

    position: str | None
    """The id of the last entry read (or BEGINNING); None while unknown (Redis could not be asked)."""
    gap: Gap | None = None
    """Set when entries may have been missed; cleared when the room is reloaded."""
    unsent: list[tuple[bytes, str | None]] = field(default_factory=list)
    """Frames this process could not publish (Redis down); sent when it is back, or replaced by a gap marker."""
    unsent_bytes: int = 0
    broken: bool = False
    """Its key holds something other than a stream (not collab's): not read until that is mended."""


def after_outage(
    rooms: Iterable[Followed], *, same_server: bool, down_for: float, retention: float
) -> tuple[str, list[Followed]] | None:
    """Which followed rooms may have missed entries after the connection to Redis came back, and why.

    A different Redis (restarted without its data, failed over, emptied: its epoch key changed) has lost whatever
    the others published that this process had not read yet; the same one still holds it unless it was
    trimmed, which only happens to entries older than the retention. Rooms whose position was unknown
    (followed while Redis was down) always count. Returns (reason, rooms) or None when nothing may be lost.
    """
    rooms = list(rooms)
    if not same_server:
        return "Redis restarted, failed over or was emptied (its epoch changed)", rooms
    if down_for >= retention / 2:
        return f"disconnected from Redis for {down_for:.0f} s, close to --relay-retention", rooms
    unknown = [room for room in rooms if room.position is None]
    return ("the room was opened while Redis was unreachable", unknown) if unknown else None
