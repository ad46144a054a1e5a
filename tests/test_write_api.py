"""The write API on real servers: `POST /api/docs/<name>/update`, `PUT /api/docs/<name>`, `POST /api/docs`.

Writes reach connected clients (the stock Yjs client under Node, collab's own) at once, survive a restart, and
cross to another server through the relay; a text replaced by a diff keeps what another client wrote meanwhile;
every refusal (tokens, hostile updates, bodies too large, late, chunked, from another origin) is an answer
saying why, nothing of it lands, and the other connections carry on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Array, Doc, Map, Text, XmlFragment, XmlText, get_state

from collab.auth import Permission
from collab.client import Client
from collab.http import write
from collab.http.write import TextChange, replaced_text
from collab.server.app import CollabServer
from collab.sync.protocol import encode_var_uint
from collab.sync.yupdate import MAX_CLOCK, check_state_vector, check_update

from . import craft
from .helpers import (
    NodeClient,
    Reply,
    StartServer,
    call,
    exchange,
    get,
    needs_node,
    request_head,
    room_url,
    status_of,
    still_syncs,
    synced,
    text,
    token,
    wait_for,
)

BINARY = {"Content-Type": "application/octet-stream"}
BINARY_LINE = ("Content-Type: application/octet-stream",)


async def post_update(server: CollabServer, name: str, update: bytes, **headers: str) -> Reply:
    return await call(
        server, "POST", f"/api/docs/{name}/update", update, **{"Content_Type": BINARY["Content-Type"], **headers}
    )


def typed(value: str, client_id: int | None = None) -> bytes:
    """The update of `value` typed into the `content` text of an empty document."""
    doc: Doc = Doc(client_id=client_id)
    doc.get("content", type=Text).insert(0, value)
    return doc.get_update()


def state_of(reply: Reply) -> dict[int, int]:
    """The state vector an answer gives, decoded."""
    return check_state_vector(base64.b64decode(reply.json()["state_vector"]))


async def txt(server: CollabServer, name: str, **headers: str) -> Reply:
    return await get(server, f"/api/docs/{name}?format=txt", **headers)


class HeldDiffs:
    """`replaced_text` held in its thread until `release` is set: a PUT's diff that lasts as long as a test needs."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, current: bytes, new: str) -> TextChange:
        change = replaced_text(current, new)
        self.started.release()
        assert self.release.wait(10)
        return change

    async def wait_started(self) -> None:
        """Until one more diff is worked out and waits."""
        assert await asyncio.to_thread(self.started.acquire, True, 10)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldDiffs]:
    diffs = HeldDiffs()
    monkeypatch.setattr(write, "replaced_text", diffs)
    yield diffs
    diffs.release.set()  # nothing stays blocked in a thread


def answer_json(response: bytes) -> Any:
    """The JSON body of a raw response."""
    return json.loads(response.partition(b"\r\n\r\n")[2])


@pytest.fixture
async def bystanders(server: CollabServer) -> AsyncIterator[tuple[Client, Client]]:
    """A client in the room the refusals aim at ("notes", holding "kept") and one elsewhere; both still sync, and
    a newcomer gets "kept" and their edits only, afterwards."""
    async with synced(room_url(server, "notes")) as same, synced(room_url(server, "elsewhere")) as other:
        text(same).insert(0, "kept")
        await same.resync()
        yield same, other
        await still_syncs(room_url(server, "elsewhere"), other, " other room")
        assert await still_syncs(room_url(server, "notes"), same, " still") == "kept still"


# Applying an update.


@needs_node
async def test_a_posted_update_reaches_a_stock_client_at_once_and_survives_a_restart(
    start_server: StartServer,
) -> None:
    server = await start_server()
    async with NodeClient(f"ws://127.0.0.1:{server.port}", "live") as js, synced(room_url(server, "live")) as py:
        await js.synced()
        js.send("insert", index=0, value="typed in node. ")
        await py.wait_until(lambda: str(text(py)) == "typed in node. ")
        reply = await post_update(server, "live", typed("posted. "))
        assert reply.status == 200, reply
        snapshot = await js.wait_snapshot(lambda snap: "posted. " in snap["text"])
        assert sorted(snapshot["text"].split(". ")) == ["", "posted", "typed in node"]
        await py.wait_until(lambda: str(text(py)) == snapshot["text"])
        assert state_of(reply) == check_state_vector(py.doc.get_state()), "the state vector once it was applied"
    await server.stop()
    restarted = await start_server()
    assert (await txt(restarted, "live")).body.decode() == snapshot["text"]
    async with NodeClient(f"ws://127.0.0.1:{restarted.port}", "live") as late:
        await late.synced()
        assert (await late.wait_snapshot(lambda snap: snap["text"] != ""))["text"] == snapshot["text"]


async def test_the_answer_is_the_state_vector_and_the_size_stored_and_a_repeat_changes_nothing(
    server: CollabServer,
) -> None:
    update = typed("once", client_id=42)
    first = await post_update(server, "counted", update)
    assert first.status == 200, first
    assert first.headers["content-type"] == "application/json"
    assert first.json()["name"] == "counted" and state_of(first) == {42: 4}
    listed = (await get(server, "/api/docs")).json()["documents"]
    assert first.json()["size"] == next(doc["size"] for doc in listed if doc["name"] == "counted") > 0
    again = await post_update(server, "counted", update)
    assert (again.status, state_of(again)) == (200, {42: 4})
    assert (await txt(server, "counted")).body == b"once"


async def test_a_room_loaded_for_a_write_unloads_again_when_nobody_joins(start_server: StartServer) -> None:
    server = await start_server(unload_after=0.1)
    for method, path, body, headers, expected in [
        ("POST", "/api/docs/passing/update", typed("through"), BINARY, 200),
        ("PUT", "/api/docs/passing", b"again", {}, 200),
        ("POST", "/api/docs?name=created", b"", {}, 201),
        ("POST", "/api/docs?name=created", b"", {}, 409),  # refused once loaded
    ]:
        assert (await call(server, method, path, body, **headers)).status == expected, (method, path)
    await wait_for(lambda: len(server.rooms) == 0)
    assert (await txt(server, "passing")).body == b"again"


async def test_a_posted_update_crosses_to_the_other_servers_of_a_cluster(
    start_server: StartServer, redis_url: str, relay_prefix: str
) -> None:
    """Published to the relay as a client's update is: a client of another process gets it at once."""
    one = await start_server(relay=redis_url, relay_prefix=relay_prefix)
    two = await start_server(relay=redis_url, relay_prefix=relay_prefix)
    async with synced(room_url(two, "shared")) as there:
        reply = await post_update(one, "shared", typed("through the relay"))
        assert reply.status == 200, reply
        await there.wait_until(lambda: str(text(there)) == "through the relay")


# Replacing the text.


async def test_a_put_text_keeps_what_another_client_wrote_meanwhile_elsewhere_in_the_text(
    server: CollabServer,
) -> None:
    """A client offline edits inside a line the PUT leaves alone; the PUT rewrites another line. Both survive:
    the PUT is a diff (a text deleted and typed again whole would have lost the insertion inside "gamma")."""
    url = room_url(server, "plan")
    async with synced(url) as watcher:
        text(watcher).insert(0, "alpha\nbeta\ngamma\n")
        await watcher.resync()
        offline: Doc = Doc()
        async with synced(url, offline):
            pass  # it has the text, and goes offline
        text_offline = offline.get("content", type=Text)
        text_offline.insert(len("alpha\nbeta\ngam"), "-")  # "gam-ma", not yet sent
        reply = await call(server, "PUT", "/api/docs/plan?format=txt", b"alpha\nBETA, rewritten\ngamma\n")
        assert reply.status == 200, reply
        await watcher.wait_until(lambda: str(text(watcher)) == "alpha\nBETA, rewritten\ngamma\n")
        async with synced(url, offline) as back:  # reconnects: its edit and the PUT merge
            await back.wait_until(lambda: str(text(back)) == "alpha\nBETA, rewritten\ngam-ma\n")
        await watcher.wait_until(lambda: str(text(watcher)) == "alpha\nBETA, rewritten\ngam-ma\n")
    assert (await txt(server, "plan")).body == b"alpha\nBETA, rewritten\ngam-ma\n"


async def test_a_put_keeps_what_a_connected_client_types_while_its_diff_is_worked_out(
    server: CollabServer, held: HeldDiffs
) -> None:
    """The diff is worked out in a thread from the room's text as it was; what a client types meanwhile, inside a
    line the PUT keeps, is merged with it, not undone."""
    async with synced(room_url(server, "typing")) as typist:
        text(typist).insert(0, "first line\nlast line")
        await typist.resync()
        putting = asyncio.create_task(call(server, "PUT", "/api/docs/typing", b"FIRST LINE\nlast line"))
        await held.wait_started()
        text(typist).insert(len("first line\nlast"), ", typed meanwhile,")
        await typist.resync()  # the server has it before the PUT's change is applied
        held.release.set()
        assert (await putting).status == 200
        await typist.wait_until(lambda: str(text(typist)) == "FIRST LINE\nlast, typed meanwhile, line")
    assert (await txt(server, "typing")).body == b"FIRST LINE\nlast, typed meanwhile, line"


async def test_a_put_creates_a_missing_document_and_the_same_text_again_changes_nothing(
    server: CollabServer,
) -> None:
    created = await call(server, "PUT", "/api/docs/fresh%2Fnotes?format=md", "# Grüße 👋\n".encode())
    assert created.status == 201, created
    assert (await txt(server, "fresh%2Fnotes")).body.decode() == "# Grüße 👋\n"
    assert "fresh/notes" in [doc["name"] for doc in (await get(server, "/api/docs")).json()["documents"]]
    same = await call(server, "PUT", "/api/docs/fresh%2Fnotes", "# Grüße 👋\n".encode())
    assert (same.status, same.json()["state_vector"]) == (200, created.json()["state_vector"])
    emptied = await call(server, "PUT", "/api/docs/fresh%2Fnotes", b"")
    assert emptied.status == 200 and (await txt(server, "fresh%2Fnotes")).body == b""
    empty = await call(server, "PUT", "/api/docs/nothing", b"")  # created, and listed, though empty
    assert empty.status == 201 and "nothing" in [
        doc["name"] for doc in (await get(server, "/api/docs")).json()["documents"]
    ]


async def test_a_put_refuses_what_is_not_utf8_another_format_and_a_content_that_is_no_text(
    server: CollabServer, bystanders: tuple[Client, Client]
) -> None:
    for body, expected, says in [
        (b"caf\xe9", 400, b"not UTF-8"),
        (b"\xff\xfe\x00", 400, b"not UTF-8"),
    ]:
        reply = await call(server, "PUT", "/api/docs/notes", body)
        assert (reply.status, says in reply.body) == (expected, True), reply
    reply = await call(server, "PUT", "/api/docs/notes?format=json", b"{}")
    assert reply.status == 400 and b"txt or md" in reply.body
    mapped: Doc = Doc()
    mapped.get("content", type=Map)["title"] = "a map"
    assert (await post_update(server, "mapped", mapped.get_update())).status == 200
    reply = await call(server, "PUT", "/api/docs/mapped", b"text")
    assert reply.status == 409 and b"is a Map, not a text" in reply.body, reply
    assert (await get(server, "/api/docs/mapped?format=json")).json()["roots"] == {"content": {"title": "a map"}}
    assert (await txt(server, "notes")).body == b"kept"


async def test_puts_at_once_take_turns_and_the_last_one_is_the_text(server: CollabServer, held: HeldDiffs) -> None:
    """Each PUT diffs against the text the one before it left: the document reads as the last body, not as a merge
    of all of them (three diffs of one text would each have kept the others' lines)."""
    assert (await post_update(server, "turns", typed("one\ntwo\nthree\n"))).status == 200
    bodies = [b"A\none\ntwo\nthree\n", b"one\ntwo\nthree\nB\n", b"one\nTWO\nthree\n"]
    puts = [asyncio.create_task(call(server, "PUT", "/api/docs/turns", bodies[0]))]

    async def queued(count: int) -> None:
        await wait_for(lambda: server.rooms._turns["turns"][1][0] == count)

    await held.wait_started()  # the first holds the turn
    for count, body in enumerate(bodies[1:], start=2):  # queued in this order behind it
        puts.append(asyncio.create_task(call(server, "PUT", "/api/docs/turns", body)))
        await queued(count)
    held.release.set()
    replies = await asyncio.gather(*puts)
    assert [reply.status for reply in replies] == [200, 200, 200], replies
    assert (await txt(server, "turns")).body == bodies[-1]
    room = server.rooms.get("turns")
    assert room is not None
    final = check_state_vector(room.state_vector())
    assert state_of(replies[-1]) == final and all(state_of(reply) != final for reply in replies[:-1])


async def test_a_put_refuses_a_yjs_update_before_reading_it(server: CollabServer) -> None:
    """An update sent to PUT would become the document's text: 415, pointing to POST .../update."""
    assert (await call(server, "PUT", "/api/docs/typed", b"plain")).status == 201
    update = typed("meant for /update")
    reply = await call(server, "PUT", "/api/docs/typed", update, **BINARY)
    assert reply.status == 415 and b"POST /api/docs/NAME/update" in reply.body, reply
    head_only = await exchange(
        server.port, request_head("PUT", "/api/docs/typed", f"Content-Length: {len(update)}", *BINARY_LINE), timeout=3
    )
    assert status_of(head_only) == 415, "answered before the body came"
    assert (await txt(server, "typed")).body == b"plain"


async def test_a_rename_while_a_put_is_worked_out_refuses_the_put(server: CollabServer, held: HeldDiffs) -> None:
    """The diff was made for the document as it was under its old name: not applied (503, not applied), and
    nothing comes back under the old name."""
    assert (await post_update(server, "moving", typed("before"))).status == 200
    putting = asyncio.create_task(call(server, "PUT", "/api/docs/moving", b"after"))
    await held.wait_started()
    assert (await call(server, "POST", "/api/docs/moving/rename?to=moved")).status == 200
    held.release.set()
    reply = await putting
    assert reply.status == 503 and b"deleted or renamed meanwhile" in reply.body, reply
    assert reply.json()["applied"] is False
    assert (await txt(server, "moved")).body == b"before"
    assert (await txt(server, "moving")).status == 404


async def test_a_room_stays_loaded_while_a_put_is_worked_out(start_server: StartServer, held: HeldDiffs) -> None:
    """A diff is never applied to another copy of the document: the room a PUT works from does not unload under it
    (a client coming and going meanwhile included), so a delete and a new document by that name meanwhile refuse
    the PUT instead of taking a change made for the deleted one."""
    server = await start_server(unload_after=0.05)
    assert (await post_update(server, "kept", typed("old text"))).status == 200
    room = server.rooms.get("kept")
    putting = asyncio.create_task(call(server, "PUT", "/api/docs/kept", b"old text, edited"))
    await held.wait_started()
    async with synced(room_url(server, "kept")):
        pass  # came and went: the room would unload 0.05 s later
    await asyncio.sleep(0.3)  # an observation window, not a wait: nothing must happen in it
    assert server.rooms.get("kept") is room
    assert (await call(server, "DELETE", "/api/docs/kept")).status == 200
    assert (await post_update(server, "kept", typed("a new document"))).status == 200
    held.release.set()
    reply = await putting
    assert reply.status == 503 and reply.json()["applied"] is False, reply
    assert (await txt(server, "kept")).body == b"a new document"


def test_replaced_text_is_the_smallest_change_and_refuses_embeds() -> None:
    doc: Doc = Doc(client_id=7)
    content = doc.get("content", type=Text)
    content.insert(0, "one two three")
    change, refusal = replaced_text(doc.get_update(), "one 2 three")
    assert not refusal
    check_update(change)
    assert 7 not in check_state_vector(get_state(change)), "a client id of its own"
    doc.apply_update(change)
    assert str(content) == "one 2 three"
    assert len(change) < 40, "a diff, not the whole text again"
    assert replaced_text(doc.get_update(), "one 2 three") == (b"\x00\x00", "")
    content.insert_embed(0, {"image": "x.png"})
    change, refusal = replaced_text(doc.get_update(), "plain")
    assert change == b"\x00\x00" and "embedded objects" in refusal
    for root, says in [(Array([1, 2]), "is an Array"), (XmlFragment([XmlText("x")]), "is an XmlFragment")]:
        other: Doc = Doc()
        other["content"] = root
        change, refusal = replaced_text(other.get_update(), "plain")
        assert change == b"\x00\x00" and refusal == f"its 'content' {says}, not a text", refusal


# Creating.


async def test_post_docs_creates_a_document_listed_at_once_empty_or_with_content(server: CollabServer) -> None:
    empty = await call(server, "POST", "/api/docs?name=empty")
    assert empty.status == 201 and empty.json()["name"] == "empty", empty
    assert "empty" in [doc["name"] for doc in (await get(server, "/api/docs")).json()["documents"]]
    assert (await txt(server, "empty")).status == 200
    with_text = await call(server, "POST", "/api/docs?name=a%2Fb", "first draft ✍".encode(), Content_Type="text/plain")
    assert with_text.status == 201, with_text
    assert (await txt(server, "a%2Fb")).body.decode() == "first draft ✍"
    with_update = await call(server, "POST", "/api/docs?name=binary", typed("from a ydoc", 5), **BINARY)
    assert (with_update.status, state_of(with_update)) == (201, {5: 11})
    assert (await txt(server, "binary")).body == b"from a ydoc"
    names = [doc["name"] for doc in (await get(server, "/api/docs")).json()["documents"]]
    assert {"empty", "a/b", "binary"} <= set(names)


async def test_post_docs_refuses_a_name_that_exists_stored_or_open_and_one_missing(server: CollabServer) -> None:
    assert (await post_update(server, "stored", typed("here"))).status == 200
    async with synced(room_url(server, "open")):  # in a room, nothing stored yet: a document all the same
        for name in ("stored", "open"):
            reply = await call(server, "POST", f"/api/docs?name={name}", b"over it", Content_Type="text/plain")
            assert reply.status == 409 and b"exists already" in reply.body, (name, reply)
    assert (await txt(server, "stored")).body == b"here"
    for path, says in [("/api/docs", b"no name"), ("/api/docs?name=", b"no name"), ("/api/docs?name=%07", b"control")]:
        reply = await call(server, "POST", path)
        assert reply.status == 400 and says in reply.body, (path, reply)
    reply = await call(server, "POST", "/api/docs?name=latin", b"caf\xe9")
    assert reply.status == 400 and b"not UTF-8" in reply.body
    reply = await call(server, "POST", "/api/docs", b'{"name": "json"}', Content_Type="application/json")
    assert reply.status == 415 and b"the name goes in the query" in reply.body


async def test_two_creates_of_one_name_at_once_make_one_document(server: CollabServer) -> None:
    replies = await asyncio.gather(*(call(server, "POST", "/api/docs?name=race", f"by {n}".encode()) for n in range(4)))
    assert sorted(reply.status for reply in replies) == [201, 409, 409, 409], replies
    winner = next(reply for reply in replies if reply.status == 201)
    assert (await txt(server, "race")).body.decode() in {f"by {n}" for n in range(4)}
    assert state_of(winner) == state_of(await post_update(server, "race", b"\x00\x00"))


# Who may write.


@pytest.fixture
async def secured_notes(secured: CollabServer) -> AsyncIterator[CollabServer]:
    async with synced(room_url(secured, "notes") + "?token=" + token("notes")) as writer:
        text(writer).insert(0, "kept")
        await writer.resync()
    yield secured


async def test_writes_need_a_token_that_may_write_that_document(secured_notes: CollabServer) -> None:
    server = secured_notes
    attempts = {
        "update": ("notes", "POST", "/api/docs/notes/update", typed("!"), BINARY),
        "put": ("notes", "PUT", "/api/docs/notes", b"replaced", {}),
        "create": ("notes2", "POST", "/api/docs?name=notes2", b"new", {}),
    }
    for kind, (name, method, path, body, headers) in attempts.items():
        anonymous = await call(server, method, path, body, **headers)
        assert anonymous.status == 401 and anonymous.json()["error"], (kind, anonymous)
        reader = f"Bearer {token(name, Permission.READ)}"
        by_reader = await call(server, method, path, body, Authorization=reader, **headers)
        assert by_reader.status == 403 and b"read-only" in by_reader.body, (kind, by_reader)
        elsewhere = await call(server, method, path, body, Authorization=f"Bearer {token('elsewhere')}", **headers)
        assert elsewhere.status == 403 and b"token is for 'elsewhere'" in elsewhere.body, (kind, elsewhere)
        forged = await call(server, method, path, body, Authorization="Bearer not-a-token", **headers)
        assert forged.status == 401, (kind, forged)
    read = token("notes", Permission.READ)
    assert (await txt(server, "notes", authorization=f"Bearer {read}")).body == b"kept"
    assert (await get(server, "/api/docs/notes2?format=txt&token=" + token("notes2"))).status == 404
    scoped = token("team/")
    assert (await call(server, "PUT", f"/api/docs/team%2Fplan?token={scoped}", b"by query token")).status == 201
    reply = await call(
        server, "POST", "/api/docs/notes/update", typed("!"), Authorization=f"Bearer {token('notes')}", **BINARY
    )
    assert reply.status == 200, reply


async def test_a_write_its_token_may_not_make_is_refused_before_any_of_its_body_is_sent(
    secured_notes: CollabServer,
) -> None:
    """Only the head is sent, with `Expect: 100-continue` and 60 MB declared: the answer is the refusal, at once,
    and no `100 Continue` invites the body (a server that read bodies first let anonymous clients pin them)."""
    server = secured_notes
    reader, writer = token("notes", Permission.READ), token("notes")
    attempts = [
        ("POST", "/api/docs/notes/update", BINARY_LINE, 401),
        ("PUT", "/api/docs/notes", (f"Authorization: Bearer {reader}",), 403),
        ("POST", f"/api/docs?name=notes2&token={token('elsewhere')}", (), 403),
        ("POST", "/api/docs/notes/update", ("Authorization: Bearer forged",), 401),
        ("PUT", f"/api/docs/notes?token={writer}", BINARY_LINE, 415),
        ("POST", f"/api/docs/notes/update?token={writer}", ("Content-Type: text/plain",), 415),
    ]
    for method, path, lines, expected in attempts:
        head = request_head(method, path, "Expect: 100-continue", "Content-Length: 60000000", *lines)
        response = await exchange(server.port, head, timeout=3)
        assert status_of(response) == expected, (method, path, response)
        assert b"100 Continue" not in response and answer_json(response)["error"]
    assert not server.endpoint.bodies and server.endpoint.body_bytes == 0
    metrics = (await get(server, "/metrics")).body.decode()
    assert 'collab_auth_failures_total{reason="missing"} 1' in metrics, metrics
    assert (await txt(server, "notes", authorization=f"Bearer {writer}")).body == b"kept"


# Hostile and broken input.

CRAFTED = {
    "garbage": (b"\xde\xad\xbe\xef" * 8, b"invalid Yjs update"),
    "truncated": (typed("a longer text to cut")[:-5], b"invalid Yjs update"),
    "nested 30,000 deep (overflowed pycrdt's stack)": (craft.nested_any(30_000), b"nests deeper than 64"),
    "a clock past 32 bits": (craft.text_update(7, 2**32 + 3, "q"), b"invalid Yjs update"),
    "clock + length past 32 bits": (craft.text_update(7, MAX_CLOCK, "ab"), b"invalid Yjs update"),
    "a delete range past 32 bits": (craft.deletion(7, 2**32 - 2, 10), b"invalid Yjs update"),
    "a client with no structs": (b"\x01\x00" + encode_var_uint(99) + b"\x00\x00", b"no struct of non-zero length"),
    "bytes after the delete set": (typed("x") + b"\x00", b"invalid Yjs update"),
    "a parent that is not a type (only applying tells)": (
        craft.update(8, 0, b"\x04\x00" + encode_var_uint(7) + b"\x00\x01y"),
        b"does not apply",
    ),
}


async def test_bad_updates_are_refused_with_the_reason_and_nothing_of_them_lands(
    server: CollabServer, bystanders: tuple[Client, Client], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    same, _ = bystanders
    parent = craft.update(7, 0, craft.root_item(craft.STRING, b"\x01x"))  # a valid "x" the last one names
    assert (await post_update(server, "notes", parent)).status == 200
    await same.wait_until(lambda: str(text(same)) == "xkept" or str(text(same)) == "keptx")
    before = str(text(same))
    with caplog.at_level(logging.WARNING, logger="collab.http"):
        for kind, (update, says) in CRAFTED.items():
            reply = await post_update(server, "notes", update)
            assert reply.status == 400 and says in reply.body, (kind, reply)
            assert reply.json()["error"], kind
    assert [record.getMessage() for record in caplog.records] == ["refused a write"] * len(CRAFTED), "one line each"
    assert not [record for record in caplog.records if record.exc_info], "no traceback"
    metrics = (await get(server, "/metrics")).body.decode()
    assert f'collab_rejected_messages_total{{reason="InvalidUpdateError"}} {len(CRAFTED)}' in metrics, metrics
    assert (await post_update(server, "notes", b"")).status == 400
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {} if content_type is None else {"Content-Type": content_type}
        reply = await call(server, "POST", "/api/docs/notes/update", typed("!"), **headers)
        assert reply.status == 415 and b"application/octet-stream" in reply.body, (content_type, reply)
    assert (await txt(server, "notes")).body.decode() == before
    await same.resync()  # every frame the server sent it has arrived
    state = check_state_vector(same.doc.get_state())
    assert 8 not in state and 99 not in state, "nothing relayed"
    # The bystanders' own check follows; then nothing stored but what a walk passes.
    await server.store.flush()
    for (data,) in sqlite3.connect(db_path).execute("SELECT data FROM updates UNION ALL SELECT data FROM snapshots"):
        check_update(data)
        assert 8 not in check_state_vector(get_state(data))
    # `bystanders` expects "kept" alone: take the valid "x" out again.
    reply = await call(server, "PUT", "/api/docs/notes", b"kept")
    assert reply.status == 200


async def test_an_update_growing_a_document_past_its_limit_is_413(start_server: StartServer) -> None:
    server = await start_server(max_document_size=1000)
    assert (await post_update(server, "small", typed("a" * 500))).status == 200
    reply = await post_update(server, "small", typed("b" * 600))
    assert reply.status == 413 and b"exceed 1000 bytes" in reply.body, reply
    reply = await call(server, "PUT", "/api/docs/small", b"c" * 1500)
    assert reply.status == 413, reply
    assert (await txt(server, "small")).body == b"a" * 500
    metrics = (await get(server, "/metrics")).body.decode()
    assert 'collab_rejected_messages_total{reason="DocumentTooLargeError"} 2' in metrics, metrics


# Bodies: their size, their time, their framing.


async def test_a_body_over_the_message_limit_is_refused_before_it_is_read(start_server: StartServer) -> None:
    server = await start_server(max_message_size=1024)
    async with synced(room_url(server, "limit")) as watcher:
        for method, path in [
            ("POST", "/api/docs/limit/update"),
            ("PUT", "/api/docs/limit"),
            ("POST", "/api/docs?name=x"),
        ]:
            declared = await exchange(server.port, request_head(method, path, "Content-Length: 1025"), timeout=3)
            assert status_of(declared) == 413 and b"limit of 1024 bytes" in declared, (method, path, declared)
            huge = await exchange(server.port, request_head(method, path, "Content-Length: " + "9" * 5000), timeout=3)
            assert status_of(huge) == 413, huge
        at_limit = await call(server, "PUT", "/api/docs/limit", b"x" * 1024)
        assert at_limit.status == 200, at_limit  # not 201: open in a room, it was a document already
        await watcher.wait_until(lambda: str(text(watcher)) == "x" * 1024)
        above = await call(server, "PUT", "/api/docs/limit", b"y" * 2048)
        assert above.status == 413
    assert (await txt(server, "limit")).body == b"x" * 1024


async def test_a_body_that_does_not_arrive_in_time_is_408_and_one_cut_short_400(start_server: StartServer) -> None:
    server = await start_server(handshake_timeout=0.3)
    async with synced(room_url(server, "late")) as watcher:
        started = time.monotonic()
        late = await exchange(
            server.port, request_head("PUT", "/api/docs/late", "Content-Length: 100") + b"only ten b", timeout=5
        )
        assert status_of(late) == 408 and b"10 of 100 bytes received" in late, late
        assert time.monotonic() - started < 3
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_head("PUT", "/api/docs/late", "Content-Length: 100") + b"cut short")
        writer.write_eof()
        async with asyncio.timeout(5):
            short = await reader.read()
        writer.close()
        assert status_of(short) == 400 and b"9 of 100 bytes" in short, short
        await still_syncs(room_url(server, "late"), watcher, "still here")
    assert (await txt(server, "late")).body == b"still here"


async def test_chunked_bodies_are_411_and_ambiguous_framing_400(
    server: CollabServer, bystanders: tuple[Client, Client]
) -> None:
    chunked = request_head(
        "POST", "/api/docs/notes/update", "Transfer-Encoding: chunked", "Content-Type: application/octet-stream"
    )
    response = await exchange(server.port, chunked + b"2\r\n\x00\x00\r\n0\r\n\r\n")
    assert status_of(response) == 411 and b"Content-Length" in response, response
    both = request_head("PUT", "/api/docs/notes", "Content-Length: 4", "Transfer-Encoding: chunked")
    response = await exchange(server.port, both + b"0\r\n\r\n")
    assert status_of(response) == 400 and b"ambiguous" in response, response
    twice = request_head("PUT", "/api/docs/notes", "Content-Length: 4", "Content-Length: 5")
    response = await exchange(server.port, twice + b"abcde")
    assert status_of(response) == 400 and b"duplicated header: Content-Length" in response, response
    assert (await txt(server, "notes")).body == b"kept"


async def test_a_client_waiting_for_100_continue_gets_it_then_its_answer(server: CollabServer) -> None:
    update = typed("after the interim answer")
    lines = ("Expect: 100-continue", f"Content-Length: {len(update)}", "Content-Type: application/octet-stream")
    response = await exchange(server.port, request_head("POST", "/api/docs/expecting/update", *lines), then=update)
    assert response.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), response
    assert (await txt(server, "expecting")).body == b"after the interim answer"
    refused = await exchange(
        server.port,
        request_head("POST", "/api/docs/expecting/update", "Expect: 100-continue", "Content-Length: 99999999"),
    )
    assert status_of(refused) == 413, "a body too large is refused instead of being asked for"


async def test_bytes_after_a_body_are_neither_a_second_request_nor_frames(
    server: CollabServer, bystanders: tuple[Client, Client]
) -> None:
    update = typed("the body")
    lines = (f"Content-Length: {len(update)}", "Content-Type: application/octet-stream")
    pipelined = (
        request_head("POST", "/api/docs/piped/update", *lines) + update + request_head("DELETE", "/api/docs/notes")
    )
    response = await exchange(server.port, pipelined + b"\x82\x80abcd")
    assert status_of(response) == 200 and response.count(b"HTTP/1.1") == 1, response
    assert (await txt(server, "piped")).body == b"the body"
    assert (await txt(server, "notes")).body == b"kept", "the pipelined DELETE was not served"


async def test_odd_content_lengths_on_a_body_route(server: CollabServer) -> None:
    """`Content-Length` is digits (RFC 9110 section 8.6), leading zeros and spaces around them allowed; anything else
    is 400. HTTP/1.0 may send a body too, but gets no `100 Continue`; a body in many pieces is put together."""
    for name, value, expected in [
        ("plus", "+5", 400),
        ("hex", "0x10", 400),
        ("list", "5,5", 400),
        ("exponent", "5e0", 400),
        ("zeros", "00005", 201),
        ("spaced", "  5 ", 201),
    ]:
        response = await exchange(
            server.port, request_head("PUT", f"/api/docs/{name}", f"Content-Length: {value}") + b"hello", timeout=3
        )
        assert status_of(response) == expected, (value, response)
        if expected == 400:
            assert response.endswith(b"malformed Content-Length\n")
            assert (await txt(server, name)).status == 404
        else:
            assert (await txt(server, name)).body == b"hello"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        lines = ("Content-Length: 3", "Expect: 100-continue")
        writer.write(request_head("PUT", "/api/docs/old", *lines, version="HTTP/1.0"))
        with pytest.raises(TimeoutError):  # an observation window: nothing may come before the body
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.write(b"abc")
        async with asyncio.timeout(5):
            response = await reader.read()
    finally:
        writer.close()
    assert status_of(response) == 201, response
    assert (await txt(server, "old")).body == b"abc"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no merging
        writer.write(request_head("PUT", "/api/docs/pieces", "Content-Length: 6"))
        for byte in b"abcdef":
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(bytes([byte]))
        async with asyncio.timeout(5):
            response = await reader.read()
    finally:
        writer.close()
    assert status_of(response) == 201, response
    assert (await txt(server, "pieces")).body == b"abcdef"


async def test_a_body_that_stalls_or_trickles_is_408_whatever_length_it_declares(start_server: StartServer) -> None:
    """The deadline follows what arrives, not what is promised: a body stalled for --handshake-timeout is 408 then,
    and one trickling in below 64 KiB/s once that time has passed is too (a declared 60 MB earned 15 minutes)."""
    server = await start_server(handshake_timeout=0.3)
    declared = "Content-Length: 60000000"
    started = time.monotonic()
    stalled = await exchange(server.port, request_head("PUT", "/api/docs/stall", declared) + b"0123456789", timeout=5)
    assert status_of(stalled) == 408, stalled
    assert stalled.endswith(b"nothing of the body came for 0.3 s: 10 of 60000000 bytes received\n"), stalled
    assert time.monotonic() - started < 2
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def trickle() -> None:
        for _ in range(50):  # a byte every 0.1 s: never silent for 0.3 s
            await asyncio.sleep(0.1)
            writer.write(b"x")

    started = time.monotonic()
    writer.write(request_head("PUT", "/api/docs/trickle", declared))
    trickling = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(5):
            trickled = await reader.read()
    finally:
        trickling.cancel()
        writer.close()
    assert status_of(trickled) == 408 and b"the body comes slower than 64 KiB/s" in trickled, trickled
    assert time.monotonic() - started < 2
    assert (await txt(server, "trickle")).status == 404
    assert not server.endpoint.bodies and server.endpoint.body_bytes == 0


async def test_bodies_under_way_are_bounded_in_bytes(start_server: StartServer) -> None:
    """Four bodies of --max-message-size at most are held at once, from their head to their answer: another is 503
    with Retry-After, at once, before any of it is read; once one is answered there is room again."""
    server = await start_server(max_message_size=1000)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    try:
        for number, (_, writer) in enumerate(held):
            writer.write(request_head("PUT", f"/api/docs/held{number}", "Content-Length: 1000") + b"0123456789")
            await writer.drain()
        await wait_for(lambda: len(server.endpoint.bodies) == 4)
        over = await exchange(server.port, request_head("PUT", "/api/docs/over", "Content-Length: 1") + b"x", timeout=3)
        assert status_of(over) == 503 and b"\r\nRetry-After: 5\r\n" in over, over
        assert over.endswith(b"fill the server's budget of 4000 bytes: try again\n"), over
        reader, writer = held[0]
        writer.write(b"a" * 990)
        async with asyncio.timeout(5):
            assert status_of(await reader.read()) == 201
        assert (await call(server, "PUT", "/api/docs/over", b"x")).status == 201, "room again"
    finally:
        for _, writer in held:
            writer.close()
    await wait_for(lambda: server.endpoint.body_bytes == 0)
    assert server.metrics.rejected.get("body_budget") == 1
    assert (await txt(server, "held0")).body == b"0123456789" + b"a" * 990


async def test_bodies_under_way_count_under_max_connections(start_server: StartServer) -> None:
    """A body being read holds a connection as a WebSocket client does: past --max-connections, another body is 503
    and another client is closed with 1013."""
    server = await start_server(max_connections=2)
    async with synced(room_url(server, "here")) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request_head("PUT", "/api/docs/slow", "Content-Length: 4") + b"ab")
            await writer.drain()
            await wait_for(lambda: len(server.endpoint.bodies) == 1)
            refused = await exchange(server.port, request_head("PUT", "/api/docs/other", "Content-Length: 1") + b"x")
            assert status_of(refused) == 503 and b"limit of 2 connections" in refused, refused
            extra = await Client(room_url(server, "there")).connect()
            assert (await extra.wait_closed())[0] == 1013
            writer.write(b"cd")
            async with asyncio.timeout(5):
                assert status_of(await reader.read()) == 201
        finally:
            writer.close()
        await still_syncs(room_url(server, "here"), client, "still")
    assert (await txt(server, "slow")).body == b"abcd"


async def test_large_writes_are_paced_and_one_too_soon_is_503_before_its_body(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes from `LARGE_WRITE` bytes on hold the way for their size at `LARGE_WRITE_RATE`, as a WebSocket sender is
    held back for the bytes it sent: the next large one is 503 with Retry-After (smaller ones pass)."""
    monkeypatch.setattr(write, "LARGE_WRITE", 1000)
    monkeypatch.setattr(write, "LARGE_WRITE_RATE", 100)  # 2000 bytes: 20 s
    server = await start_server()
    assert (await call(server, "PUT", "/api/docs/big", b"a" * 2000)).status == 201
    assert (await call(server, "PUT", "/api/docs/big", b"b" * 999)).status == 200
    too_soon = await exchange(server.port, request_head("PUT", "/api/docs/big", "Content-Length: 1000"), timeout=3)
    assert status_of(too_soon) == 503 and answer_json(too_soon)["applied"] is False, too_soon
    retry_after = int(too_soon.partition(b"\r\nRetry-After: ")[2].partition(b"\r\n")[0])
    assert 10 < retry_after <= 20
    reply = await post_update(server, "big", typed("c" * 2000))
    assert reply.status == 503 and reply.headers["retry-after"], reply
    assert (await txt(server, "big")).body == b"b" * 999


async def test_a_write_the_store_does_not_confirm_in_time_is_503_applied(
    start_server: StartServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change is applied (its clients have it) and kept while commits retry: `applied` says so."""
    monkeypatch.setattr(write, "DURABLE_TIMEOUT", 0.3)
    server = await start_server(sqlite_busy_timeout=0.05)
    async with synced(room_url(server, "slow")) as watcher:
        await server.store.flush()
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: commits fail and retry
        try:
            reply = await post_update(server, "slow", typed("posted"))
            assert reply.status == 503 and reply.json()["applied"] is True, reply
            await watcher.wait_until(lambda: str(text(watcher)) == "posted")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await server.store.flush()
    assert (await txt(server, "slow")).body == b"posted"


async def test_a_page_of_another_origin_cannot_write(server: CollabServer, bystanders: tuple[Client, Client]) -> None:
    """Without access control only the server's own origin may: a page elsewhere cannot write through a browser."""
    own, evil = f"http://127.0.0.1:{server.port}", "http://evil.example"
    attempts = [
        ("POST", "/api/docs/notes/update", typed("evil"), BINARY),
        ("POST", "/api/docs/notes/update", typed("evil"), {"Content-Type": "text/plain"}),  # a form can send that
        ("PUT", "/api/docs/notes", b"evil", {}),
        ("POST", "/api/docs?name=evil", b"evil", {}),
    ]
    for method, path, body, headers in attempts:
        reply = await call(server, method, path, body, Origin=evil, **headers)
        assert reply.status == 403 and b"origin not allowed" in reply.body, (method, path, reply)
    assert (await txt(server, "notes")).body == b"kept"
    assert (await txt(server, "evil")).status == 404
    own_page = await call(server, "PUT", "/api/docs/mine", b"from the editor", Origin=own)
    assert own_page.status == 201


async def test_a_name_being_deleted_is_refused_until_the_delete_is_done(
    start_server: StartServer, db_path: Path
) -> None:
    server = await start_server(sqlite_busy_timeout=10)
    assert (await call(server, "PUT", "/api/docs/going", b"old")).status == 201
    async with synced(room_url(server, "going")):
        await server.store.flush()
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the store's delete waits for the write lock: the name is ending
        try:
            deleting = asyncio.create_task(call(server, "DELETE", "/api/docs/going"))
            await wait_for(lambda: "going" not in server.rooms)
            for method, path, body, headers in [
                ("POST", "/api/docs/going/update", typed("new"), BINARY),
                ("PUT", "/api/docs/going", b"new", {}),
                ("POST", "/api/docs?name=going", b"new", {}),
            ]:
                reply = await call(server, method, path, body, **headers)
                assert reply.status == 503 and b"being deleted or renamed" in reply.body, (method, path, reply)
                assert reply.json()["applied"] is False
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await deleting).status == 200
    assert (await call(server, "POST", "/api/docs?name=going", b"anew")).status == 201
    assert (await txt(server, "going")).body == b"anew"
