"""The y-websocket wire protocol, bytes in and messages out, with no I/O.

A binary WebSocket frame holds one or more messages. The stock 3.x client reads
only the first message of a frame, so collab sends one message per frame, but it
accepts frames with several. The grammar (lib0 encoding, y-protocols):

    message    = varUint(0) sync | varUint(1) awareness | varUint(2) auth
               | varUint(3)                                  ; query awareness
    sync       = varUint(0) varUint8Array(stateVector)       ; step 1
               | varUint(1) varUint8Array(update)            ; step 2
               | varUint(2) varUint8Array(update)            ; update
    awareness  = varUint8Array(varUint(n) entry{n})
    entry      = varUint(clientID) varUint(clock) varString(JSON state, "null" = gone)
    auth       = varUint(0) varString(reason)                ; permission denied

    varUint        = little-endian base-128, high bit = "more bytes follow"
    varUint8Array  = varUint(length) byte{length}
    varString      = varUint8Array of UTF-8

`parse_frame` turns a frame into typed messages or raises a `ProtocolError`
saying what is wrong. Awareness is held to limits y-protocols does not state
but its JavaScript peers need (see `_parse_awareness`): at most
`MAX_AWARENESS_ENTRIES` entries a message, each state strict JSON (RFC 8259:
no NaN or Infinity, which JavaScript's JSON.parse throws on) nested at most
`MAX_AWARENESS_STATE_DEPTH` deep and at most `MAX_AWARENESS_STATE_BYTES` long.
Each parsed message keeps its own bytes in `raw`, so a server can forward
exactly what it validated without encoding it again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import InvalidUTF8Error, MessageTooBigError, ProtocolError
from .yupdate import STRICT_JSON, check_state_vector

__all__ = [
    "MAX_AWARENESS_ENTRIES",
    "MAX_AWARENESS_STATE_BYTES",
    "MAX_AWARENESS_STATE_DEPTH",
    "Auth",
    "Awareness",
    "AwarenessEntry",
    "Message",
    "QueryAwareness",
    "SyncStep1",
    "SyncStep2",
    "Update",
    "awareness_messages",
    "encode_var_uint",
    "parse_frame",
]

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

AUTH_PERMISSION_DENIED = 0

# lib0 refuses integers above Number.MAX_SAFE_INTEGER; so do we.
MAX_VAR_UINT = 2**53 - 1
# lib0's writeVarUint does encode a JavaScript number above 2**53 - 1 (inexactly), and a stock client whose
# awareness clock was pushed up there sends one on every renewal. Such a clock is read (up to 64 bits) so
# that the entry can be dropped (collab.sync.presence) rather than its sender closed: closing it made the stock
# client reconnect and be closed again, forever.
AWARENESS_CLOCK_BITS = 64

# Awareness limits (README, Limits). A stock client sends one entry a message, but it echoes every
# awareness message it receives with all of that message's entries, so a newcomer's echo of its greeting
# holds every state of the room: collab never sends more entries in one message than this either.
MAX_AWARENESS_ENTRIES = 4096
MAX_AWARENESS_STATE_BYTES = 64 * 1024
MAX_AWARENESS_STATE_DEPTH = 32


def encode_var_uint(value: int) -> bytes:
    """lib0 `writeVarUint`: 7 bits per byte, least significant first."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_var_bytes(data: bytes) -> bytes:
    """lib0 `writeVarUint8Array`: a length, then the bytes."""
    return encode_var_uint(len(data)) + data


def encode_var_string(text: str) -> bytes:
    """lib0 `writeVarString`: UTF-8 bytes with a length prefix."""
    return encode_var_bytes(text.encode())


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """'Here is my state vector; send me what I am missing.'"""

    state_vector: bytes
    raw: bytes = field(default=b"", repr=False, compare=False)

    def encode(self) -> bytes:
        return self.raw or _sync(SYNC_STEP1, self.state_vector)


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The answer to a step 1: every change the asker's state vector lacks."""

    update: bytes
    raw: bytes = field(default=b"", repr=False, compare=False)

    def encode(self) -> bytes:
        return self.raw or _sync(SYNC_STEP2, self.update)


@dataclass(frozen=True, slots=True)
class Update:
    """An incremental document update."""

    update: bytes
    raw: bytes = field(default=b"", repr=False, compare=False)

    def encode(self) -> bytes:
        return self.raw or _sync(SYNC_UPDATE, self.update)


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's presence: its state as JSON text, or "null" once it left.

    A parsed entry's clock may exceed 2**53 - 1 (see AWARENESS_CLOCK_BITS); collab.sync.presence drops those.
    """

    client_id: int
    clock: int
    state: str

    @property
    def is_removal(self) -> bool:
        return self.state.strip() == "null"

    def encode(self) -> bytes:
        return encode_var_uint(self.client_id) + encode_var_uint(self.clock) + encode_var_string(self.state)


@dataclass(frozen=True, slots=True)
class Awareness:
    """Presence (cursors, names) of one or more clients."""

    entries: tuple[AwarenessEntry, ...]
    raw: bytes = field(default=b"", repr=False, compare=False)

    def encode(self) -> bytes:
        if self.raw:
            return self.raw
        payload = encode_var_uint(len(self.entries)) + b"".join(entry.encode() for entry in self.entries)
        return bytes((MESSAGE_AWARENESS,)) + encode_var_bytes(payload)


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """'Send me every presence state you know.'"""

    raw: bytes = field(default=b"", repr=False, compare=False)

    def encode(self) -> bytes:
        return bytes((MESSAGE_QUERY_AWARENESS,))


@dataclass(frozen=True, slots=True)
class Auth:
    """Permission denied, with a reason the client logs."""

    reason: str
    raw: bytes = field(default=b"", repr=False, compare=False)

    def encode(self) -> bytes:
        return self.raw or bytes((MESSAGE_AUTH, AUTH_PERMISSION_DENIED)) + encode_var_string(self.reason)


Message = SyncStep1 | SyncStep2 | Update | Awareness | QueryAwareness | Auth


def _sync(kind: int, payload: bytes) -> bytes:
    return bytes((MESSAGE_SYNC, kind)) + encode_var_bytes(payload)


class _Reader:
    """A cursor over one frame; every read checks bounds and names what it read."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def var_uint(self, what: str, bits: int = 53) -> int:
        data, pos = self.data, self.pos
        value = 0
        shift = 0
        while True:
            if pos >= len(data):
                raise ProtocolError(f"truncated frame: {what} ends early")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > bits:
                raise ProtocolError(f"{what} does not fit in {bits} bits")
        if value >> bits:
            raise ProtocolError(f"{what} does not fit in {bits} bits")
        self.pos = pos
        return value

    def var_bytes(self, what: str) -> bytes:
        length = self.var_uint(f"length of {what}")
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError(f"truncated frame: {what} needs {length} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def var_string(self, what: str) -> str:
        try:
            return self.var_bytes(what).decode()
        except UnicodeDecodeError as error:
            raise InvalidUTF8Error(f"{what} is not valid UTF-8") from error

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def parse_frame(frame: bytes) -> list[Message]:
    """Parse every message of one binary frame; raise `ProtocolError` if any is malformed."""
    update = _single_update(frame)
    if update is not None:
        return [update]
    if not frame:
        raise ProtocolError("empty frame")
    reader = _Reader(frame)
    messages: list[Message] = []
    while not reader.at_end:
        start = reader.pos
        message = _parse_message(reader)
        messages.append(message)
        # Keep the message's exact bytes for forwarding; slicing a whole bytes object is free.
        object.__setattr__(message, "raw", frame[start : reader.pos])
    return messages


def _single_update(frame: bytes) -> Update | None:
    """The fast path for what a typing client sends all day: a frame that is exactly one update message
    (0, 2, a length of one or two bytes, the update) is that Update, as the general parser would build it;
    anything else is None, for the general parser to handle (or reject)."""
    if len(frame) < 3 or frame[0] != MESSAGE_SYNC or frame[1] != SYNC_UPDATE:
        return None
    length = frame[2]
    start = 3
    if length >= 0x80:
        if len(frame) < 4 or frame[3] >= 0x80:
            return None
        length = (length & 0x7F) | (frame[3] << 7)
        start = 4
    if start + length != len(frame):
        return None
    return Update(frame[start:], frame)


def _parse_message(reader: _Reader) -> Message:
    kind = reader.var_uint("message type")
    if kind == MESSAGE_SYNC:
        sync_kind = reader.var_uint("sync message type")
        if sync_kind == SYNC_UPDATE:
            return Update(reader.var_bytes("update"))
        if sync_kind == SYNC_STEP2:
            return SyncStep2(reader.var_bytes("sync step 2 update"))
        if sync_kind == SYNC_STEP1:
            state_vector = reader.var_bytes("state vector")
            check_state_vector(state_vector)  # within what yrs stores, and MAX_STATE_VECTOR_CLIENTS entries
            return SyncStep1(state_vector)
        raise ProtocolError(f"unknown sync message type {sync_kind}")
    if kind == MESSAGE_AWARENESS:
        return Awareness(_parse_awareness(reader.var_bytes("awareness update")))
    if kind == MESSAGE_QUERY_AWARENESS:
        return QueryAwareness()
    if kind == MESSAGE_AUTH:
        auth_kind = reader.var_uint("auth message type")
        if auth_kind != AUTH_PERMISSION_DENIED:
            raise ProtocolError(f"unknown auth message type {auth_kind}")
        return Auth(reader.var_string("permission denied reason"))
    raise ProtocolError(f"unknown message type {kind}")


def _parse_awareness(payload: bytes) -> tuple[AwarenessEntry, ...]:
    reader = _Reader(payload)
    count = reader.var_uint("awareness entry count")
    # Refused by its count before any entry is decoded: 1M fake ids (7.6 MB) took 32 s to process.
    if count > MAX_AWARENESS_ENTRIES:
        raise MessageTooBigError(f"awareness update has {count} entries, more than {MAX_AWARENESS_ENTRIES}")
    # Each entry takes at least 3 bytes; a larger count cannot be honest.
    if count * 3 > len(payload):
        raise ProtocolError(f"awareness update claims {count} entries in {len(payload)} bytes")
    entries = []
    for _ in range(count):
        client_id = reader.var_uint("awareness client id")
        clock = reader.var_uint("awareness clock", AWARENESS_CLOCK_BITS)
        raw_state = reader.var_bytes("awareness state")
        if len(raw_state) > MAX_AWARENESS_STATE_BYTES:
            raise MessageTooBigError(
                f"awareness state of client {client_id} is {len(raw_state)} bytes,"
                f" more than {MAX_AWARENESS_STATE_BYTES}"
            )
        try:
            state = raw_state.decode()
        except UnicodeDecodeError as error:
            raise InvalidUTF8Error("awareness state is not valid UTF-8") from error
        _check_json(state, client_id)
        entries.append(AwarenessEntry(client_id, clock, state))
    if not reader.at_end:
        raise ProtocolError("awareness update has trailing bytes")
    return tuple(entries)


# A JSON string (RFC 8259 section 7), to skip when counting brackets: inside one they are text.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _check_json(state: str, client_id: int) -> None:
    """Raise `ProtocolError` unless `state` is strict JSON nested at most MAX_AWARENESS_STATE_DEPTH deep.

    The depth is measured before json.loads sees the text, without recursion: json.loads recurses once
    per level and 1,000 levels raised RecursionError. The scan agrees with json.loads on every prefix of
    valid JSON, and json.loads stops at the first invalid byte, so it never goes deeper than counted here.
    """
    if state.count("[") + state.count("{") > MAX_AWARENESS_STATE_DEPTH:
        depth = 0
        for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", state)):
            if bracket in "[{":
                depth += 1
                if depth > MAX_AWARENESS_STATE_DEPTH:
                    raise ProtocolError(
                        f"awareness state of client {client_id} is nested deeper than {MAX_AWARENESS_STATE_DEPTH}"
                    )
            else:
                depth -= 1
    try:
        STRICT_JSON.decode(state)
    except ValueError as error:
        raise ProtocolError(f"awareness state of client {client_id} is not JSON: {error}") from error


def awareness_message(entries: Sequence[AwarenessEntry]) -> bytes:
    """Build one awareness message frame from entries."""
    return Awareness(tuple(entries)).encode()


def awareness_messages(entries: Sequence[AwarenessEntry]) -> Iterator[bytes]:
    """The entries as awareness message frames of at most MAX_AWARENESS_ENTRIES entries each (none if empty)."""
    for start in range(0, len(entries), MAX_AWARENESS_ENTRIES):
        yield awareness_message(entries[start : start + MAX_AWARENESS_ENTRIES])
