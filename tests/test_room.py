"""Rooms and presence without sockets: peers are lists of frames, the store is in memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, merge_updates

from collab.errors import InvalidUpdateError
from collab.store.memory import MemoryStore
from collab.sync.presence import Presence
from collab.sync.protocol import (
    Awareness,
    AwarenessEntry,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    awareness_message,
    parse_frame,
)
from collab.sync.room import Room

from .helpers import FramePeer, doc_of, keystrokes


async def test_join_greets_with_state_vector_and_presence(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    first, second = FramePeer("1"), FramePeer("2")
    room.join(first)
    assert first.take() == [SyncStep1(b"\x00")]
    room.receive(first, [Awareness((AwarenessEntry(7, 1, '{"name":"a"}'),))])
    room.join(second)
    step1, awareness = second.take()
    assert isinstance(step1, SyncStep1)
    assert awareness == Awareness((AwarenessEntry(7, 1, '{"name":"a"}'),))


async def test_every_step1_gets_a_step2_even_when_empty(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    peer = FramePeer("1")
    room.join(peer)
    peer.take()
    room.receive(peer, [SyncStep1(b"\x00")])
    assert peer.take() == [SyncStep2(b"\x00\x00")]


async def test_updates_are_relayed_to_others_stored_and_merged(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    writer, reader = FramePeer("w"), FramePeer("r")
    room.join(writer)
    room.join(reader)
    writer.take(), reader.take()
    updates = keystrokes("hi")
    frames = [Update(update).encode() for update in updates]
    for frame in frames:
        room.receive(writer, parse_frame(frame))
    assert reader.frames == frames, "the validated bytes are forwarded as they came"
    assert writer.frames == [], "no echo of one's own update"
    assert str(room.doc.get("content", type=Text)) == "hi"
    await memory_store.flush()
    assert [record.data for record in await memory_store.load("r")] == [merge_updates(*updates)]


async def test_step2_is_relayed_as_an_update(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    writer, reader = FramePeer("w"), FramePeer("r")
    room.join(writer)
    room.join(reader)
    reader.take()
    updates = keystrokes("x")
    room.receive(writer, [SyncStep2(updates[0])])
    assert reader.take() == [Update(updates[0])]


async def test_invalid_update_reaches_nobody(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    writer, reader = FramePeer("w"), FramePeer("r")
    room.join(writer)
    room.join(reader)
    reader.take()
    updates = keystrokes("ok")
    with pytest.raises(InvalidUpdateError):
        # A valid update first, then garbage: the whole frame is refused, nothing takes effect.
        room.receive(writer, [Update(updates[0]), Update(b"\x01\x02\x03")])
    assert reader.frames == []
    assert str(room.doc.get("content", type=Text)) == ""
    await memory_store.flush()
    assert await memory_store.load("r") == []


async def test_late_joiner_gets_exactly_what_it_lacks(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    writer = FramePeer("w")
    room.join(writer)
    updates = keystrokes("hello world")
    source = doc_of(updates)
    for update in updates:
        room.receive(writer, [Update(update)])
    # The late joiner already has the first five characters.
    joiner_doc: Doc = Doc()
    for update in updates[:5]:
        joiner_doc.apply_update(update)
    joiner = FramePeer("j")
    room.join(joiner)
    joiner.take()
    room.receive(joiner, [SyncStep1(joiner_doc.get_state())])
    [step2] = joiner.take()
    assert isinstance(step2, SyncStep2)
    assert step2.update == source.get_update(joiner_doc.get_state())
    joiner_doc.apply_update(step2.update)
    assert str(joiner_doc.get("content", type=Text)) == "hello world"


async def test_awareness_is_echoed_and_removed_when_its_owner_leaves(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    owner, other = FramePeer("o"), FramePeer("x")
    room.join(owner)
    room.join(other)
    owner.take(), other.take()
    frame = awareness_message([AwarenessEntry(5, 1, '{"cursor":1}')])
    room.receive(owner, parse_frame(frame))
    assert owner.frames == [frame] and other.frames == [frame]
    other.take()
    room.leave(owner)
    assert other.take() == [Awareness((AwarenessEntry(5, 2, "null"),))]


async def test_stale_awareness_is_not_broadcast(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    peer = FramePeer("p")
    room.join(peer)
    room.receive(peer, [Awareness((AwarenessEntry(5, 3, "{}"),))])
    peer.take()
    room.receive(peer, [Awareness((AwarenessEntry(5, 2, '{"old":true}'),))])
    assert peer.frames == []
    room.receive(peer, [QueryAwareness()])
    assert peer.take() == [Awareness((AwarenessEntry(5, 3, "{}"),))]


async def test_compaction_replaces_the_log_with_a_snapshot(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store, compact_after=10)
    peer = FramePeer("p")
    room.join(peer)
    updates = keystrokes("abcdefghijklmnopqrstuvwxy")
    for update in updates:
        room.receive(peer, [Update(update)])
    await memory_store.flush()
    records = await memory_store.load("r")
    assert [record.kind for record in records] == ["snapshot", "update"]
    reloaded = Room.from_records("r", records, memory_store)
    assert str(reloaded.doc.get("content", type=Text)) == "abcdefghijklmnopqrstuvwxy"
    assert reloaded.log_length == 1


def test_presence_keeps_the_newest_clock() -> None:
    presence = Presence()
    assert presence.apply("a", [AwarenessEntry(1, 2, "{}")], 0).accepted == [AwarenessEntry(1, 2, "{}")]
    assert presence.apply("a", [AwarenessEntry(1, 2, '{"x":1}')], 0).accepted == []
    assert presence.apply("a", [AwarenessEntry(1, 2, "null")], 0).accepted == [AwarenessEntry(1, 2, "null")]
    assert presence.current() == []
    assert presence.remove_owner("a", 0) == []


def random_edits(seed: int, client_id: int) -> list[bytes]:
    """A client making random text, map and array edits; its updates in order."""
    rng = random.Random(seed)
    doc: Doc = Doc(client_id=client_id)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content, meta, items = doc.get("content", type=Text), doc.get("map", type=Map), doc.get("array", type=Array)
    for _ in range(rng.randint(1, 15)):
        match rng.randrange(4):
            case 0:
                content.insert(rng.randint(0, len(content)), rng.choice(["a", "bc", "def", "ghij"]))
            case 1 if len(content):
                start = rng.randrange(len(content))
                del content[start : min(len(content), start + rng.randint(1, 3))]
            case 2:
                meta[rng.choice("xyz")] = rng.randint(0, 9)
            case _:
                items.append(rng.randint(0, 9))
    return updates


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 4), st.randoms(use_true_random=False))
def test_any_delivery_order_converges(seed: int, clients: int, rng: random.Random) -> None:
    """Each client's updates arrive in order, interleaved at random; rooms and clients all agree."""
    streams = [random_edits(seed + n, client_id=n + 1) for n in range(clients)]
    expected: Doc = Doc()
    for stream in streams:
        for update in stream:
            expected.apply_update(update)

    store = RecordingStore()
    room = Room("r", store)  # type: ignore[arg-type]
    peers = [FramePeer(str(n)) for n in range(clients)]
    for peer in peers:
        room.join(peer)
    positions = [0] * clients
    while any(position < len(stream) for position, stream in zip(positions, streams, strict=True)):
        n = rng.choice([i for i in range(clients) if positions[i] < len(streams[i])])
        room.receive(peers[n], [Update(streams[n][positions[n]])])
        positions[n] += 1
    assert room.doc.get_state() == expected.get_state()
    for name, kind in (("content", Text), ("map", Map), ("array", Array)):
        assert room.doc.get(name, type=kind).to_py() == expected.get(name, type=kind).to_py()
    # Every peer, applying what was relayed to it plus its own updates, ends in the same state.
    for n, peer in enumerate(peers):
        replica: Doc = Doc()
        for message in peer.messages():
            if isinstance(message, Update):
                replica.apply_update(message.update)
        for update in streams[n]:
            replica.apply_update(update)
        assert replica.get_state() == expected.get_state()
    # And so does what the store was given.
    stored: Doc = Doc()
    for update in store.appended:
        stored.apply_update(update)
    assert stored.get_state() == expected.get_state()


class RecordingStore:
    """The two writes a room makes, kept in lists (no event loop needed)."""

    def __init__(self) -> None:
        self.appended: list[bytes] = []

    def append(self, name: str, update: bytes, updates: int = 1) -> None:
        self.appended.append(update)

    def compact(self, name: str, snapshot: bytes) -> None:
        self.appended = [snapshot]
