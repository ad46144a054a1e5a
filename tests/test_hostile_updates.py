"""Updates built to crash or poison pycrdt: refused with 1002 and a reason; stored ones reported, not run."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import websockets.asyncio.client
from pycrdt import Text, get_state

from collab.client import Client
from collab.server.app import CollabServer
from collab.sync.protocol import SyncStep1, SyncStep2, Update, encode_var_uint, parse_frame
from collab.sync.room import Room
from collab.sync.yupdate import MAX_CLOCK, MAX_STATE_VECTOR_CLIENTS, check_state_vector, check_update

from . import craft
from .helpers import (
    ServerProcess,
    StartServer,
    a_real_panic,
    collab_cli,
    get,
    room_url,
    still_syncs,
    synced,
    text,
    wait_for,
)

# What killed the server (SIGSEGV in pycrdt's decoder): a 60 KB update, one value nested 30,000 deep.
DEEP = craft.nested_any(30_000)


async def refused_frame(url: str, frame: bytes) -> tuple[int | None, str | None]:
    """Send `frame` once synced; the close code and reason it earns."""
    attacker = await Client(url).connect()
    await attacker.synced.wait()
    attacker.send_raw(frame)
    return await attacker.wait_closed()


def test_the_deep_update_really_crashes_pycrdt_unchecked() -> None:
    """The input of the next test, given to pycrdt directly in a child process: it dies of SIGSEGV."""
    code = "import sys; from pycrdt import get_state; get_state(sys.stdin.buffer.read())"
    child = subprocess.run([sys.executable, "-c", code], input=DEEP, capture_output=True, timeout=60)
    assert child.returncode == -11, (child.returncode, child.stderr[-500:])


async def test_a_deeply_nested_value_is_refused_and_the_server_lives(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "collab.db").start()
    try:
        async with synced(server.url("elsewhere")) as bystander, synced(server.url("target")) as neighbour:
            text(neighbour).insert(0, "before.")
            code, reason = await refused_frame(server.url("target"), Update(DEEP).encode())
            assert code == 1002 and reason is not None and "nests deeper than 64" in reason, (code, reason)
            assert server.process is not None and server.process.poll() is None
            await still_syncs(server.url("elsewhere"), bystander, "other rooms carry on")
            await still_syncs(server.url("target"), neighbour, "and this one")
        server.wait_for_line(r"connection closed.*1002.*nests deeper")
    finally:
        assert server.stop() == 0


POISON = {
    "clock + length past 2^32": Update(craft.text_update(7, MAX_CLOCK, "ab")).encode(),
    "clock past 2^32": Update(craft.text_update(7, 2**32 + 3, "q")).encode(),
    "sync step 2 past 2^32": b"\x00\x01" + Update(craft.text_update(7, 2**33, "q")).encode()[2:],
    "delete range past 2^32": Update(craft.deletion(7, 2**32 - 2, 10)).encode(),
    "state vector clock past 2^32": SyncStep1(craft.state_vector((7, 2**32))).encode(),
}


async def test_clocks_past_32_bits_are_refused_and_nothing_of_them_lands(
    start_server: StartServer, db_path: Path
) -> None:
    server = await start_server()
    url = room_url(server, "poison")
    async with synced(url) as healthy, synced(url) as watcher:
        text(healthy).insert(0, "XYZ")
        await watcher.wait_until(lambda: str(text(watcher)) == "XYZ")
        for kind, frame in POISON.items():
            code, reason = await refused_frame(url, frame)
            assert code == 1002 and reason, (kind, code, reason)
        await still_syncs(url, healthy, "!")
        await watcher.wait_until(lambda: str(text(watcher)) == "XYZ!")
        assert 7 not in check_state_vector(watcher.doc.get_state())  # nothing relayed
        room = server.rooms.get("poison")
        assert room is not None and str(room.doc.get("content", type=Text)) == "XYZ!"  # nothing merged
        reply = await get(server, "/api/docs/poison?format=txt")
        assert (reply.status, reply.body) == (200, b"XYZ!")
    await server.stop()
    rows = sqlite3.connect(db_path).execute("SELECT data FROM updates UNION ALL SELECT data FROM snapshots").fetchall()
    assert rows
    for (data,) in rows:
        check_update(data)  # nothing stored but what passes
    restarted = await start_server()
    async with synced(room_url(restarted, "poison")) as late:
        assert str(text(late)) == "XYZ!"


async def test_an_update_naming_a_client_with_no_structs_is_refused(server: CollabServer) -> None:
    """Five bytes that made pycrdt panic in the room's Doc: the victim's client id, with no structs."""
    url = room_url(server, "victim")
    async with synced(url) as victim, synced(url) as watcher:
        text(victim).insert(0, "mine")
        await watcher.wait_until(lambda: str(text(watcher)) == "mine")
        frame = Update(b"\x01\x00" + encode_var_uint(victim.doc.client_id) + b"\x00\x00").encode()
        code, reason = await refused_frame(url, frame)
        assert code == 1002 and reason is not None and "no struct of non-zero length" in reason
        await still_syncs(url, victim, " still mine")
        await watcher.wait_until(lambda: str(text(watcher)) == "mine still mine")


async def test_an_item_whose_parent_is_not_a_type_is_refused_before_it_lands(
    start_server: StartServer, db_path: Path
) -> None:
    """A string item named as another item's parent: no walk can see it (the parent may be anywhere in
    the document), and yrs refuses it only when integrating. It is tried on the room's Doc first, so it
    is neither relayed nor stored, where it would fail every later load of the document."""
    server = await start_server()
    url = room_url(server, "parent")
    async with synced(url) as healthy, synced(url) as watcher:
        text(healthy).insert(0, "ok")
        await watcher.wait_until(lambda: str(text(watcher)) == "ok")
        attacker = await Client(url).connect()
        await attacker.synced.wait()
        attacker.send_raw(Update(craft.update(7, 0, craft.root_item(4, b"\x01x"))).encode())  # a valid "x"
        await watcher.wait_until(lambda: "x" in str(text(watcher)))
        attacker.send_raw(Update(craft.update(8, 0, b"\x04\x00\x07\x00\x01y")).encode())  # parent: that "x"
        code, reason = await attacker.wait_closed()
        assert code == 1002 and reason is not None and "does not apply" in reason, (code, reason)
        await still_syncs(url, healthy, "!")
        await watcher.wait_until(lambda: str(text(watcher)).endswith("!"))
        assert 8 not in check_state_vector(watcher.doc.get_state())  # not relayed
        expected = str(text(watcher))
    await server.stop()
    rows = sqlite3.connect(db_path).execute("SELECT data FROM updates UNION ALL SELECT data FROM snapshots").fetchall()
    assert rows
    for (data,) in rows:
        assert 8 not in check_state_vector(get_state(data))  # not stored
    restarted = await start_server()
    async with synced(room_url(restarted, "parent")) as late:
        assert str(text(late)) == expected


async def test_a_state_vector_of_too_many_clients_is_refused_by_its_count(server: CollabServer) -> None:
    """3M clients in one sync step 1 stalled every room for 5.6 s; past MAX_STATE_VECTOR_CLIENTS the count
    alone refuses it (1002), while a state vector at the limit is answered."""
    url = room_url(server, "sv")
    entries = b"".join(encode_var_uint(client) + b"\x00" for client in range(1, MAX_STATE_VECTOR_CLIENTS + 2))
    too_many = encode_var_uint(MAX_STATE_VECTOR_CLIENTS + 1) + entries
    async with synced(room_url(server, "elsewhere")) as bystander, synced(url) as healthy:
        text(healthy).insert(0, "kept")
        code, reason = await refused_frame(url, SyncStep1(too_many).encode())
        assert code == 1002 and reason is not None and f"more than {MAX_STATE_VECTOR_CLIENTS}" in reason, reason
        at_limit = (
            encode_var_uint(MAX_STATE_VECTOR_CLIENTS)
            + entries[: -len(encode_var_uint(MAX_STATE_VECTOR_CLIENTS + 1)) - 1]
        )
        async with websockets.asyncio.client.connect(url, max_size=None, compression=None) as asker:
            await asker.send(SyncStep1(at_limit).encode())  # the server sends step 2 only to answer a step 1
            async with asyncio.timeout(10):
                while True:
                    frame = await asker.recv()
                    assert isinstance(frame, bytes), frame
                    if any(isinstance(message, SyncStep2) for message in parse_frame(frame)):
                        break
            assert asker.close_code is None, (asker.close_code, asker.close_reason)
        await still_syncs(url, healthy, "!")
        await still_syncs(room_url(server, "elsewhere"), bystander, "other rooms carry on")


def insert_row(db_path: Path, room: str, data: bytes) -> int:
    """A row as an older collab (one that did not walk updates) could have stored it: straight into the
    SQLite file, below the first row id that this collab's schema marks as walked (`m004_checked_rows`)."""
    with sqlite3.connect(db_path) as conn:
        [doc_id] = conn.execute("SELECT id FROM documents WHERE name = ?", [room]).fetchone()
        cursor = conn.execute("INSERT INTO updates (doc_id, created_at, data) VALUES (?, 0, ?)", [doc_id, data])
        assert cursor.lastrowid is not None
        conn.execute("UPDATE checked_rows SET first_id = ? WHERE tab = 'updates'", [cursor.lastrowid + 1])
        return cursor.lastrowid


@pytest.mark.parametrize("row", [DEEP, craft.text_update(7, MAX_CLOCK, "ab")], ids=["deep", "clock past 2^32"])
async def test_a_stored_row_that_would_crash_is_reported_and_export_carries_on(tmp_path: Path, row: bytes) -> None:
    db_path = tmp_path / "collab.db"
    server = ServerProcess(db_path).start()
    try:
        for room in ("bad", "good"):
            async with synced(server.url(room)) as writer:
                text(writer).insert(0, f"{room} text")
                await writer.resync()
    finally:
        server.stop()
    row_id = insert_row(db_path, "bad", row)
    server.start()
    try:
        async with synced(server.url("good")) as good:
            assert str(text(good)) == "good text"
            joiner = await Client(server.url("bad")).connect()
            code, _ = await joiner.wait_closed()
            assert code == 1011
            server.wait_for_line(rf"stored update #{row_id} does not decode")
            reply = await get(server.port, "/api/docs/bad?format=txt")
            assert reply.status == 500 and f"#{row_id}".encode() in reply.body
            await still_syncs(server.url("good"), good, " still")
        assert server.process is not None and server.process.poll() is None
    finally:
        assert server.stop() == 0
    out = tmp_path / "export"
    result = collab_cli("export", "--db", str(db_path), "--out", str(out), check=False)
    assert result.returncode == 1
    assert f"stored update #{row_id}" in result.stderr and "1 could not be read" in result.stderr
    assert (out / "good.txt").read_text() == "good text still"
    manifest = {entry["name"]: entry for entry in json.loads((out / "manifest.json").read_text())["documents"]}
    assert manifest["bad"]["file"] is None and f"#{row_id}" in manifest["bad"]["error"]
    assert "error" not in manifest["good"]


async def test_a_library_panic_closes_one_connection_with_1011(
    server: CollabServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No input can make pycrdt panic any more (that is the point of the checks), so the panic is injected."""
    panic = a_real_panic()
    receive = Room.receive

    def panicking(room: Room, peer: object, messages: list[object], *clock: float | None) -> None:
        if room.name == "panics" and any(type(message) is Update for message in messages):
            raise panic
        receive(room, peer, messages, *clock)  # type: ignore[arg-type]

    monkeypatch.setattr(Room, "receive", panicking)
    async with synced(room_url(server, "elsewhere")) as bystander:
        with caplog.at_level(logging.ERROR, logger="collab.server"):
            frame = Update(craft.text_update(8, 0, "x")).encode()
            code, reason = await refused_frame(room_url(server, "panics"), frame)
            assert (code, reason) == (1011, "internal error")
            await wait_for(lambda: any(record.name == "collab.server" for record in caplog.records))
        [logged] = [record for record in caplog.records if record.name == "collab.server"]
        assert logged.exc_info is not None and logged.exc_info[1] is panic
        await still_syncs(room_url(server, "elsewhere"), bystander, "unharmed")
