"""History and restore: the text diff, the restore change, moments and the journal (no server), then the HTTP API
(`GET /api/history/<name>`, `POST /api/docs/<name>/restore?at=`) on real servers, seen by stock-protocol clients.
The command line's side is tests/test_cli_restore.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab.auth import Permission
from collab.errors import (
    DOCUMENT_DELETED,
    DOCUMENT_RENAMED,
    DocumentTooLargeError,
    InvalidUpdateError,
    RestoreError,
    ServerBusyError,
)
from collab.formats import render, typed_roots
from collab.http import api
from collab.server import rooms as rooms_module
from collab.server.app import CollabServer
from collab.server.rooms import Rooms
from collab.store import HistoryPoint
from collab.store.memory import MemoryStore
from collab.sync import moments as moments_module
from collab.sync.journal import MAX_NAME, MAX_NAMES, SAMPLE_EVERY, Journal, display_names
from collab.sync.moments import MAX_LIMIT, group_moments, history_json, listed_moments, time_of
from collab.sync.protocol import Awareness, AwarenessEntry, Update
from collab.sync.restore import Restore, holds, restore_update
from collab.sync.room import EMPTY_UPDATE, Room, check_update
from collab.sync.textdiff import (
    CHARACTER_PAIRS,
    MAX_EDITS,
    NEAR,
    WORK,
    Edit,
    apply_edits,
    coalesced,
    edit_text,
    edits_for,
    text_edits,
)
from collab.sync.yupdate import check_state_vector
from collab.units import format_time, parse_time

from .helpers import (
    SECRET,
    FramePeer,
    Reply,
    StartServer,
    call,
    get,
    room_url,
    servers_on,
    stored_text,
    synced,
    text,
    token,
    wait_for,
    wait_stored,
    with_token,
)

# The text diff.


def applied(old: str, edits: list[Edit]) -> str:
    for edit in reversed(edits):
        old = old[: edit.start] + edit.insert + old[edit.end :]
    return old


def in_a_text(old: str, new: str) -> str:
    """What a pycrdt Text holding `old` reads after `edit_text(new)`, which must make one update."""
    doc: Doc = Doc()
    content = doc.get("content", type=Text)
    content += old
    made: list[bytes] = []
    doc.observe(lambda event: made.append(event.update))
    with doc.transaction():
        edit_text(content, new)
    assert len(made) == (0 if old == new else 1)
    return str(content)


texts = st.text(alphabet=st.sampled_from("ab \n😀é\u200d"), max_size=80)


@given(texts, texts)
@settings(max_examples=300, deadline=None)
def test_the_edits_turn_one_text_into_the_other_in_a_pycrdt_text_too(old: str, new: str) -> None:
    edits = text_edits(old, new)
    assert applied(old, edits) == new
    assert all(a.end <= b.start for a, b in pairwise(edits))  # in order, not overlapping
    assert in_a_text(old, new) == new  # pycrdt counts UTF-8 bytes: 😀 is 4, é is 2


def test_a_small_change_to_a_long_text_is_a_small_edit() -> None:
    long = "".join(f"line {number}: the quick brown fox\n" for number in range(20_000))
    changed = long.replace("line 12345: the quick", "line 12345: the slow", 1)
    started = time.perf_counter()
    edits = text_edits(long, changed)
    assert time.perf_counter() - started < 1.0
    assert sum(edit.end - edit.start + len(edit.insert) for edit in edits) <= len("quickslow")
    assert applied(long, edits) == changed
    assert text_edits(long, long) == []


def test_long_middles_are_diffed_by_lines_then_characters() -> None:
    lines = [f"{number} alpha beta gamma\n" for number in range(5_000)]
    changed = list(lines)
    for number in range(0, 5_000, 500):  # ten edits spread over the whole text: the middle is all of it
        changed[number] = changed[number].replace("beta", "BETA")
    old, new = "".join(lines), "".join(changed)
    assert len(old) * len(new) > CHARACTER_PAIRS
    edits = text_edits(old, new)
    assert applied(old, edits) == new
    assert len(edits) == 10 and all(len(edit.insert) <= 4 for edit in edits)


def test_a_diff_too_costly_replaces_the_middle_whole_and_is_still_right() -> None:
    # Many lines each repeated often (but not popular enough to be junk): comparing by lines would cost too much.
    block = [f"row {number % 2_000}\n" for number in range(100_000)]
    old, new = "X" + "".join(block) + "Y", "Z" + "".join(reversed(block)) + "W"
    assert len(block) * 50 > WORK  # each line 50 times: the first search alone would cost more than a diff may
    started = time.perf_counter()
    edits = text_edits(old, new)
    assert time.perf_counter() - started < 2.0
    assert edits == [Edit(0, len(old), new)]


def test_diffs_that_cost_the_square_of_their_length_are_bounded() -> None:
    """Every match one line long (lines swapped pairwise), or every other line changed: each search of
    `SequenceMatcher` scans what is left, so it cost lines x lines (20,000 lines: 26 s and 20 s)."""
    lines = [f"line {number}\n" for number in range(20_000)]
    swapped = "C" + "".join(lines[number ^ 1] for number in range(20_000)) + "D"
    config = "".join(f"key{number}: value\n" for number in range(20_000))
    every_other = "".join(f"key{number}: {'VALUE' if number % 2 else 'value'}\n" for number in range(20_000))
    for old, new in (("A" + "".join(lines) + "B", swapped), (config, every_other)):
        started = time.perf_counter()
        edits = text_edits(old, new)
        assert time.perf_counter() - started < 3.0
        assert applied(old, edits) == new


def test_edits_close_together_are_made_as_one_and_their_count_is_capped() -> None:
    old = "0123456789" * 100
    assert coalesced(old, [Edit(0, 1, "a"), Edit(3, 4, "b")]) == [Edit(0, 4, "a12b")]  # 2 apart: one edit
    spread = [Edit(start, start + 1, "x") for start in range(0, 1000, NEAR + 2)]
    assert coalesced(old, spread) == spread  # far enough apart: as they were
    capped = coalesced(old, spread, most=10)
    assert len(capped) == 10 and applied(old, capped) == applied(old, spread)
    widest = [Edit(0, 1, "x"), Edit(20, 21, "y"), Edit(500, 501, "z"), Edit(520, 521, "w")]
    assert coalesced(old, widest, most=2) == [
        Edit(0, 21, "x" + old[1:20] + "y"),
        Edit(500, 521, "z" + old[501:520] + "w"),
    ]
    assert edits_for(1_000) == MAX_EDITS and edits_for(10_000_000) < MAX_EDITS // 10 and edits_for(10**12) >= 16


def test_applying_many_edits_to_a_text_is_bounded() -> None:
    """yrs walks a text's items from its start for each edit, and each edit splits them: 27,000 edits took 27 s."""
    old = "".join(f"word{number} " for number in range(30_000))
    edits = [Edit(start, start + 1, "X") for start in range(0, len(old), NEAR + 2)]
    doc: Doc = Doc()
    content = doc.get("content", type=Text)
    content += old
    started = time.perf_counter()
    with doc.transaction():
        apply_edits(content, old, edits)
    assert time.perf_counter() - started < 5.0
    assert len(edits) > 10 * MAX_EDITS and str(content) == applied(old, edits)


# The restore change.


def edited(update: bytes, change: Any) -> bytes:
    """`update` with `change(doc)` made on top, as one more client would: the whole document after it."""
    doc: Doc = Doc()
    doc.apply_update(update)
    change(doc)
    return doc.get_update()


def applied_update(update: bytes, *more: bytes) -> Doc:
    doc: Doc = Doc()
    for part in (update, *more):
        doc.apply_update(part)
    return doc


def roots(doc: Doc) -> Any:
    """Every root of `doc`, as `collab export --format json` writes them."""
    return json.loads(render(doc, "json"))["roots"]


def rich(doc: Doc) -> None:
    content = doc.get("content", type=Text)
    content.insert(0, "# Plan\n\nShip it. Grüße 👋\n")
    content.format(0, 6, {"bold": True})
    meta = doc.get("meta", type=Map)
    meta["owner"] = "ada"
    meta["nested"] = Map({"depth": 2, "notes": Text("inner")})
    doc.get("items", type=Array).extend(["one", 2, True, Map({"k": "v"})])
    fragment = doc.get("prosemirror", type=XmlFragment)
    paragraph = fragment.children.append(XmlElement("paragraph", {"align": "left"}))
    words = paragraph.children.append(XmlText())
    words.insert(0, "hello", {"em": True})


def rework(doc: Doc) -> None:
    content = doc.get("content", type=Text)
    content.insert(len(str(content).encode()), "Later.\n")
    del content[0:2]
    content.format(0, 4, {"italic": True})
    meta = doc.get("meta", type=Map)
    meta["owner"] = "bob"
    meta["extra"] = [1, 2]
    del meta["nested"]
    doc.get("items", type=Array).append("four")
    doc.get("prosemirror", type=XmlFragment).children.append(XmlElement("heading"))
    doc.get("later", type=Text).insert(0, "a root made after")


def test_a_restore_makes_every_root_read_as_the_version_did() -> None:
    version = edited(b"\x00\x00", rich)
    current = edited(version, rework)
    update, size = restore_update(current, version)
    check_update(update)  # what a client may send: the room takes it as one
    restored = applied_update(current, update)
    assert size == len(restored.get_update())  # what the size limit holds it to
    expected = roots(applied_update(version))
    assert roots(restored) == {**expected, "later": None}  # a root only the current document has is emptied
    assert restored.get("content", type=Text).diff() == applied_update(version).get("content", type=Text).diff()
    assert restore_update(restored.get_update(), version).update == EMPTY_UPDATE  # nothing left to do


def test_a_restore_is_one_new_client_s_change_that_keeps_concurrent_edits() -> None:
    version = edited(b"\x00\x00", lambda doc: doc.get("content", type=Text).insert(0, "alpha beta gamma delta"))

    def shout(doc: Doc) -> None:
        content = doc.get("content", type=Text)
        del content[6:10]
        content.insert(6, "BETA")

    current = edited(version, shout)
    update = restore_update(current, version).update
    before = check_state_vector(applied_update(current).get_state())
    after = check_state_vector(applied_update(current, update).get_state())
    assert len(set(after) - set(before)) == 1  # one client id, new to the document...
    assert all(after[client] == clock for client, clock in before.items())  # ... and nobody's clock moved
    assert holds(applied_update(current, update).get_state(), current)
    assert not holds(applied_update(version).get_state(), current)
    # Someone typing at both ends meanwhile, who had not seen the restore: everything stays.
    end = len("alpha BETA gamma delta")

    def around(doc: Doc) -> None:
        content = doc.get("content", type=Text)
        content.insert(end, "!")
        content.insert(0, "> ")

    merged = applied_update(edited(current, around), update)
    assert str(merged.get("content", type=Text)) == "> alpha beta gamma delta!"


def test_a_restore_refuses_what_it_cannot_bring_back() -> None:
    was_a_map = edited(b"\x00\x00", lambda doc: doc.get("x", type=Map).update({"k": 1}))

    def now_a_text(doc: Doc) -> None:
        del doc.get("x", type=Map)["k"]

    emptied = edited(was_a_map, now_a_text)
    retyped: Doc = Doc()
    retyped.apply_update(emptied)
    retyped.get("x", type=Text).insert(0, "text now")
    with pytest.raises(RestoreError, match="root 'x' is a Text now but was a Map then"):
        restore_update(retyped.get_update(), was_a_map)
    was_an_array = edited(b"\x00\x00", lambda doc: doc.get("x", type=Array).append(1))
    now_a_map: Doc = Doc()
    now_a_map.apply_update(edited(was_an_array, lambda doc: doc.get("x", type=Array).pop()))
    now_a_map.get("x", type=Map)["k"] = 1
    with pytest.raises(RestoreError, match="root 'x' is a Map now but was an Array then"):
        restore_update(now_a_map.get_update(), was_an_array)
    with_subdocument = edited(b"\x00\x00", lambda doc: doc.get("m", type=Map).update({"sub": Doc()}))
    without = edited(with_subdocument, lambda doc: doc.get("m", type=Map).pop("sub"))
    with pytest.raises(RestoreError, match="subdocument"):
        restore_update(without, with_subdocument)


def test_a_text_holding_only_embeds_is_a_text() -> None:
    """Its items are embeds, not characters (`str()` reads ""): it was taken for an array, and restoring it
    emptied it or refused."""
    image = edited(b"\x00\x00", lambda doc: doc.get("content", type=Text).insert_embed(0, {"image": "a.png"}))
    assert {name: type(root) for name, root in typed_roots(image).items()} == {"content": Text}
    two_images = edited(image, lambda doc: doc.get("content", type=Text).insert_embed(1, {"image": "b.png"}))
    captioned = edited(image, lambda doc: doc.get("content", type=Text).insert(1, "caption"))
    expected = applied_update(image).get("content", type=Text).diff()
    for current in (two_images, captioned):
        restored = applied_update(current, restore_update(current, image).update)
        assert restored.get("content", type=Text).diff() == expected == [({"image": "a.png"}, None)]


def test_restoring_many_formatting_runs_or_a_long_array_is_bounded() -> None:
    """A text whose formatting differs in 20,000 places is replaced whole (each `format` walks the text: 14 s for
    them all), and what replaces a sequence is inserted before what it replaces is deleted (each insertion at the
    start skips the deleted items there: 110 s for 40,000 chunks), backwards at the start (appending walks it)."""
    pairs = 20_000

    def alternating(doc: Doc) -> None:
        content = doc.get("content", type=Text)
        for _ in range(pairs):  # backwards at the start: the fast way (see restore.py)
            content.insert(0, "b")
            content.insert(0, "a", {"bold": True})
        items = doc.get("items", type=Array)
        for number in reversed(range(4_000)):
            items.insert(0, number)

    version = edited(b"\x00\x00", alternating)

    def flatten(doc: Doc) -> None:
        content = doc.get("content", type=Text)
        content.format(0, 2 * pairs, {"bold": None})
        del doc.get("items", type=Array)[0:2_000]  # deleted items at its start

    current = edited(version, flatten)
    started = time.perf_counter()
    update = restore_update(current, version).update
    assert time.perf_counter() - started < 5.0
    restored, expected = applied_update(current, update), applied_update(version)
    assert restored.get("content", type=Text).diff() == expected.get("content", type=Text).diff()
    assert len(restored.get("content", type=Text).diff()) == 2 * pairs
    assert list(restored.get("items", type=Array)[0:3]) == [0, 1, 2] and len(restored.get("items", type=Array)) == 4_000


# Moments and the journal.


def points(*rows: tuple[float, str]) -> list[HistoryPoint]:
    return [HistoryPoint(at, kind, 10) for at, kind in rows]  # type: ignore[arg-type]


def test_points_close_together_are_one_moment_whatever_their_kind() -> None:
    moments = group_moments(
        points(
            (1000.0, "checkpoint"),
            (1000.2, "checkpoint"),
            (1500.0, "checkpoint"),
            (1900.0, "checkpoint"),
            (1950.0, "update"),
            (5000.0, "update"),
        ),
        gap=300,
    )
    assert [(m.start, m.end, m.kind, m.changes, m.size) for m in moments] == [
        (1000.0, 1000.2, "checkpoint", 2, 20),
        (1500.0, 1500.0, "checkpoint", 1, 10),
        (1900.0, 1950.0, "edits", 2, 20),  # a compaction in the middle of a session does not cut it in two
        (5000.0, 5000.0, "edits", 1, 10),
    ]
    assert group_moments([], gap=300) == []


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_a_moment_s_time_reads_back_at_or_after_its_last_point(moment: float) -> None:
    at = time_of(moment)
    assert moment <= parse_time(format_time(at), 0.0) and at - moment < 0.002


def test_a_point_within_the_millisecond_of_the_one_before_joins_its_moment() -> None:
    moments = group_moments(points((100.0001, "update"), (100.0004, "update")), gap=0)
    assert len(moments) == 1 and moments[0].at == time_of(100.0004)  # no time would tell them apart
    assert len(group_moments(points((100.0001, "update"), (100.5, "update")), gap=0)) == 2


def test_display_names_are_read_from_awareness_states_bounded() -> None:
    def entry(client_id: int, state: Any) -> AwarenessEntry:
        return AwarenessEntry(client_id, 1, json.dumps(state))

    entries = [
        entry(1, {"user": {"name": " Ada "}}),
        entry(2, {"user": {"name": "x" * 500}}),
        entry(3, {"user": {"name": 7}}),
        entry(4, {"cursor": 3}),
        entry(5, None),
        entry(6, [1]),
        AwarenessEntry(7, 1, "not json"),
    ]
    assert display_names(entries) == {"Ada", "x" * MAX_NAME}
    many = [entry(number, {"user": {"name": f"n{number}"}}) for number in range(100)]
    assert len(display_names(many)) == MAX_NAMES


def test_the_journal_says_who_was_there_and_what_was_restored() -> None:
    journal = Journal()
    for now in (100.0, 101.0, 102.0):
        journal.present("memo", now, frozenset({"Ada"}))
    journal.present("memo", 103.0, frozenset({"Ada", "Bob"}))
    journal.present("memo", 500.0, frozenset({"Cid"}))
    assert journal.people("memo", [(100.0, 101.0), (100.0, 102.5), (400.0, 600.0), (300.0, 310.0)]) == [
        ["Ada"],
        ["Ada", "Bob"],  # a sample less than SAMPLE_EVERY away
        ["Cid"],
        [],
    ]
    assert journal.people("other", [(0, 1e12)]) == [[]]
    journal.restored("memo", 501.0, 100.5)
    assert journal.restores("memo") == [(501.0, 100.5)] and journal.restores("other") == []
    journal.renamed("memo", "notes")
    assert journal.people("notes", [(400.0, 600.0)]) == [["Cid"]] and journal.people("memo", [(0, 1e12)]) == [[]]
    assert journal.restores("notes") == [(501.0, 100.5)]
    journal.forget("notes")
    assert journal.restores("notes") == []


def test_the_journal_forgets_the_least_recently_edited_documents_first() -> None:
    journal = Journal(max_bytes=10_000)
    for number in range(200):
        journal.present(f"doc{number}", 1000.0 + number * 100, frozenset({f"person {number}"}))
    assert journal.people("doc199", [(0, 1e12)]) == [["person 199"]]
    assert journal.people("doc0", [(0, 1e12)]) == [[]]  # forgotten to stay within its bytes


def test_history_json_lists_the_newest_moments_first_with_people_and_restores() -> None:
    journal = Journal()
    journal.present("memo", 1000.0, frozenset({"Ada"}))
    journal.restored("memo", 5000.0, 1000.0)
    rows = points((1000.0, "checkpoint"), (3000.0, "update"), (5000.05, "update"))
    listed, truncated = listed_moments(rows, journal.restores("memo"), gap=300, limit=2)
    answer = history_json("memo", listed, truncated, journal)
    assert answer["name"] == "memo" and answer["truncated"] is True
    assert [(moment["at"], moment["restore_of"], moment["people"]) for moment in answer["moments"]] == [
        (format_time(5000.05), format_time(1000.0), []),
        (format_time(3000.0), None, []),
    ]
    older, truncated = listed_moments(
        rows, journal.restores("memo"), gap=300, limit=2, before=parse_time(answer["moments"][-1]["at"], 0)
    )
    assert [moment.start for moment in older] == [1000.0] and truncated is False  # the page before
    whole = history_json("memo", *listed_moments(points((1000.0, "checkpoint")), []), journal)
    assert whole["moments"] == [
        {
            "at": format_time(1000.0),
            "at_unix": 1000.0,
            "from": format_time(1000.0),
            "kind": "checkpoint",
            "changes": 1,
            "bytes": 10,
            "people": ["Ada"],
            "restore_of": None,
        }
    ]


def test_a_restore_starts_a_moment_of_its_own() -> None:
    """However close the edits before it are: otherwise the moment before it could not be restored again."""
    rows = points((500.0, "update"), (1000.0, "update"), (1100.0, "update"), (1150.01, "update"), (1160.0, "update"))
    restores = [(1150.0, 500.0)]  # made at 1150.0; its row stamped a moment later
    grouped = group_moments(rows, 300, restores)
    assert [(moment.start, moment.end, moment.restore_of) for moment in grouped] == [
        (500.0, 500.0, None),
        (1000.0, 1100.0, None),  # its `at` reads the document as it was before the restore
        (1150.01, 1160.0, 500.0),  # the restore's, with the edits after it
    ]
    assert grouped[1].at == time_of(1100.0)
    assert [moment.restore_of for moment in group_moments(rows, 1e9, restores)] == [None, 500.0]
    twice = group_moments(rows, 1e9, [(1050.0, 500.0), (1140.0, 1000.0)])
    assert [(moment.start, moment.restore_of) for moment in twice] == [
        (500.0, None),
        (1100.0, 500.0),
        (1150.01, 1000.0),
    ]


def test_a_long_history_is_grouped_with_one_time_per_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formatting and parsing each point's time took 0.5 s for 100,000 points, on the event loop."""
    rows = [HistoryPoint(1.7e9 + number * 0.5, "update", 100) for number in range(100_000)]
    calls = [0]

    def counted(moment: float) -> float:
        calls[0] += 1
        return time_of(moment)

    monkeypatch.setattr(moments_module, "time_of", counted)
    started = time.perf_counter()
    grouped = group_moments(rows, 300)
    assert time.perf_counter() - started < 1.0
    assert len(grouped) == 1 and calls[0] == 1
    journal = Journal()
    for number in range(2_000):
        journal.present("memo", 1.7e9 + number * 30, frozenset({f"p{number % 50}", "x"}))
    started = time.perf_counter()
    listed, truncated = listed_moments(rows, gap=0, limit=MAX_LIMIT)
    answer = history_json("memo", listed, truncated, journal)
    assert time.perf_counter() - started < 2.0
    assert len(answer["moments"]) == MAX_LIMIT and truncated and calls[0] <= 1 + 100_000
    sampled = answer["moments"][39]  # the point 1,666 samples in: 99,960 x 0.5 s = 1,666 x 30 s
    assert sampled["from"] == format_time(1.7e9 + 1666 * 30) and sampled["people"] == ["p16", "x"]


async def test_a_room_takes_its_own_update_as_a_client_s_and_samples_who_is_there(memory_store: MemoryStore) -> None:
    journal = Journal()
    room = Room("memo", memory_store, journal=journal)
    ada, bob = FramePeer("ada"), FramePeer("bob")
    for peer in (ada, bob):
        room.join(peer)
    room.receive(ada, [Awareness((AwarenessEntry(7, 1, json.dumps({"user": {"name": "Ada"}})),))])
    ada.take(), bob.take()
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, "hello")
    update = doc.get_update()
    room.accept_own_update(update, len(update))
    assert ada.take() == bob.take() == [Update(update)]  # the sender is nobody: every peer gets it
    await memory_store.flush()
    stored = applied_update(*(record.data for record in await memory_store.load("memo")))
    assert str(stored.get("content", type=Text)) == "hello"
    assert journal.people("memo", [(time.time() - 5, time.time())]) == [["Ada"]]
    with pytest.raises(InvalidUpdateError):
        room.accept_own_update(b"\x01", 10)


async def test_the_size_limit_holds_a_room_s_own_update_to_the_size_it_leaves(memory_store: MemoryStore) -> None:
    """A restore that shrinks a document is a long update (what it inserts) making a smaller document."""
    room = Room("memo", memory_store, max_document_size=1_000)
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, "x" * 900)
    update = doc.get_update()
    room.accept_own_update(update, len(update))
    shrinking = edited(update, lambda doc: doc.get("content", type=Text).__delitem__(slice(0, 850)))
    room.accept_own_update(shrinking, 200)  # 900 + its length is past the limit; what it leaves is not
    with pytest.raises(DocumentTooLargeError, match="1001 bytes, more than the limit of 1000"):
        room.accept_own_update(edited(shrinking, lambda doc: doc.get("content", type=Text).insert(0, "y")), 1_001)
    assert str(room.doc.get("content", type=Text)) == "x" * 50


# Restores racing deletes, renames and each other (the rooms, no server).


async def stored_versions(store: MemoryStore, name: str, *versions: str) -> list[float]:
    """Store `versions` of `name` in turn; a time that reads each back, oldest first."""
    doc: Doc = Doc()
    made: list[bytes] = []
    doc.observe(lambda event: made.append(event.update))
    times = []
    for version in versions:
        with doc.transaction():
            edit_text(doc.get("content", type=Text), version)
        store.append(name, made.pop())
        await store.flush()
        times.append(time.time())
        await asyncio.sleep(0.02)
    return times


def stored_content(records: list[Any]) -> str:
    return str(applied_update(*(record.data for record in records)).get("content", type=Text))


@pytest.mark.parametrize("change", ["delete", "rename"])
async def test_a_restore_that_reads_its_version_of_a_document_then_deleted_or_renamed_refuses(
    memory_store: MemoryStore, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The version read, the document deleted or renamed, then its room loaded (empty): the restore would have
    inserted the whole version into it, bringing a deleted document back or copying a renamed one."""
    first, _ = await stored_versions(memory_store, "memo", "old secret", "old secret v2")
    rooms = Rooms(memory_store)
    load = memory_store.load

    async def load_then_change(name: str, at: float | None = None) -> list[Any]:
        records = await load(name, at)
        if at is not None:  # the restore read its version: the document goes before its room is loaded
            await (rooms.delete(name) if change == "delete" else rooms.rename(name, "moved"))
        return records

    monkeypatch.setattr(memory_store, "load", load_then_change)
    with pytest.raises(RestoreError, match=r"the document changed while restoring \(deleted or renamed\): try again"):
        await rooms.restore("memo", first)
    await rooms.close()
    assert [info.name for info in await memory_store.documents()] == ([] if change == "delete" else ["moved"])
    if change == "rename":
        assert stored_content(await load("moved")) == "old secret v2"


def restore_threads() -> set[int]:
    """The threads restores are worked out in (a new one starts with a server's first restore)."""
    return {thread.ident or 0 for thread in threading.enumerate() if thread.name.startswith("collab-restore")}


async def slow_document(rooms: Rooms, name: str) -> float:
    """Store document `name` ("alpha", then "omega") with 8 MB beside its text, so that working out a restore
    takes a while; the time that reads "alpha"."""
    doc: Doc = Doc()
    made: list[bytes] = []
    doc.observe(lambda event: made.append(event.update))
    with doc.transaction():
        doc.get("padding", type=Map)["bytes"] = "p" * 8_000_000
        doc.get("content", type=Text).insert(0, "alpha")
    rooms.store.append(name, made.pop())
    await rooms.store.flush()
    alpha = time.time()
    await asyncio.sleep(0.02)
    content = doc.get("content", type=Text)
    with doc.transaction():
        del content[:]
        content.insert(0, "omega")
    rooms.store.append(name, made.pop())
    await rooms.store.flush()
    return alpha


async def test_restores_are_worked_out_on_threads_of_their_own_and_refused_when_all_are_busy(
    memory_store: MemoryStore,
) -> None:
    rooms = Rooms(memory_store)
    times = [await slow_document(rooms, f"doc{number}") for number in range(3)]
    results = await asyncio.gather(
        *(rooms.restore(f"doc{number}", at) for number, at in enumerate(times)), return_exceptions=True
    )
    refused = [result for result in results if isinstance(result, ServerBusyError)]
    assert len(refused) == 1 and "restores busy" in str(refused[0])
    assert [result for result in results if result is not None and result not in refused] == []
    await rooms.close()


async def test_a_document_deleted_while_its_restore_is_worked_out_is_not_brought_back(
    memory_store: MemoryStore,
) -> None:
    rooms = Rooms(memory_store)
    alpha = await slow_document(rooms, "memo")
    threads = restore_threads()
    restoring = asyncio.create_task(rooms.restore("memo", alpha))
    await wait_for(lambda: restore_threads() - threads != set())  # its change is being worked out now
    await rooms.delete("memo")
    assert not restoring.done()
    with pytest.raises(RestoreError, match="changed while restoring"):
        await restoring
    await rooms.close()
    assert await memory_store.documents() == []


def test_the_journal_follows_deletes_and_renames_other_processes_made(memory_store: MemoryStore) -> None:
    """The relay tells the rooms (`Listener.ended`); what was seen of a document went on under its old name."""
    rooms = Rooms(memory_store)
    rooms.journal.present("memo", 100.0, frozenset({"Ada"}))
    rooms.journal.restored("memo", 101.0, 50.0)
    rooms.ended("memo", DOCUMENT_RENAMED, "renamed to notes/plan")
    assert rooms.journal.people("notes/plan", [(0, 1e12)]) == [["Ada"]]
    assert rooms.journal.restores("notes/plan") == [(101.0, 50.0)] and rooms.journal.restores("memo") == []
    rooms.ended("notes/plan", DOCUMENT_DELETED, "document deleted")
    assert rooms.journal.people("notes/plan", [(0, 1e12)]) == [[]]
    rooms.journal.present("long", 100.0, frozenset({"Bob"}))
    rooms.ended("long", DOCUMENT_RENAMED, "renamed")  # a name too long for a close reason: none given
    assert rooms.journal.people("long", [(0, 1e12)]) == [[]]


async def test_a_rename_s_close_reason_names_the_new_name_only_whole(memory_store: MemoryStore) -> None:
    """A close reason holds 123 bytes, and the relay refuses a longer one: a name that does not fit is left out,
    not cut (the web editor would follow a cut one to a document that does not exist)."""
    rooms = Rooms(memory_store)
    for new in ("short", "n" * 255):
        peer = FramePeer("ada")
        room = await rooms.join("old", peer)
        room.accept_own_update(update_of("text"), 100)
        await rooms.rename("old", new)
        assert peer.closed == (DOCUMENT_RENAMED, "renamed to short" if new == "short" else "renamed")
        await rooms.rename(new, "old")
    await rooms.close()


def update_of(typed: str) -> bytes:
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, typed)
    return doc.get_update()


# The HTTP API.


async def restore(server: CollabServer, name: str, at: str, bearer: str | None = None) -> Reply:
    return await call(
        server, "POST", f"/api/docs/{quote(name, safe='')}/restore?at={quote(at, safe='')}", bearer=bearer
    )


GAP = "250ms"
"""Moments of these tests: bursts of typing a few hundred ms apart."""
PAUSE = 0.6


async def moments(
    server: CollabServer, name: str, bearer: str | None = None, gap: str | None = GAP
) -> list[dict[str, Any]]:
    """The moments `GET /api/history/<name>` lists, grouped by `gap` (None: the default)."""
    query = "" if gap is None else f"?gap={gap}"
    reply = await get(server, f"/api/history/{quote(name, safe='')}{query}", bearer=bearer)
    assert reply.status == 200, reply
    found: list[dict[str, Any]] = reply.json()["moments"]
    return found


async def text_at(server: CollabServer, name: str, at: str) -> str:
    reply = await get(server, f"/api/docs/{quote(name, safe='')}?format=txt&at={quote(at, safe='')}")
    assert reply.status == 200, reply
    return reply.body.decode()


async def typed(server: CollabServer, db: str | Path, name: str, *versions: str) -> None:
    """Type each of `versions` in turn (the text becomes it) as "Ada", a pause between: a moment each."""
    async with synced(room_url(server, name)) as ada:
        ada.set_awareness({"user": {"name": "Ada", "color": "#f00"}})
        await ada.wait_until(lambda: ada.client_id in ada.awareness)
        for version in versions:
            with ada.doc.transaction():
                edit_text(text(ada), version)
            await wait_stored(db, name, version)
            await asyncio.sleep(PAUSE)


async def test_a_restore_is_seen_live_and_listed_in_history(database: str) -> None:
    async with servers_on(database) as start:
        server = await start()
        await typed(server, database, "notes/plan", "first draft", "first draft, longer", "rewritten entirely")
        listed = await moments(server, "notes/plan")
        assert [moment["kind"] for moment in listed] == ["edits"] * 3
        assert [await text_at(server, "notes/plan", moment["at"]) for moment in listed] == [
            "rewritten entirely",
            "first draft, longer",
            "first draft",
        ]  # each moment's `at` reads the document as of it, and not as of the next
        assert all(moment["people"] == ["Ada"] and moment["restore_of"] is None for moment in listed)
        oldest = listed[-1]
        await asyncio.sleep(SAMPLE_EVERY)  # what the journal saw of Ada is out of the restore's reach
        async with synced(room_url(server, "notes/plan")) as bob, synced(room_url(server, "notes/plan")) as cid:
            bob.set_awareness({"user": {"name": "Bob"}})
            await bob.wait_until(lambda: bob.client_id in bob.awareness)
            reply = await restore(server, "notes/plan", oldest["at"])
            assert (reply.status, reply.json()) == (200, {"restored": "notes/plan", "at": oldest["at"]})
            await bob.wait_until(lambda: str(text(bob)) == "first draft", timeout=5)
            await cid.wait_until(lambda: str(text(cid)) == "first draft", timeout=5)
        await wait_stored(database, "notes/plan", "first draft")
        newest = (await moments(server, "notes/plan"))[0]
        assert newest["restore_of"] == oldest["at"] and newest["people"] == ["Bob"]
        assert newest["kind"] == "edits" and newest["changes"] >= 1 and newest["bytes"] > 0


async def test_a_restore_of_a_restore_at_the_default_gap_and_of_a_document_not_loaded(
    start_server: StartServer, db_path: Path
) -> None:
    """At the default gap (5 minutes) all the typing is one moment, and the restore right after it another:
    restoring that one brings back what the restore replaced."""
    server = await start_server(unload_after=0.05)
    await typed(server, db_path, "memo", "one", "one two", "one two three")
    await wait_for(lambda: "memo" not in server.rooms, timeout=60)  # unloaded: its rows are checkpoints now
    listed = await moments(server, "memo")
    assert [moment["kind"] for moment in listed] == ["checkpoint"] * 3
    assert [moment["kind"] for moment in await moments(server, "memo", gap=None)] == ["checkpoint"]  # one moment
    assert (await restore(server, "memo", listed[2]["at"])).status == 200  # loaded for it, unloaded after
    assert stored_text(db_path, "memo") == "one"
    after_first = await moments(server, "memo", gap=None)
    assert len(after_first) == 2 and after_first[0]["restore_of"] == listed[2]["at"]
    before_the_restore = after_first[1]
    assert await text_at(server, "memo", before_the_restore["at"]) == "one two three"
    async with synced(room_url(server, "memo")) as ada:
        assert (await restore(server, "memo", before_the_restore["at"])).status == 200  # the restore undone
        await ada.wait_until(lambda: str(text(ada)) == "one two three", timeout=5)
    await wait_stored(db_path, "memo", "one two three")
    newest = await moments(server, "memo", gap=None)
    assert [moment["restore_of"] for moment in newest] == [before_the_restore["at"], listed[2]["at"], None]
    assert (await restore(server, "memo", newest[0]["at"])).status == 200  # to what it reads now: nothing changes
    assert stored_text(db_path, "memo") == "one two three"
    assert len(await moments(server, "memo", gap=None)) == 3


async def test_a_client_with_offline_edits_merges_with_a_restore(server: CollabServer, db_path: Path) -> None:
    await typed(server, db_path, "trip", "Day 1: museum.\n", "Day 1: museum.\nDay 2: beach, boat.\n")
    first = (await moments(server, "trip"))[-1]
    doc: Doc = Doc()
    async with synced(room_url(server, "trip"), doc) as laptop:
        assert str(text(laptop)) == "Day 1: museum.\nDay 2: beach, boat.\n"
    # Offline now: the laptop adds a line at the top, which the server does not know of.
    doc.get("content", type=Text).insert(0, "Packing list!\n")
    assert (await restore(server, "trip", first["at"])).status == 200
    await wait_stored(db_path, "trip", "Day 1: museum.\n")
    async with synced(room_url(server, "trip"), doc) as laptop:  # back online: the two merge
        await laptop.resync()
        assert str(text(laptop)) == "Packing list!\nDay 1: museum.\n"
        async with synced(room_url(server, "trip")) as phone:
            assert str(text(phone)) == "Packing list!\nDay 1: museum.\n"


async def test_restoring_every_kind_of_root_through_the_server(server: CollabServer, db_path: Path) -> None:
    async with synced(room_url(server, "rich")) as writer:
        with writer.doc.transaction():
            rich(writer.doc)
        await writer.resync()
        expected = roots(writer.doc)
        await asyncio.sleep(PAUSE)
        with writer.doc.transaction():
            rework(writer.doc)
        await writer.resync()
        await server.store.flush()
        first = (await moments(server, "rich"))[-1]
        assert (await restore(server, "rich", first["at"])).status == 200
        await writer.wait_until(lambda: roots(writer.doc) == {**expected, "later": None}, timeout=5)


async def test_restores_asked_for_at_once_take_turns(server: CollabServer, db_path: Path) -> None:
    """Each worked out from the same state would insert the version again: the text four times over."""
    original = "the original text " * 3000
    await typed(server, db_path, "memo", original, "completely different words")
    at = (await moments(server, "memo"))[-1]["at"]
    async with synced(room_url(server, "memo")) as ada:
        replies = await asyncio.gather(*(restore(server, "memo", at) for _ in range(4)))
        assert [reply.status for reply in replies] == [200] * 4, replies
        await ada.wait_until(lambda: str(text(ada)) == original, timeout=5)
    await wait_stored(db_path, "memo", original)


async def test_a_restore_worked_out_while_the_document_changed_is_worked_out_again(
    server: CollabServer, db_path: Path
) -> None:
    """Here another restore to the same version (as another process's would be) comes while this one is being
    worked out: applied as it was, it would insert the version a second time."""
    async with synced(room_url(server, "memo")) as ada:
        with ada.doc.transaction():
            ada.doc.get("padding", type=Map)["bytes"] = "p" * 8_000_000  # working out a restore takes a while
            text(ada).insert(0, "alpha")
        await wait_stored(db_path, "memo", "alpha")
        version = ada.doc.get_update()
        alpha = format_time(time.time())
        await asyncio.sleep(PAUSE)
        with ada.doc.transaction():
            edit_text(text(ada), "omega")
        await wait_stored(db_path, "memo", "omega")
        other = restore_update(ada.doc.get_update(), version).update  # the other restore
        threads = restore_threads()
        restoring = asyncio.create_task(restore(server, "memo", alpha))
        await wait_for(lambda: restore_threads() - threads != set())  # this one is being worked out now
        ada.doc.apply_update(other)
        room = server.rooms.get("memo")
        assert room is not None
        await wait_for(lambda: str(room.doc.get("content", type=Text)) == "alpha")
        assert not restoring.done()  # it came while this one was worked out
        assert (await restoring).status == 200
        await ada.resync()
        assert str(text(ada)) == "alpha"
    await wait_stored(db_path, "memo", "alpha")


async def test_a_restore_is_held_to_the_size_it_leaves_the_document_at(
    start_server: StartServer, db_path: Path
) -> None:
    """A restore that shrinks a document inserts much, which counted against the limit: refused with 413."""
    server = await start_server()
    await typed(server, db_path, "memo", "x" * 30_000, "y" * 15_000, "z" * 2_000)
    big, middle, small = [moment["at"] for moment in reversed(await moments(server, "memo"))]
    await server.stop()
    limited = await start_server(max_document_size=20_000)
    assert (await restore(limited, "memo", middle)).status == 200  # 2,000 + 15,000 inserted is past 20,000
    assert stored_text(db_path, "memo") == "y" * 15_000
    reply = await restore(limited, "memo", big)
    assert reply.status == 409 and "more than the limit of 20000 bytes" in reply.json()["error"]
    assert stored_text(db_path, "memo") == "y" * 15_000
    assert (await restore(limited, "memo", small)).status == 200


async def test_a_restore_whose_own_change_does_not_apply_is_a_server_error(
    server: CollabServer, db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the request's fault (400, as a client's bad update earns): the server's, logged."""
    await typed(server, db_path, "memo", "one", "two")
    at = (await moments(server, "memo"))[-1]["at"]
    monkeypatch.setattr(rooms_module, "restore_update", lambda *_: Restore(b"\x01", 10))  # a bug, made up
    reply = await restore(server, "memo", at)
    assert (reply.status, reply.json()) == (500, {"error": "internal error (the server logged it)"})
    assert "the restore's own change does not apply" in caplog.text
    assert stored_text(db_path, "memo") == "two"


async def test_history_and_restore_agree_on_a_document_nothing_is_stored_for_yet(server: CollabServer) -> None:
    async with synced(room_url(server, "fresh")):
        assert (await get(server, "/api/history/fresh")).json() == {"name": "fresh", "moments": [], "truncated": False}
        reply = await restore(server, "fresh", "1s")
        assert reply.status == 404 and reply.json()["error"].startswith("document 'fresh' did not exist yet at")
    assert (await restore(server, "never", "1s")).json() == {"error": "no document named 'never'"}


async def test_history_pages_back_with_before(
    server: CollabServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "HISTORY_IN_THREAD", 1)  # grouped in a thread, as a long history is
    await typed(server, db_path, "memo", "one", "one two", "one two three")
    every = await moments(server, "memo")
    assert len(every) == 3
    path = f"/api/history/memo?gap={GAP}&limit=1"
    pages: list[list[dict[str, Any]]] = []
    for _ in range(4):
        answer = (await get(server, path + (f"&before={quote(pages[-1][-1]['at'])}" if pages else ""))).json()
        pages.append(answer["moments"])
        if not answer["truncated"]:
            break
    assert [page[0] for page in pages] == every
    assert (await get(server, f"{path}&before=soon")).status == 400


async def test_restore_and_history_refusals(start_server: StartServer, db_path: Path) -> None:
    server = await start_server(auth_secret=SECRET)
    writer = token("team/", Permission.WRITE)
    async with synced(with_token(room_url(server, "team/a"), writer)) as ada:
        text(ada).insert(0, "v1")
        await wait_stored(db_path, "team/a", "v1")
        await asyncio.sleep(PAUSE)
        text(ada).insert(2, " v2")
        await wait_stored(db_path, "team/a", "v1 v2")
    reader = token("team/", Permission.READ)
    listed = await moments(server, "team/a", reader)  # reading history needs only read access
    at = listed[-1]["at"]
    assert (await restore(server, "team/a", at)).status == 401
    assert (await restore(server, "team/a", at, reader)).status == 403
    assert (await restore(server, "team/a", at, token("team/b"))).status == 403
    assert (await get(server, "/api/history/team%2Fa")).status == 401
    assert (await get(server, "/api/history/team%2Fa", bearer=token("other"))).status == 403
    for path in ("/api/history/team%2Fa?limit=0", "/api/history/team%2Fa?limit=1001", "/api/history/team%2Fa?gap=x"):
        assert (await get(server, path, bearer=reader)).status == 400, path
    long = await get(server, "/api/history/team%2Fa?limit=" + "1" * 5_000, bearer=reader)
    assert long.status == 400 and long.json()["error"].startswith("limit must be a whole number from 1 to 1000")
    assert (await get(server, "/api/history/team%2Fnone", bearer=reader)).status == 404
    assert (await get(server, f"/api/history/team%2Fa?limit=1&gap={GAP}", bearer=reader)).json()["truncated"] is True
    reply = await restore(server, "team/nothing", at, writer)
    assert (reply.status, reply.json()) == (404, {"error": "no document named 'team/nothing'"})
    reply = await restore(server, "team/a", "yesterday", writer)
    assert reply.status == 400 and "not a time: 'yesterday'" in reply.json()["error"]
    reply = await restore(server, "team/a", "9999-12-31T23:59:59-12:00", writer)  # past what can be written: was 500
    assert reply.status == 400 and "after the year 9999" in reply.json()["error"]
    reply = await restore(server, "team/a", "2999-01-01T00:00:00Z", writer)
    assert reply.status == 400 and reply.json()["error"].startswith("2999-01-01T00:00:00Z is in the future")
    assert (await call(server, "POST", "/api/docs/team%2Fa/restore", bearer=writer)).status == 400  # no time
    assert (await call(server, "POST", "/api/docs/team%2Fa/archive?at=1h", bearer=writer)).status == 400
    reply = await call(server, "POST", "/api/docs//restore?at=1h", bearer=writer)
    assert reply.status == 400 and reply.json()["error"].startswith("no document name: /api/docs/NAME")
    reply = await restore(server, "team/a", "1h", writer)
    assert reply.status == 404 and "did not exist yet at" in reply.json()["error"]
    assert stored_text(db_path, "team/a") == "v1 v2"  # nothing refused changed anything
    assert (await restore(server, "team/a", at, writer)).status == 200
    assert stored_text(db_path, "team/a") == "v1"


async def test_a_time_no_history_is_kept_for(start_server: StartServer, db_path: Path) -> None:
    server = await start_server(history_recent=0.0, history_hourly=0.0, history_daily=0.0, unload_after=0.05)
    await typed(server, db_path, "brief", "early", "late")
    await wait_for(lambda: "brief" not in server.rooms, timeout=60)  # compacted without history
    assert await moments(server, "brief") == []
    async with synced(room_url(server, "brief")) as ada:
        reply = await restore(server, "brief", format_time(time.time() - PAUSE - 0.2))
        assert reply.status == 404 and "no history is kept" in reply.json()["error"]
        assert str(text(ada)) == "late"
