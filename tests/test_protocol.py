"""The wire protocol without a server: bytes in, messages out, and back."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text

from collab.errors import InvalidUTF8Error, ProtocolError
from collab.sync.protocol import (
    Auth,
    Awareness,
    AwarenessEntry,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    awareness_message,
    encode_var_uint,
    parse_frame,
)


def typed_update() -> bytes:
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc.get("content", type=Text).insert(0, "héllo")
    return updates[0]


# Byte strings produced by the reference JavaScript implementation (lib0 / y-protocols) for the same inputs.
@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_var_uint_matches_lib0(value: int, encoded: bytes) -> None:
    assert encode_var_uint(value) == encoded


def test_sync_messages_round_trip() -> None:
    update = typed_update()
    for message in (SyncStep1(b"\x01\x05\x03"), SyncStep2(update), Update(update)):
        encoded = message.encode()
        assert parse_frame(encoded) == [message]
        assert parse_frame(encoded)[0].raw == encoded


def test_known_frames_from_the_stock_client() -> None:
    # writeSyncStep1 of an empty doc; an empty step 2; query awareness; permission denied.
    assert parse_frame(b"\x00\x00\x01\x00") == [SyncStep1(b"\x00")]
    assert parse_frame(b"\x00\x01\x02\x00\x00") == [SyncStep2(b"\x00\x00")]
    assert parse_frame(b"\x03") == [QueryAwareness()]
    assert parse_frame(b"\x02\x00\x02no") == [Auth("no")]
    assert Auth("no").encode() == b"\x02\x00\x02no"


def test_awareness_round_trip() -> None:
    entries = (AwarenessEntry(3, 7, '{"user":{"name":"Zoë"}}'), AwarenessEntry(2**32 - 1, 1, "null"))
    frame = awareness_message(list(entries))
    [message] = parse_frame(frame)
    assert message == Awareness(entries)
    assert message.entries[1].is_removal and not message.entries[0].is_removal
    assert frame == b"\x01" + encode_var_uint(len(frame) - 2) + frame[2:]


def test_several_messages_in_one_frame_keep_their_own_bytes() -> None:
    update = typed_update()
    first, second, third = Update(update).encode(), QueryAwareness().encode(), SyncStep1(b"\x00").encode()
    messages = parse_frame(first + second + third)
    assert [message.raw for message in messages] == [first, second, third]


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (b"", "empty frame"),
        (b"\x07", "unknown message type 7"),
        (b"\x00\x05\x00", "unknown sync message type 5"),
        (b"\x00\x02\x05ab", "needs 5 bytes, 2 left"),
        (b"\x00\x00\x02\x01\x01", "state vector"),
        (b"\x00\x00\x00", "state vector: length"),
        (b"\x02\x01", "unknown auth message type"),
        (b"\x01\x01\x05", "awareness update claims 5 entries"),
        (b"\x01\x05\x01\x01\x01\x01{", "not JSON"),
        (b"\x01\x07\x01\x01\x01\x02{}\x00", "trailing bytes"),
        (b"\x00\x02" + b"\xff" * 9 + b"\x01", "does not fit in 53 bits"),
    ],
)
def test_malformed_frames_say_what_is_wrong(frame: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        parse_frame(frame)


def test_bad_utf8_is_its_own_error() -> None:
    payload = b"\x01\x01\x01\x02\xc3\x28"  # one entry whose state is invalid UTF-8
    with pytest.raises(InvalidUTF8Error):
        parse_frame(b"\x01" + encode_var_uint(len(payload)) + payload)


def test_every_truncation_of_valid_frames_is_rejected() -> None:
    update = typed_update()
    frames = [
        Update(update).encode(),
        SyncStep2(update).encode(),
        SyncStep1(b"\x02\x81\x01\x05\x07\x09").encode(),
        awareness_message([AwarenessEntry(12345, 3, '{"cursor":{"anchor":1}}')]),
        Auth("permission denied").encode(),
    ]
    for frame in frames:
        for cut in range(len(frame)):
            with pytest.raises(ProtocolError):
                parse_frame(frame[:cut])


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_a_protocol_error(garbage: bytes) -> None:
    try:
        messages = parse_frame(garbage)
    except ProtocolError:
        return
    # What parsed covers the frame exactly, message after message, each keeping its own bytes...
    assert b"".join(message.raw for message in messages) == garbage
    for message in messages:
        # ... and encoding it afresh, from its fields alone, gives a frame that parses back to it.
        fresh = dataclasses.replace(message, raw=b"")
        assert parse_frame(fresh.encode()) == [message]


@given(st.lists(st.tuples(st.integers(0, 2**53 - 1), st.integers(0, 2**53 - 1), st.text(max_size=20)), max_size=5))
def test_awareness_entries_round_trip(items: list[tuple[int, int, str]]) -> None:
    import json

    entries = [AwarenessEntry(client_id, clock, json.dumps(name)) for client_id, clock, name in items]
    [message] = parse_frame(awareness_message(entries))
    assert isinstance(message, Awareness) and list(message.entries) == entries


@given(st.integers(0, 2**53 - 1))
def test_var_uint_round_trip(value: int) -> None:
    # A state vector entry: the client id takes 53 bits, the clock 32 (what yrs stores).
    entry = encode_var_uint(value) + encode_var_uint(value % 2**32)
    [message] = parse_frame(b"\x00\x00" + encode_var_uint(len(payload := b"\x01" + entry)) + payload)
    assert message == SyncStep1(payload)


def _general_parse(frame: bytes) -> list[Message]:
    """parse_frame without its fast path for single updates, message by message."""
    from collab.sync.protocol import _parse_message, _Reader

    reader = _Reader(frame)
    messages = []
    while not reader.at_end:
        start = reader.pos
        message = _parse_message(reader)
        object.__setattr__(message, "raw", frame[start : reader.pos])
        messages.append(message)
    return messages


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16383, 16384, 70_000])
def test_the_single_update_fast_path_parses_as_the_general_path_does(size: int) -> None:
    frame = Update(bytes(range(256)) * (size // 256) + bytes(size % 256)).encode()
    fast = parse_frame(frame)
    assert fast == _general_parse(frame) and fast[0].raw == frame


@given(st.binary(min_size=1, max_size=40))
def test_frames_starting_like_an_update_parse_as_the_general_path_does(tail: bytes) -> None:
    frame = b"\x00\x02" + tail
    try:
        expected = _general_parse(frame)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            parse_frame(frame)
        return
    parsed = parse_frame(frame)
    assert parsed == expected and [m.raw for m in parsed] == [m.raw for m in expected]
