"""The store contract, on both persistent engines: what a user does with `--db` works the same on SQLite and
PostgreSQL.

Every test takes the `database` fixture, so it runs once on a SQLite file and once on a fresh PostgreSQL
database: history and `--at` across compactions, export in every format, `collab import` into a stopped
database and through a running server, `stats` and `rooms`, a 10 MB document, and compactions racing each
other and appends from several engines at once. Restarts, kill -9, unloading and a corrupt row are in
test_persistence.py; the engines' own calls in test_engines.py.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from pycrdt import Array, Doc, Map, Text

from collab.config import Settings
from collab.errors import EXIT_NOT_FOUND
from collab.filenames import MANIFEST
from collab.store import Engine, WriteOp
from collab.store.engines import locate

from .helpers import (
    ServerProcess,
    doc_of,
    http_get,
    keystrokes,
    room_url,
    row_counts,
    run_collab,
    servers_on,
    stored_text,
    synced,
    text,
    wait_for,
    write_backup,
)


def contents(doc: Doc) -> dict[str, Any]:
    return {
        "content": str(doc.get("content", type=Text)),
        "meta": doc.get("meta", type=Map).to_py(),
        "items": doc.get("items", type=Array).to_py(),
    }


async def write_rich_document(url: str) -> dict[str, Any]:
    """A text, a map and an array, written by a client and accepted by the server; what they hold."""
    async with synced(url) as writer:
        with writer.doc.transaction():
            text(writer).insert(0, "# Plan\n\nShip it. Grüße 👋\n")
            writer.doc.get("meta", type=Map)["owner"] = "ada"
            writer.doc.get("items", type=Array).extend(["one", 2, True])
        expected = contents(writer.doc)
        await writer.resync()
    return expected


def iso(moment: float) -> str:
    """`moment` as `--at` takes it, to the microsecond (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e6):06d}Z"


async def test_history_and_at_reach_back_across_compactions(database: str) -> None:
    async with servers_on(database) as start_server:
        server = await start_server(commit_interval=0.01, compact_after=5)
        async with synced(room_url(server, "diary")) as writer:
            text(writer).insert(0, "first draft")
            await wait_for(lambda: stored_text(database, "diary") == "first draft")
            moment = time.time()
            await wait_for(lambda: time.time() > moment + 0.05)  # commits after this are later than the moment
            del text(writer)[0:5]
            text(writer).insert(0, "final")
            for char in "!!!!!!":
                text(writer).insert(len(str(text(writer))), char)
            await wait_for(lambda: stored_text(database, "diary") == "final draft!!!!!!")
            # Read while the server runs and keeps the database.
            running = await run_collab("export", "--db", database, "--out", "-", "--at", iso(moment), "diary")
            assert running.stdout == "first draft"
    counts = row_counts(database, "diary")
    assert counts["snapshots"] == 1 and counts["checkpoints"] >= 2, ("compacted, with history", counts)
    earlier = await run_collab("export", "--db", database, "--out", "-", "--at", iso(moment), "diary")
    assert earlier.stdout == "first draft"
    now = await run_collab("export", "--db", database, "--out", "-", "diary")
    assert now.stdout == "final draft!!!!!!"
    history = (await run_collab("history", "diary", "--db", database)).stdout.splitlines()
    assert len(history) >= 2 and all(re.match(r"\d{4}-\d\d-\d\dT.*Z  (checkpoint|update)", line) for line in history)
    assert any(" checkpoint " in line for line in history), history
    too_early = await run_collab("export", "--db", database, "--out", "-", "--at", "30d", "diary", check=False)
    assert too_early.returncode == EXIT_NOT_FOUND
    assert "collab export: document 'diary' did not exist yet at " in too_early.stderr


async def test_export_every_format_and_import_both_ways(database: str, tmp_path: Path) -> None:
    """Export txt, md, json and ydoc; import the ydoc into the stopped database and through a running server."""
    async with servers_on(database) as start_server:
        server = await start_server(commit_interval=0.01)
        expected = await write_rich_document(room_url(server, "team/plan"))
        await wait_for(lambda: stored_text(database, "team/plan") == expected["content"])
        for fmt in ("txt", "md"):
            exported = await run_collab("export", "--db", database, "--format", fmt, "--out", "-", "team/plan")
            assert exported.stdout == expected["content"]
        await run_collab("export", "--db", database, "--format", "json", "--out", str(tmp_path / "json"))
        as_json = json.loads((tmp_path / "json" / "team%2Fplan.json").read_text())
        assert as_json["name"] == "team/plan" and as_json["size"] > 0 and as_json["state_vector"]
        assert as_json["roots"] == {
            "content": expected["content"],
            "meta": {"owner": "ada"},
            "items": ["one", 2.0, True],
        }
        await run_collab("export", "--db", database, "--format", "ydoc", "--out", str(tmp_path / "ydoc"))
        [entry] = json.loads((tmp_path / "ydoc" / MANIFEST).read_text())["documents"]
        backup = tmp_path / "ydoc" / entry["file"]
        assert contents(doc_of([backup.read_bytes()])) == expected

        # Through the running server: connected clients see it at once, and it is stored.
        write_backup(tmp_path / "restored.ydoc", "restored from backup")
        async with synced(room_url(server, "restored")) as watcher:
            result = await run_collab("import", str(tmp_path / "restored.ydoc"), "--db", database)
            assert f"server ws://127.0.0.1:{server.port}" in result.stderr
            await watcher.wait_until(lambda: str(text(watcher)) == "restored from backup")
        await wait_for(lambda: stored_text(database, "restored") == "restored from backup")

    # Into the stopped database, written directly; a second time changes nothing.
    result = await run_collab("import", str(backup), "--db", database, "--name", "copy")
    assert "merged into 'copy'" in result.stderr and "(database " in result.stderr
    rows = row_counts(database, "copy")
    again = await run_collab("import", str(backup), "--db", database, "--name", "copy")
    assert "already contained in" in again.stderr
    assert row_counts(database, "copy") == rows
    server_process = ServerProcess(database).start()
    try:
        async with synced(server_process.url("copy")) as reader:
            assert contents(reader.doc) == expected
        async with synced(server_process.url("restored")) as reader:
            assert str(text(reader)) == "restored from backup"
    finally:
        server_process.stop()


def with_password(url: str) -> tuple[str, str]:
    """`url` with a password in it, and that password: its own if it has one, else one trust auth ignores."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    password = "s3cret-never-shown"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{host}")), password


async def test_stats_and_rooms_list_documents_and_never_print_a_password(database: str, tmp_path: Path) -> None:
    """On PostgreSQL the URL holds a password: it must not appear in any output, log line or metric."""
    password: str | None = None
    if database.startswith("postgresql:"):
        database, password = with_password(database)
    said: list[str] = []

    async def collab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = await run_collab(*args, "--db", database, check=check)
        said.extend([result.stdout, result.stderr])
        return result

    server = ServerProcess(database, "--commit-interval", "10ms").start()
    try:
        async with synced(server.url("notes/a")) as writer:
            text(writer).insert(0, "typed")
            await wait_for(lambda: stored_text(database, "notes/a") == "typed")
        metrics = http_get(server.port, "/metrics")
        assert metrics.status == 200
        said.append(metrics.body.decode())
        assert http_get(server.port, "/readyz").status == 200
        stats = (await collab("stats")).stdout
        assert server.process is not None
        assert f"server:         running, pid {server.process.pid}, " in stats, stats
        assert "documents:      1" in stats
        assert (await collab("rooms")).stdout.splitlines()[1].startswith("notes/a ")
        write_backup(tmp_path / "b.ydoc", "imported")
        await collab("import", str(tmp_path / "b.ydoc"), "--name", "notes/b")
        await wait_for(lambda: stored_text(database, "notes/b") == "imported")
        not_found = await collab("export", "--out", "-", "nothing-here", check=False)
        assert not_found.returncode == EXIT_NOT_FOUND, not_found.stderr
    finally:
        server.stop()
    said.extend(server.output)
    stats = (await collab("stats")).stdout
    assert "server:         not running" in stats and "documents:      2" in stats and "log rows:" in stats
    assert [line.split()[0] for line in (await collab("rooms")).stdout.splitlines()[1:]] == ["notes/a", "notes/b"]
    await collab("history", "notes/a")
    await collab("import", str(tmp_path / "b.ydoc"), "--name", "notes/c")
    if password is not None:
        everything = "\n".join(said)
        assert ":***@" in everything, "the URL is shown, redacted"
        assert password not in everything
        missing = database.rsplit("/", 1)[0] + "/collab_test_missing"
        for command in (["stats"], ["rooms"], ["export", "--out", "-"], ["import", str(tmp_path / "b.ydoc")]):
            refused = await run_collab(*command, "--db", missing, check=False)
            assert refused.returncode != 0 and "collab_test_missing" in refused.stderr
            assert password not in refused.stdout + refused.stderr, command


TEN_MB = 10 * 2**20


async def test_a_10_mb_document_round_trips(database: str, tmp_path: Path) -> None:
    """Imported, exported, served to a client, edited, compacted on the way out, exported again: all of it."""
    lines = (f"{n:08d} the quick brown fox\n" for n in range(TEN_MB // 29 + 1))
    big = "".join(lines)
    assert len(big) >= TEN_MB
    write_backup(tmp_path / "big.ydoc", big)
    await run_collab("import", str(tmp_path / "big.ydoc"), "--db", database, "--name", "big")
    exported = await run_collab("export", "--db", database, "--out", "-", "big")
    assert exported.stdout == big
    async with servers_on(database) as start_server:
        server = await start_server(commit_interval=0.01, unload_after=0.05)
        async with synced(room_url(server, "big")) as reader:
            assert str(text(reader)) == big
            text(reader).insert(len(big), "the end")
            await reader.resync()
        await wait_for(lambda: "big" not in server.rooms)  # unloaded: compacted into one snapshot
    assert row_counts(database, "big")["snapshots"] == 1
    exported = await run_collab("export", "--db", database, "--out", "-", "big")
    assert exported.stdout == big + "the end"


# 100 compactions of one document, from several engines at once, while others keep appending.

WRITERS = 4
COMPACTORS = 4
COMPACTIONS_EACH = 25
KEYSTROKES = 3000
"""Per writer, at most: writers type until every compaction is done (or they run out)."""
DEADLINE_S = 60.0
RETRIES = 200


def commit_retried(engine: Engine, batch: list[WriteOp], deadline: float) -> None:
    """Commit `batch` until it succeeds, as the store retries a failed group commit.

    Only a lock held elsewhere counts as a reason: SQLite refusing a write transaction that started reading
    before another writer committed ("database is locked"), PostgreSQL's lock timeout. Anything else fails
    the test.
    """
    for failures in range(RETRIES):
        try:
            engine.commit(batch)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.001 * (failures + 1))
    raise AssertionError(f"still failing after {RETRIES} tries")


def engine_on(database: str) -> Engine:
    """An opened engine of its own on `database`. SQLite syncs with `normal` here: an fsync per keystroke made
    this test take 18 s instead of 2, and what it checks is what compaction deletes, not power loss."""
    engine = locate(database).engine(Settings(db=database, sqlite_synchronous="normal"))
    engine.open()
    return engine


def test_concurrent_compactions_lose_no_update_appended_meanwhile(database: str) -> None:
    """Compactions that see less than other engines committed must merge what they read and delete only that.

    Each compactor has its own engine (its own connection) and compacts with the room state it holds:
    freshly loaded, loaded long ago, or empty, as a room on another process would be. Writers, each with
    its own engine and Yjs client id, commit one keystroke per transaction meanwhile.
    """
    name = "contended"
    typed = [
        f"<w{n}:" + "".join(chr(97 + (k * 7 + n) % 26) for k in range(KEYSTROKES - 5)) + ">" for n in range(WRITERS)
    ]
    updates = [keystrokes(chars, client_id=1000 + n) for n, chars in enumerate(typed)]
    deadline = time.monotonic() + DEADLINE_S
    appended = [1] * WRITERS
    failures: list[BaseException] = []
    compactions = [0] * COMPACTORS
    compacting_done = threading.Event()
    first = engine_on(database)
    first.commit([WriteOp("append", name, updates[n][0], time.time()) for n in range(WRITERS)])
    first.close()

    def write(n: int) -> None:
        engine = engine_on(database)
        try:
            for update in updates[n][1:]:
                if compacting_done.is_set() or time.monotonic() > deadline:
                    break
                commit_retried(engine, [WriteOp("append", name, update, time.time())], deadline)
                appended[n] += 1
        finally:
            engine.close()

    def compact(c: int) -> None:
        engine = engine_on(database)
        try:
            held = doc_of(record.data for record in engine.load(name)).get_update()
            for i in range(COMPACTIONS_EACH):
                if i % 3 == 0:
                    held = doc_of(record.data for record in engine.load(name)).get_update()
                # A fresh view, one from several compactions ago, or nothing at all.
                snapshot = Doc().get_update() if i % 3 == 2 else held
                commit_retried(engine, [WriteOp("compact", name, snapshot, time.time())], deadline)
                compactions[c] += 1
        finally:
            engine.close()

    def guarded(work: Callable[[int], None], n: int) -> Callable[[], None]:
        def run() -> None:
            try:
                work(n)
            except BaseException as error:
                failures.append(error)

        return run

    writers = [threading.Thread(target=guarded(write, n)) for n in range(WRITERS)]
    compactors = [threading.Thread(target=guarded(compact, c)) for c in range(COMPACTORS)]
    for thread in writers + compactors:
        thread.start()
    for thread in compactors:
        thread.join(DEADLINE_S + 10)
    appended_while_compacting = sum(appended)
    compacting_done.set()
    for thread in writers:
        thread.join(DEADLINE_S + 10)
    assert not any(thread.is_alive() for thread in writers + compactors), "a thread never finished"
    if failures:
        raise failures[0]
    assert sum(compactions) == COMPACTORS * COMPACTIONS_EACH == 100
    assert appended_while_compacting > 4 * WRITERS, ("the writers kept appending during the compactions", appended)

    def stored() -> str:
        engine = engine_on(database)
        try:
            return str(doc_of(record.data for record in engine.load(name)).get("content", type=Text))
        finally:
            engine.close()

    def assert_holds_every_keystroke(content: str) -> None:
        for n in range(WRITERS):
            assert typed[n][: appended[n]] in content, f"writer {n} lost keystrokes ({appended[n]} appended)"
        assert len(content) == sum(appended)

    assert_holds_every_keystroke(stored())
    # One more compaction, with nothing at all: what is stored is merged in, and then the log is gone.
    last = engine_on(database)
    try:
        last.commit([WriteOp("compact", name, Doc().get_update(), time.time())])
    finally:
        last.close()
    assert_holds_every_keystroke(stored())
    counts = row_counts(database, name)
    assert (counts["snapshots"], counts["updates"]) == (1, 0), counts
