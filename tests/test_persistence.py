"""Nothing is lost: clean shutdowns, kill -9, unloading, a failing disk, a corrupt row.

All but the failing disk (SQLite's write lock, held by hand) run on both persistent engines, through the
`database` fixture: a SQLite file and a fresh PostgreSQL database. PostgreSQL going away while clients
type is in test_postgres_faults.py.
"""

from __future__ import annotations

import logging
import re
import signal
import sqlite3
from pathlib import Path

import pytest
from pycrdt import Array, Map

from collab.client import Client

from .helpers import (
    ServerProcess,
    StartServer,
    insert_by_hand,
    room_url,
    row_counts,
    servers_on,
    stored_text,
    synced,
    text,
    wait_for,
    wait_stored,
)


async def write_document(url: str) -> str:
    """Type a paragraph keystroke by keystroke, plus a map and an array; return the text."""
    async with synced(url) as writer:
        for word in ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]:
            for char in word + " ":
                text(writer).insert(len(str(text(writer))), char)
        writer.doc.get("meta", type=Map)["title"] = "Fox"
        writer.doc.get("tags", type=Array).extend(["a", "b"])
        written = str(text(writer))
        # Another client seeing everything proves the server accepted all of it.
        async with synced(url) as witness:
            await witness.wait_until(
                lambda: str(text(witness)) == written and len(witness.doc.get("tags", type=Array)) == 2
            )
    return written


async def assert_document(url: str, expected: str) -> None:
    async with synced(url) as reader:
        assert str(text(reader)) == expected
        assert reader.doc.get("meta", type=Map).to_py() == {"title": "Fox"}
        assert reader.doc.get("tags", type=Array).to_py() == ["a", "b"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_clean_shutdown_flushes_everything(database: str, signum: int) -> None:
    # A commit window far longer than the test: only the shutdown flush can have saved the edits.
    server = ServerProcess(database, "--commit-interval", "1h", "--unload-after", "1h").start()
    try:
        written = await write_document(server.url("notes/plan"))
        assert stored_text(database, "notes/plan") is None
    finally:
        assert server.stop(signum) == 0
    assert any("everything is on disk" in line for line in server.output)
    assert stored_text(database, "notes/plan") == written
    server.start()
    try:
        await assert_document(server.url("notes/plan"), written)
    finally:
        server.stop()


async def test_kill_9_keeps_every_committed_update(database: str) -> None:
    server = ServerProcess(database, "--unload-after", "1h").start()
    written = await write_document(server.url("crash"))
    # Group commit makes it durable within the commit window, with no shutdown and no unload.
    await wait_stored(database, "crash", written, timeout=5)
    server.kill()
    server.start()
    try:
        await assert_document(server.url("crash"), written)
    finally:
        server.stop()


async def test_room_unloads_when_idle_and_reloads_from_disk(database: str) -> None:
    async with servers_on(database) as start_server:
        server = await start_server(unload_after=0.05, compact_after=10_000)
        url = room_url(server, "idle")
        written = await write_document(url)
        await wait_for(lambda: "idle" not in server.rooms)
        # Unloading compacted the log into one snapshot.
        counts = row_counts(database, "idle")
        assert (counts["updates"], counts["snapshots"]) == (0, 1)
        await assert_document(url, written)


async def test_a_failing_disk_keeps_the_room_serving_and_loses_nothing(
    start_server: StartServer, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(commit_interval=0.01, sqlite_busy_timeout=0.05, unload_after=0)
    url = room_url(server, "disk")
    async with synced(url) as writer:
        text(writer).insert(0, "before.")
        await wait_stored(db_path, "disk", "before.")
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with caplog.at_level(logging.ERROR, logger="collab.store"):
            text(writer).insert(7, "during.")
            await wait_for(lambda: server.store.failing)
        assert "store commit failed" in caplog.text
    # The writer left and the room is idle, but it must not unload before its writes are durable.
    async with synced(url) as reader:
        assert str(text(reader)) == "before.during."
    assert "disk" in server.rooms
    blocker.execute("ROLLBACK")
    blocker.close()
    await wait_stored(db_path, "disk", "before.during.")
    await wait_for(lambda: "disk" not in server.rooms)


async def test_a_corrupt_row_refuses_that_document_only(database: str, caplog: pytest.LogCaptureFixture) -> None:
    async with servers_on(database) as start_server:
        server = await start_server()
        await write_document(room_url(server, "good"))
        async with synced(room_url(server, "damaged")) as writer:
            text(writer).insert(0, "precious")
        await server.stop()
        insert_by_hand(database, "damaged")
        server = await start_server()
        with caplog.at_level(logging.ERROR):
            client = await Client(room_url(server, "damaged")).connect()
            code, reason = await client.wait_closed()
        assert code == 1011 and "try again" in (reason or "")
        assert not client.synced.is_set(), "never served as an empty document"
        assert re.search(r"document 'damaged': stored update #\d+ does not decode", caplog.text), "names the row"
        assert "damaged" not in server.rooms
        await assert_document(room_url(server, "good"), "the quick brown fox jumps over the lazy dog ")
    assert row_counts(database, "damaged")["updates"] >= 1, "the damaged row is kept for an operator to see"
