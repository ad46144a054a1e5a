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
saying what is wrong. Each parsed message keeps its own bytes in `raw`, so a
server can forward exactly what it validated without encoding it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import InvalidUTF8Error, ProtocolError

__all__ = [
    "Auth",
    "Awareness",
    "AwarenessEntry",
    "Message",
    "QueryAwareness",
    "SyncStep1",
    "SyncStep2",
    "Update",
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
    """One client's presence: its state as JSON text, or "null" once it left."""

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

    def var_uint(self, what: str) -> int:
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
            if shift > 53:
                raise ProtocolError(f"{what} does not fit in 53 bits")
        if value > MAX_VAR_UINT:
            raise ProtocolError(f"{what} does not fit in 53 bits")
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
            return SyncStep1(_check_state_vector(reader.var_bytes("state vector")))
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


def _check_state_vector(state_vector: bytes) -> bytes:
    """A state vector is varUint(n) (varUint(clientID) varUint(clock)){n}; check it is."""
    reader = _Reader(state_vector)
    count = reader.var_uint("state vector length")
    if count * 2 > len(state_vector):
        raise ProtocolError(f"state vector claims {count} clients in {len(state_vector)} bytes")
    for _ in range(count):
        reader.var_uint("state vector client id")
        reader.var_uint("state vector clock")
    if not reader.at_end:
        raise ProtocolError("state vector has trailing bytes")
    return state_vector


def _parse_awareness(payload: bytes) -> tuple[AwarenessEntry, ...]:
    reader = _Reader(payload)
    count = reader.var_uint("awareness entry count")
    # Each entry takes at least 3 bytes; a larger count cannot be honest.
    if count * 3 > len(payload):
        raise ProtocolError(f"awareness update claims {count} entries in {len(payload)} bytes")
    entries = []
    for _ in range(count):
        client_id = reader.var_uint("awareness client id")
        clock = reader.var_uint("awareness clock")
        state = reader.var_string("awareness state")
        try:
            json.loads(state)
        except ValueError as error:
            raise ProtocolError(f"awareness state of client {client_id} is not JSON") from error
        entries.append(AwarenessEntry(client_id, clock, state))
    if not reader.at_end:
        raise ProtocolError("awareness update has trailing bytes")
    return tuple(entries)


def awareness_message(entries: list[AwarenessEntry] | tuple[AwarenessEntry, ...]) -> bytes:
    """Build one awareness message frame from entries."""
    return Awareness(tuple(entries)).encode()
