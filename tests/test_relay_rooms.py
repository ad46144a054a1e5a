"""The cluster's pure parts: Redis entries and gap rules (`collab.cluster.entries`), and what a room does with
frames other processes relayed (`Room.receive_relayed`, `merge_stored`, `origin_gone`). No Redis here: the
tests against a real one are tests/test_cluster.py and tests/test_redis_relay.py."""

from __future__ import annotations

import json

import pytest
from pycrdt import Doc, Text

from collab.auth import Grant, Permission
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


def joined(room: Room) -> FramePeer:
    """A peer in `room`, its greeting taken."""
    peer = FramePeer("peer")
    room.join(peer)
    peer.take()
    return peer


class Published:
    """A `Publisher` that keeps what a room published."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.subjects: list[str | None] = []

    def publish(self, name: str, frame: bytes, subject: str | None = None) -> None:
        self.frames.append((name, frame))
        self.subjects.append(subject)

    def clear(self) -> None:
        self.frames.clear()
        self.subjects.clear()


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
    assert decode_entry(frame_fields("host:1:ab", b"\x01", "alice")) == Entry("host:1:ab", b"\x01", "alice")
    for foreign in (
        {},
        {b"o": b""},
        {b"o": b"\xff\xfe", b"f": b"x"},
        {b"o": b"p"},
        {b"o": b"p", b"f": b""},
        {b"o": b"p", b"f": b"x", b"g": b"1"},
        {b"o": b"p", b"g": b"yes"},
        {b"data": b"from another program"},
        {b"o": b"p", b"f": b"x", b"s": b"\xff"},
        {b"o": b"p", b"f": b"x", b"s": b"a" * 1025},
    ):
        assert decode_entry(foreign) is None, foreign


def test_entry_ids_give_their_time() -> None:
    assert id_millis(b"1700000000123-4") == 1700000000123
    assert id_millis("0-0") == 0
    assert id_millis("nonsense") is None and id_millis("12-") is None


def test_a_new_redis_means_every_room_may_have_missed_something() -> None:
    rooms = [Followed("1-0"), Followed(None)]
    found = after_outage(rooms, same_server=False, down_for=0.1, retention=60)
    assert found is not None and found[1] == rooms and "epoch" in found[0]


def test_the_same_redis_after_a_short_outage_lost_nothing_but_rooms_opened_meanwhile() -> None:
    known, unknown = Followed("5-0"), Followed(None)
    assert after_outage([known], same_server=True, down_for=2, retention=60) is None
    found = after_outage([known, unknown], same_server=True, down_for=2, retention=60)
    assert found is not None and found[1] == [unknown]


def test_an_outage_near_the_retention_counts_as_a_gap() -> None:
    found = after_outage([Followed(BEGINNING)], same_server=True, down_for=31, retention=60)
    assert found is not None and "retention" in found[0]


# Rooms and relayed frames.


async def test_a_relayed_update_reaches_every_peer_and_the_doc_but_is_neither_stored_nor_published_again(
    memory_store: MemoryStore,
) -> None:
    published = Published()
    room = Room("r", memory_store, publisher=published)
    peer = joined(room)
    update = update_of("from elsewhere")
    room.receive_relayed(Origin("other"), parse_frame(Update(update).encode()))
    assert [type(message) for message in peer.take()] == [Update]
    room.flush()
    assert str(room.doc.get("content", type=Text)) == "from elsewhere"
    assert published.frames == []
    await memory_store.flush()
    assert await memory_store.load("r") == []
    assert room.relayed_from == {"other"}


async def test_what_a_room_accepts_from_its_peers_is_published_once(memory_store: MemoryStore) -> None:
    published = Published()
    room = Room("r", memory_store, publisher=published)
    peer = FramePeer("peer")
    room.join(peer)
    for stroke in keystrokes("hi"):
        room.receive(peer, parse_frame(Update(stroke).encode()))
    room.flush()
    assert text_of(parse_frame(frame)[0].update for _, frame in published.frames) == "hi"  # type: ignore[union-attr]


async def test_a_relayed_update_that_does_not_decode_is_refused_whole(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    peer = joined(room)
    good = Update(update_of("ok")).encode()
    with pytest.raises(InvalidUpdateError):
        room.receive_relayed(Origin("other"), parse_frame(good + Update(b"\x01\x05\xff").encode()))
    assert peer.take() == []


async def test_relayed_presence_is_held_by_its_process_and_goes_with_it(memory_store: MemoryStore) -> None:
    published = Published()
    room = Room("r", memory_store, publisher=published)
    peer = joined(room)
    other = Origin("other")
    entries = [AwarenessEntry(client_id, 1, json.dumps({"user": client_id})) for client_id in range(1, 11)]
    room.receive_relayed(other, parse_frame(awareness_message(entries)), now=1.0)
    assert len(room.presence) == 10  # many more ids than one connection may hold: a process holds them all
    room.origin_gone(other, now=2.0)
    assert len(room.presence) == 0
    removals = [entry for message in peer.messages() for entry in getattr(message, "entries", ())]
    assert {entry.client_id for entry in removals if entry.is_removal} == set(range(1, 11))
    assert published.frames == []  # every process drops a dead one's clients itself


async def test_a_process_gone_leaves_its_relayed_updates_in_a_snapshot(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    room.receive_relayed(Origin("dying"), parse_frame(Update(update_of("unsaved elsewhere")).encode()))
    room.origin_gone(Origin("bystander"))
    await memory_store.flush()
    assert await memory_store.load("r") == []  # another process going is no reason to write
    room.origin_gone(Origin("dying"))
    await memory_store.flush()
    assert text_of(record.data for record in await memory_store.load("r")) == "unsaved elsewhere"


async def test_merging_the_store_sends_peers_only_what_they_missed(memory_store: MemoryStore) -> None:
    room = Room("r", memory_store)
    peer = joined(room)
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


async def test_a_relayed_removal_that_hands_an_id_to_a_peer_here_is_published(memory_store: MemoryStore) -> None:
    published = Published()
    room = Room("r", memory_store, publisher=published)
    claimant = FramePeer("claimant")
    room.join(claimant)
    other = Origin("other")
    room.receive_relayed(other, parse_frame(awareness_message([AwarenessEntry(7, 1, '{"on": "other"}')])), now=1.0)
    # The same client id reconnecting here before its old connection there is known gone: a claim, kept.
    room.receive(claimant, parse_frame(awareness_message([AwarenessEntry(7, 2, '{"on": "here"}')])), now=1.1)
    published.clear()
    claimant.take()
    room.receive_relayed(other, parse_frame(awareness_message([AwarenessEntry(7, 2, "null")])), now=1.2)
    (handover,) = [entry for message in claimant.take() for entry in getattr(message, "entries", ())]
    assert handover.state == '{"on": "here"}' and not handover.is_removal
    (frame,) = [frame for _, frame in published.frames]
    assert [entry.state for entry in parse_frame(frame)[0].entries] == ['{"on": "here"}']  # type: ignore[union-attr]


async def test_a_process_gone_removes_at_the_current_clock_so_the_next_renewal_is_taken(
    memory_store: MemoryStore,
) -> None:
    room = Room("r", memory_store)
    other, back = Origin("cut off"), Origin("cut off")
    room.receive_relayed(other, parse_frame(awareness_message([AwarenessEntry(9, 4, '{"u": 1}')])), now=1.0)
    room.origin_gone(other, now=2.0)
    assert len(room.presence) == 0
    # It was only cut off: its client's renewal (clock 5) comes back through it, and is shown again.
    room.receive_relayed(back, parse_frame(awareness_message([AwarenessEntry(9, 5, '{"u": 1}')])), now=3.0)
    assert [entry.clock for entry in room.presence.current()] == [5]


def person(name: str) -> FramePeer:
    """A peer whose token says it is `name` (its `sub`)."""
    peer = FramePeer(name)
    peer.grant = Grant("", Permission.WRITE, float("inf"), subject=name)  # type: ignore[assignment]
    return peer


def presence_of(room: Room) -> dict[int, str]:
    return {entry.client_id: entry.state for entry in room.presence.current()}


async def test_another_process_s_user_keeps_their_ids_as_a_connection_with_their_sub_would(
    memory_store: MemoryStore,
) -> None:
    published = Published()
    room = Room("r", memory_store, publisher=published)
    alice_there = Origin("other", "alice")
    room.receive_relayed(alice_there, parse_frame(awareness_message([AwarenessEntry(5, 1, '"alice"')])), now=1.0)
    mallory = person("mallory")
    room.join(mallory)
    room.receive(mallory, parse_frame(awareness_message([AwarenessEntry(5, 2, '"mallory"')])), now=1.1)
    assert presence_of(room) == {5: '"alice"'}  # no claim on an id of someone with a sub
    # Alice leaves over there: her id stays hers for a while, mallory may not bring it back...
    room.receive_relayed(alice_there, parse_frame(awareness_message([AwarenessEntry(5, 2, "null")])), now=1.2)
    room.receive(mallory, parse_frame(awareness_message([AwarenessEntry(5, 3, '"mallory"')])), now=1.3)
    assert presence_of(room) == {}
    # ...but alice herself, reconnecting here, may.
    alice_here = person("alice")
    room.join(alice_here)
    published.clear()
    room.receive(alice_here, parse_frame(awareness_message([AwarenessEntry(5, 3, '"alice again"')])), now=1.4)
    assert presence_of(room) == {5: '"alice again"'}
    assert published.subjects == ["alice"]  # and the others learn it is hers


async def test_the_same_person_here_takes_over_their_id_from_another_process_at_once(
    memory_store: MemoryStore,
) -> None:
    room = Room("r", memory_store)
    room.receive_relayed(
        Origin("other", "bob"), parse_frame(awareness_message([AwarenessEntry(8, 4, '"bob there"')])), now=1.0
    )
    bob = person("bob")
    room.join(bob)
    room.receive(bob, parse_frame(awareness_message([AwarenessEntry(8, 5, '"bob here"')])), now=1.1)
    assert presence_of(room) == {8: '"bob here"'}
