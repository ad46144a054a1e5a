"""What writers send: a typist's keystrokes as real pycrdt updates, made before any clock starts.

`typing(n, ...)` types n keystrokes into a pycrdt Text the way a person writes: mostly one character after
another at the cursor, now and then a backspace, rarely a jump to another place. Long runs of consecutive
inserts are exactly what makes pycrdt's apply cost grow (issue 5), so they are kept on purpose. Every
keystroke is one Yjs v1 update, taken from the transaction that made it (`event.update`).

Streams are generated once per run and sent unchanged to every server, as frames already encoded and
masked (`frames`), so that sending costs the load generator one `transport.write`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from pycrdt import Doc, Text, TransactionEvent, merge_updates

from collab.sync.protocol import Update

from .peer import TEXT_NAME
from .wsclient import encode_frame

__all__ = ["Stream", "chunked", "expected_text", "expected_update_size", "load_or_type", "typing", "writer_of"]

GENERATOR_VERSION = 1
"""Part of every cache file's name: bump it when `typing` changes what it generates."""
ALPHABET = "etaoin shrdlu cmfwyp vbgkjqxz,.\n"
P_JUMP = 0.005  # mean run of about 200 characters between cursor jumps
P_BACKSPACE = 0.03


@dataclass(slots=True)
class Stream:
    """One writer's keystrokes, in order."""

    client_id: int
    updates: list[bytes]
    state: bytes
    """The writer's whole document once every keystroke is made (its `get_update()`)."""
    state_vector: bytes
    frames: list[bytes] = field(default_factory=list)
    """`updates` as masked WebSocket frames carrying y-websocket update messages."""


PATTERNS = {"typing": (P_JUMP, P_BACKSPACE), "append": (0.0, 0.0)}
"""typing: as above. append: one character after another at the end, never a backspace: the worst case for
pycrdt, whose cost per applied keystroke grows with such a run (a backspace ends it)."""


def typing(n: int, client_id: int, seed: int, pattern: str = "typing") -> Stream:
    """n keystrokes by one typist; the last one is always an insert, so that the stream's end shows in a state
    vector."""
    p_jump, p_backspace = PATTERNS[pattern]
    rnd = random.Random(seed)
    doc: Doc[Text] = Doc(client_id=client_id)
    text = doc.get(TEXT_NAME, type=Text)
    updates: list[bytes] = []

    def collect(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(collect)
    cursor = length = 0
    for i in range(n):
        roll = rnd.random()
        if roll < p_jump and length:
            cursor = rnd.randrange(length + 1)
        elif roll < p_jump + p_backspace and cursor and i < n - 1:
            del text[cursor - 1 : cursor]
            cursor -= 1
            length -= 1
            continue
        text.insert(cursor, ALPHABET[i % len(ALPHABET)])
        cursor += 1
        length += 1
    doc.unobserve(subscription)
    stream = Stream(client_id, updates, doc.get_update(), doc.get_state())
    stream.frames = [encode_frame(Update(update).encode()) for update in updates]
    return stream


def load_or_type(n: int, client_id: int, seed: int, cache: Path | None, pattern: str = "typing") -> Stream:
    """`typing(n, client_id, seed, pattern)`, read from `cache` if an earlier run wrote it there (and written if not).

    Long streams take seconds to type (pycrdt's cost per keystroke grows with the run), always the same
    ones for the same arguments and pycrdt version.
    """
    if cache is None:
        return typing(n, client_id, seed, pattern)
    path = cache / f"{pattern}-v{GENERATOR_VERSION}-pycrdt{version('pycrdt')}-{n}-{client_id}-{seed}.bin"
    if path.exists():
        state, state_vector, *updates = _unpack(path.read_bytes())
        stream = Stream(client_id, updates, state, state_vector)
        stream.frames = [encode_frame(Update(update).encode()) for update in updates]
        return stream
    stream = typing(n, client_id, seed, pattern)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(_pack([stream.state, stream.state_vector, *stream.updates]))
    partial.replace(path)
    return stream


def _pack(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "big") + item for item in items)


def _unpack(data: bytes) -> list[bytes]:
    items, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        items.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return items


def chunked(stream: Stream, size: int, count: int | None = None) -> list[bytes]:
    """The stream's first `count` (default: all) keystrokes merged `size` at a time, as frames: a fast way
    to upload a long history."""
    updates = stream.updates[:count]
    return [encode_frame(Update(merge_updates(*updates[i : i + size])).encode()) for i in range(0, len(updates), size)]


def expected_text(streams: list[Stream]) -> str:
    """The text every client of a room must end with, once every stream is delivered."""
    doc: Doc[Text] = Doc()
    for stream in streams:
        doc.apply_update(stream.state)
    return str(doc.get(TEXT_NAME, type=Text))


def expected_update_size(streams: list[Stream]) -> int:
    """len(doc.get_update()) of the room's final document."""
    doc: Doc[Text] = Doc()
    for stream in streams:
        doc.apply_update(stream.state)
    return len(doc.get_update())


def writer_of(message: bytes) -> int:
    """The client id of the first struct (or deletion) of an update message `0 2 len update`.

    A keystroke's update holds one client's structs, or only deletions of that client's own characters,
    so this names its writer; about a microsecond, with no decoding of the rest.
    """
    pos = 2
    while message[pos] & 0x80:  # skip the update's length
        pos += 1
    pos += 1
    clients, pos = var_uint(message, pos)
    if clients:
        _, pos = var_uint(message, pos)  # number of structs of that client
    else:
        _, pos = var_uint(message, pos)  # number of clients in the delete set
    client, _ = var_uint(message, pos)
    return client


def var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """lib0 varUint at `pos`: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
