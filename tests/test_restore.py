"""History and restore: the text diff, the restore change, moments and the journal (no server), then the HTTP API
(`GET /api/history/<name>`, `POST /api/docs/<name>/restore?at=`) on real servers, seen by stock-protocol clients.
The command line's side is tests/test_cli_restore.py."""

from __future__ import annotations

import asyncio
import http.client
import json
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
from collab.errors import InvalidUpdateError, RestoreError
from collab.formats import render
from collab.server.app import CollabServer
from collab.store import HistoryPoint
from collab.store.memory import MemoryStore
from collab.sync.journal import MAX_NAME, MAX_NAMES, SAMPLE_EVERY, Journal, display_names
from collab.sync.moments import group_moments, history_json, time_of
from collab.sync.protocol import Awareness, AwarenessEntry, Update
from collab.sync.restore import holds, restore_update
from collab.sync.room import EMPTY_UPDATE, Room, check_update
from collab.sync.textdiff import CHARACTER_PAIRS, LINE_WORK, Edit, edit_text, text_edits
from collab.sync.yupdate import check_state_vector
from collab.units import format_time, parse_time

from .helpers import (
    SECRET,
    FramePeer,
    StartServer,
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
    assert len(block) * 50 > LINE_WORK  # each line 50 times
    started = time.perf_counter()
    edits = text_edits(old, new)
    assert time.perf_counter() - started < 2.0
    assert edits == [Edit(0, len(old), new)]


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
    update = restore_update(current, version)
    check_update(update)  # what a client may send: the room takes it as one
    restored = applied_update(current, update)
    expected = roots(applied_update(version))
    assert roots(restored) == {**expected, "later": None}  # a root only the current document has is emptied
    assert restored.get("content", type=Text).diff() == applied_update(version).get("content", type=Text).diff()
    assert restore_update(restored.get_update(), version) == EMPTY_UPDATE  # nothing left to do


def test_a_restore_is_one_new_client_s_change_that_keeps_concurrent_edits() -> None:
    version = edited(b"\x00\x00", lambda doc: doc.get("content", type=Text).insert(0, "alpha beta gamma delta"))

    def shout(doc: Doc) -> None:
        content = doc.get("content", type=Text)
        del content[6:10]
        content.insert(6, "BETA")

    current = edited(version, shout)
    update = restore_update(current, version)
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
    with_subdocument = edited(b"\x00\x00", lambda doc: doc.get("m", type=Map).update({"sub": Doc()}))
    without = edited(with_subdocument, lambda doc: doc.get("m", type=Map).pop("sub"))
    with pytest.raises(RestoreError, match="subdocument"):
        restore_update(without, with_subdocument)


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
    assert journal.people("memo", 100.0, 101.0) == ["Ada"]
    assert journal.people("memo", 100.0, 102.5) == ["Ada", "Bob"]  # a sample less than SAMPLE_EVERY away
    assert journal.people("memo", 400.0, 600.0) == ["Cid"]
    assert journal.people("memo", 300.0, 310.0) == [] and journal.people("other", 0, 1e12) == []
    journal.restored("memo", 501.0, 100.5)
    assert journal.restore_of("memo", 500.0, 502.0) == 100.5 and journal.restore_of("memo", 0, 400) is None
    journal.renamed("memo", "notes")
    assert journal.people("notes", 400.0, 600.0) == ["Cid"] and journal.people("memo", 0, 1e12) == []
    journal.forget("notes")
    assert journal.restore_of("notes", 0, 1e12) is None


def test_the_journal_forgets_the_least_recently_edited_documents_first() -> None:
    journal = Journal(max_bytes=10_000)
    for number in range(200):
        journal.present(f"doc{number}", 1000.0 + number * 100, frozenset({f"person {number}"}))
    assert journal.people("doc199", 0, 1e12) == ["person 199"]
    assert journal.people("doc0", 0, 1e12) == []  # forgotten to stay within its bytes


def test_history_json_lists_the_newest_moments_first_with_people_and_restores() -> None:
    journal = Journal()
    journal.present("memo", 1000.0, frozenset({"Ada"}))
    journal.restored("memo", 5000.0, 1000.0)
    listed = history_json(
        "memo", points((1000.0, "checkpoint"), (3000.0, "update"), (5000.05, "update")), journal, gap=300, limit=2
    )
    assert listed["name"] == "memo" and listed["truncated"] is True
    assert [(moment["at"], moment["restore_of"], moment["people"]) for moment in listed["moments"]] == [
        (format_time(5000.05), format_time(1000.0), []),
        (format_time(3000.0), None, []),
    ]
    whole = history_json("memo", points((1000.0, "checkpoint")), journal)
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
    room.accept_own_update(update)
    assert ada.take() == bob.take() == [Update(update)]  # the sender is nobody: every peer gets it
    await memory_store.flush()
    stored = applied_update(*(record.data for record in await memory_store.load("memo")))
    assert str(stored.get("content", type=Text)) == "hello"
    assert journal.people("memo", time.time() - 5, time.time()) == ["Ada"]
    with pytest.raises(InvalidUpdateError):
        room.accept_own_update(b"\x01")


# The HTTP API.


def send(port: int, method: str, path: str, bearer: str | None = None) -> tuple[int, Any]:
    """`method` on `path` with no body; the status and the JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers={"Authorization": f"Bearer {bearer}"} if bearer else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


async def call(server: CollabServer, method: str, path: str, bearer: str | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(send, server.port, method, path, bearer)


async def restore(server: CollabServer, name: str, at: str, bearer: str | None = None) -> tuple[int, Any]:
    return await call(server, "POST", f"/api/docs/{quote(name, safe='')}/restore?at={quote(at, safe='')}", bearer)


GAP = "250ms"
"""Moments of these tests: bursts of typing a few hundred ms apart."""
PAUSE = 0.6


async def moments(server: CollabServer, name: str, bearer: str | None = None) -> list[dict[str, Any]]:
    status, answer = await call(server, "GET", f"/api/history/{quote(name, safe='')}?gap={GAP}", bearer)
    assert status == 200, answer
    found: list[dict[str, Any]] = answer["moments"]
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
            status, answer = await restore(server, "notes/plan", oldest["at"])
            assert (status, answer) == (200, {"restored": "notes/plan", "at": oldest["at"]})
            await bob.wait_until(lambda: str(text(bob)) == "first draft", timeout=5)
            await cid.wait_until(lambda: str(text(cid)) == "first draft", timeout=5)
        await wait_stored(database, "notes/plan", "first draft")
        newest = (await moments(server, "notes/plan"))[0]
        assert newest["restore_of"] == oldest["at"] and newest["people"] == ["Bob"]
        assert newest["kind"] == "edits" and newest["changes"] >= 1 and newest["bytes"] > 0


async def test_a_restore_of_a_restore_and_of_a_document_not_loaded(start_server: StartServer, db_path: Path) -> None:
    server = await start_server(unload_after=0.05)
    await typed(server, db_path, "memo", "one", "one two", "one two three")
    await wait_for(lambda: "memo" not in server.rooms, timeout=60)  # unloaded: its rows are checkpoints now
    listed = await moments(server, "memo")
    assert [moment["kind"] for moment in listed] == ["checkpoint"] * 3
    assert (await restore(server, "memo", listed[2]["at"]))[0] == 200  # loaded for it, unloaded after
    assert stored_text(db_path, "memo") == "one"
    await asyncio.sleep(PAUSE)
    after_first = await moments(server, "memo")
    assert after_first[0]["restore_of"] == listed[2]["at"]
    before_the_restore = after_first[1]
    assert await text_at(server, "memo", before_the_restore["at"]) == "one two three"
    async with synced(room_url(server, "memo")) as ada:
        assert (await restore(server, "memo", before_the_restore["at"]))[0] == 200  # the restore undone
        await ada.wait_until(lambda: str(text(ada)) == "one two three", timeout=5)
    await wait_stored(db_path, "memo", "one two three")
    newest = (await moments(server, "memo"))[0]
    assert newest["restore_of"] == before_the_restore["at"]
    assert (await restore(server, "memo", newest["at"]))[0] == 200  # to what it reads now: nothing changes
    assert stored_text(db_path, "memo") == "one two three"


async def test_a_client_with_offline_edits_merges_with_a_restore(server: CollabServer, db_path: Path) -> None:
    await typed(server, db_path, "trip", "Day 1: museum.\n", "Day 1: museum.\nDay 2: beach, boat.\n")
    first = (await moments(server, "trip"))[-1]
    doc: Doc = Doc()
    async with synced(room_url(server, "trip"), doc) as laptop:
        assert str(text(laptop)) == "Day 1: museum.\nDay 2: beach, boat.\n"
    # Offline now: the laptop adds a line at the top, which the server does not know of.
    doc.get("content", type=Text).insert(0, "Packing list!\n")
    assert (await restore(server, "trip", first["at"]))[0] == 200
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
        assert (await restore(server, "rich", first["at"]))[0] == 200
        await writer.wait_until(lambda: roots(writer.doc) == {**expected, "later": None}, timeout=5)


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
    assert (await restore(server, "team/a", at))[0] == 401
    assert (await restore(server, "team/a", at, reader))[0] == 403
    assert (await restore(server, "team/a", at, token("team/b")))[0] == 403
    assert (await call(server, "GET", "/api/history/team%2Fa"))[0] == 401
    assert (await call(server, "GET", "/api/history/team%2Fa", token("other")))[0] == 403
    for path in ("/api/history/team%2Fa?limit=0", "/api/history/team%2Fa?limit=1001", "/api/history/team%2Fa?gap=x"):
        assert (await call(server, "GET", path, reader))[0] == 400, path
    assert (await call(server, "GET", "/api/history/team%2Fnone", reader))[0] == 404
    assert (await call(server, "GET", f"/api/history/team%2Fa?limit=1&gap={GAP}", reader))[1]["truncated"] is True
    status, answer = await restore(server, "team/nothing", at, writer)
    assert (status, answer) == (404, {"error": "no document named 'team/nothing'"})
    status, answer = await restore(server, "team/a", "yesterday", writer)
    assert status == 400 and "not a time: 'yesterday'" in answer["error"]
    assert (await call(server, "POST", "/api/docs/team%2Fa/restore", writer))[0] == 400  # no time
    assert (await call(server, "POST", "/api/docs/team%2Fa/archive?at=1h", writer))[0] == 400  # no such change
    status, answer = await restore(server, "team/a", "1h", writer)
    assert status == 404 and "did not exist yet at" in answer["error"]
    assert stored_text(db_path, "team/a") == "v1 v2"  # nothing refused changed anything
    assert (await restore(server, "team/a", at, writer))[0] == 200
    assert stored_text(db_path, "team/a") == "v1"


async def test_a_time_no_history_is_kept_for(start_server: StartServer, db_path: Path) -> None:
    server = await start_server(history_recent=0.0, history_hourly=0.0, history_daily=0.0, unload_after=0.05)
    await typed(server, db_path, "brief", "early", "late")
    await wait_for(lambda: "brief" not in server.rooms, timeout=60)  # compacted without history
    assert await moments(server, "brief") == []
    async with synced(room_url(server, "brief")) as ada:
        status, answer = await restore(server, "brief", format_time(time.time() - PAUSE - 0.2))
        assert status == 404 and "no history is kept" in answer["error"]
        assert str(text(ada)) == "late"
