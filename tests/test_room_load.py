"""A room loaded from the store: checked at once, answered from the stored bytes until its Doc is needed."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text, merge_updates

from collab.errors import CorruptDocumentError
from collab.store import StoredRecord
from collab.store.memory import MemoryStore
from collab.sync.protocol import SyncStep1, SyncStep2, Update
from collab.sync.room import Room

from .helpers import FramePeer, doc_of, keystrokes, text_of


def stored(text: str, log: str = "") -> tuple[Doc, list[StoredRecord]]:
    """A document typed as `text` + `log`: a snapshot of `text`, then one log row per character of `log`."""
    updates = keystrokes(text + log, client_id=42)
    head = merge_updates(*updates[: len(text)])
    records = [StoredRecord("snapshot", 1, head)]
    records += [StoredRecord("update", 2 + i, update) for i, update in enumerate(updates[len(text) :])]
    return doc_of(updates), records


@pytest.mark.parametrize("log", ["", "!?"])
async def test_a_newcomer_gets_the_whole_document(memory_store: MemoryStore, log: str) -> None:
    doc, records = stored("hello", log)
    room = Room.from_records("r", records, memory_store)
    peer = FramePeer("p")
    room.join(peer)
    room.receive(peer, [SyncStep1(b"\x00")])
    step1, step2 = peer.take()
    assert step1 == SyncStep1(doc.get_state())
    assert isinstance(step2, SyncStep2) and text_of([step2.update]) == "hello" + log
    assert room.log_length == len(log)


async def test_a_returning_peer_gets_what_it_lacks(memory_store: MemoryStore) -> None:
    _, records = stored("hello world")
    updates = keystrokes("hello world", client_id=42)
    partial: Doc = Doc()
    partial.apply_update(merge_updates(*updates[:5]))
    room = Room.from_records("r", records, memory_store)
    peer = FramePeer("p")
    room.receive(peer, [SyncStep1(partial.get_state())])
    [step2] = peer.take()
    assert isinstance(step2, SyncStep2)
    partial.apply_update(step2.update)
    assert str(partial.get("content", type=Text)) == "hello world"


async def test_updates_after_loading_apply_on_top_of_the_stored_document(memory_store: MemoryStore) -> None:
    doc, records = stored("abc")
    room = Room.from_records("r", records, memory_store)
    more: list[bytes] = []
    doc.observe(lambda event: more.append(event.update))
    doc.get("content", type=Text).insert(3, "def")
    peer = FramePeer("p")
    room.receive(peer, [Update(more[0])])
    assert str(room.doc.get("content", type=Text)) == "abcdef"
    room.receive(peer, [SyncStep1(b"\x00")])
    [step2] = peer.take()
    assert isinstance(step2, SyncStep2) and text_of([step2.update]) == "abcdef"


async def test_a_loaded_room_compacts_into_the_whole_document(memory_store: MemoryStore) -> None:
    _, records = stored("abc", "de")
    room = Room.from_records("r", records, memory_store)
    room.compact()
    await memory_store.flush()
    [snapshot] = await memory_store.load("r")
    assert snapshot.kind == "snapshot" and text_of([snapshot.data]) == "abcde"


async def test_a_record_that_does_not_decode_is_refused_at_load(memory_store: MemoryStore) -> None:
    _, records = stored("abc")
    records.append(StoredRecord("update", 9, b"\x01\x05garbage"))
    with pytest.raises(CorruptDocumentError, match="update #9"):
        Room.from_records("r", records, memory_store)
