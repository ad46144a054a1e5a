"""The cluster's pure parts: Redis entries and gap rules (`collab.cluster.entries`), and what a room does with
frames other processes relayed (`Room.receive_relayed`, `merge_stored`, `origin_gone`). No Redis here: the
tests against a real one are tests/test_cluster.py and tests/test_redis_relay.py."""

from __future__ import annotations

import json

import pytest
from pycrdt import Doc, Text

from collab.cluster.entries import (
    BEGINNING,
    Entry,
    Followed,
    after_outage,
    decode_entry,
    frame_fields,
    gap_fields,
    id_millis,
    room_key,
    room_name,
)
from collab.errors import InvalidUpdateError
from collab.store import StoredRecord
from collab.store.memory import MemoryStore
from collab.sync.protocol import AwarenessEntry, Update, awareness_message, parse_frame
from collab.sync.room import Origin, Room

from .helpers import FramePeer, keystrokes, text_of


class Published:
    """A `Publisher` that keeps what a room published."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []

    def publish(self, name: str, frame: bytes) -> None:
        self.frames.append((name, frame))


def update_of(typed: str) -> bytes:
    doc: Doc = Doc()
    doc["content"] = content = Text()
    content += typed
    return doc.get_update()


# Entries.


def test_room_keys_round_trip_any_name_and_refuse_other_keys() -> None:
    for name in ("a", "team/plan", "ünïcode ✓", "room:inside"):
        assert room_name("p:", room_key("p:", name)) == name
        assert room_name("p:", room_key("p:", name).encode()) == name
    assert room_name("p:", "p:processes") is None
    assert room_name("p:", "q:room:x") is None


def test_entries_decode_what_collab_writes_and_nothing_else() -> None:
    assert decode_entry(frame_fields("host:1:ab", b"\x00\x02\x01\x00")) == Entry("host:1:ab", b"\x00\x02\x01\x00")
    assert decode_entry(gap_fields("host:1:ab")) == Entry("host:1:ab", None)
    for foreign in (
        {},
        {b"o": b""},
        {b"o": b"\xff\xfe", b"f": b"x"},
        {b"o": b"p"},
        {b"o": b"p", b"f": b""},
        {b"o": b"p", b"f": b"x", b"g": b"1"},
        {b"o": b"p", b"g": b"yes"},
        {b"data": b"from another program"},
    ):
        assert decode_entry(foreign) is None, foreign


def test_entry_ids_give_their_time() -> None:
    assert id_millis(b"1700000000123-4") == 1700000000123
    assert id_millis("0-0") == 0
    assert id_millis("nonsense") is None and id_millis("12-") is None


def test_a_new_redis_means_every_room_may_have_missed_something() -> None:
    rooms = [Followed("1-0"), Followed(None)]
    found = after_outage(rooms, same_server=False, down_for=0.1, retention=60)
    assert found is not None and found[1] == rooms and "run id" in found[0]


def test_the_same_redis_after_a_short_outage_lost_nothing_but_rooms_opened_meanwhile() -> None:
    known, unknown = Followed("5-0"), Followed(None)
    assert after_outage([known], same_server=True, down_for=2, retention=60) is None
    found = after_outage([known, unknown], same_server=True, down_for=2, retention=60)
    assert found is not None and found[1] == [unknown]


def test_an_outage_near_the_retention_counts_as_a_gap() -> None:
    found = after_outage([Followed(BEGINNING)], same_server=True, down_for=31, retention=60)
    assert found is not None and "retention" in found[0]


# Rooms and relayed frames.


async def test_a_relayed_update_reaches_every_peer_and_the_doc_but_is_neither_stored_nor_published_again() -> None:
    store = MemoryStore()
    await store.start()
    published = Published()
    room = Room("r", store, publisher=published)
    peer = FramePeer("peer")
    room.join(peer)
    peer.take()
    update = update_of("from elsewhere")
    room.receive_relayed(Origin("other"), parse_frame(Update(update).encode()))
    assert [type(message) for message in peer.take()] == [Update]
    room.flush()
    assert str(room.doc.get("content", type=Text)) == "from elsewhere"
    assert published.frames == []
    await store.flush()
    assert await store.load("r") == []
    assert room.relayed_from == {"other"}
    await store.close()


async def test_what_a_room_accepts_from_its_peers_is_published_once() -> None:
    store = MemoryStore()
    await store.start()
    published = Published()
    room = Room("r", store, publisher=published)
    peer = FramePeer("peer")
    room.join(peer)
    for stroke in keystrokes("hi"):
        room.receive(peer, parse_frame(Update(stroke).encode()))
    room.flush()
    assert text_of(parse_frame(frame)[0].update for _, frame in published.frames) == "hi"  # type: ignore[union-attr]
    await store.close()


async def test_a_relayed_update_that_does_not_decode_is_refused_whole() -> None:
    store = MemoryStore()
    await store.start()
    room = Room("r", store)
    peer = FramePeer("peer")
    room.join(peer)
    peer.take()
    good = Update(update_of("ok")).encode()
    with pytest.raises(InvalidUpdateError):
        room.receive_relayed(Origin("other"), parse_frame(good + Update(b"\x01\x05\xff").encode()))
    assert peer.take() == []
    await store.close()


async def test_relayed_presence_is_held_by_its_process_and_goes_with_it() -> None:
    store = MemoryStore()
    await store.start()
    published = Published()
    room = Room("r", store, publisher=published)
    peer = FramePeer("peer")
    room.join(peer)
    peer.take()
    other = Origin("other")
    entries = [AwarenessEntry(client_id, 1, json.dumps({"user": client_id})) for client_id in range(1, 11)]
    room.receive_relayed(other, parse_frame(awareness_message(entries)), now=1.0)
    assert len(room.presence) == 10  # many more ids than one connection may hold: a process holds them all
    room.origin_gone(other, now=2.0)
    assert len(room.presence) == 0
    removals = [entry for message in peer.messages() for entry in getattr(message, "entries", ())]
    assert {entry.client_id for entry in removals if entry.is_removal} == set(range(1, 11))
    assert published.frames == []  # every process drops a dead one's clients itself
    await store.close()


async def test_a_process_gone_leaves_its_relayed_updates_in_a_snapshot() -> None:
    store = MemoryStore()
    await store.start()
    room = Room("r", store)
    room.receive_relayed(Origin("dying"), parse_frame(Update(update_of("unsaved elsewhere")).encode()))
    room.origin_gone(Origin("bystander"))
    await store.flush()
    assert await store.load("r") == []  # another process going is no reason to write
    room.origin_gone(Origin("dying"))
    await store.flush()
    assert text_of(record.data for record in await store.load("r")) == "unsaved elsewhere"
    await store.close()


async def test_merging_the_store_sends_peers_only_what_they_missed() -> None:
    store = MemoryStore()
    await store.start()
    room = Room("r", store)
    peer = FramePeer("peer")
    room.join(peer)
    peer.take()
    doc: Doc = Doc()
    doc["content"] = content = Text()
    content += "seen"
    seen = doc.get_update()
    room.receive_relayed(Origin("other"), parse_frame(Update(seen).encode()))
    content += " missed"
    peer.take()
    stored = [StoredRecord("snapshot", 1, doc.get_update(), checked=True)]
    missed = room.merge_stored(stored)
    (message,) = peer.take()
    assert isinstance(message, Update) and missed == len(message.update)
    assert text_of([seen, message.update]) == "seen missed"
    assert len(message.update) < len(doc.get_update())  # the difference, not the whole document
    assert room.merge_stored(stored) == 0  # nothing missed any more
    await store.close()
