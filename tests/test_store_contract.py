"""The store contract, on both persistent engines: what a user does with `--db` works the same on SQLite and
PostgreSQL.

Every test takes the `database` fixture, so it runs once on a SQLite file and once on a fresh PostgreSQL
database: history and `--at` across compactions, a damaged checkpoint that spoils only `--at`, export in every
format, `collab import` into a database nothing wrote yet and through a running server, `stats` and `rooms`, a
10 MB document, and compactions racing each other and appends from several engines at once. Restarts, kill -9,
unloading and a corrupt row are in test_persistence.py; the engines' own calls in test_engines.py.

The commands run in this process (`run_in_process`): a new interpreter per command (0.7–1 s) was most of
this module's time. `ServerProcess` is a real subprocess where a test needs one.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from pycrdt import Doc, Text, merge_updates

from collab.errors import EXIT_CORRUPT, EXIT_NOT_FOUND, EXIT_STORAGE
from collab.filenames import MANIFEST
from collab.store import Engine, WriteOp

from .helpers import (
    ServerProcess,
    checkpoint_rows,
    contents,
    doc_of,
    engine_on,
    get,
    http_get,
    keystrokes,
    one_line,
    room_url,
    row_counts,
    run_in_process,
    servers_on,
    spoil_checkpoints,
    synced,
    text,
    text_of,
    wait_for,
    wait_stored,
    with_password,
    write_backup,
    write_rich_document,
)
from .postgres import database_name


def iso(moment: float) -> str:
    """`moment` as `--at` takes it, to the microsecond (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e6):06d}Z"


async def test_history_and_at_reach_back_across_compactions(database: str) -> None:
    async with servers_on(database) as start_server:
        server = await start_server(commit_interval=0.01, compact_after=5, unload_after=0)
        async with synced(room_url(server, "diary")) as writer:
            text(writer).insert(0, "first draft")
            await wait_stored(database, "diary", "first draft")
            moment = time.time()
            await wait_for(lambda: time.time() > moment + 0.05)  # commits after this are later than the moment
            del text(writer)[0:5]
            text(writer).insert(0, "final")
            for char in "!!!!!!":
                text(writer).insert(len(str(text(writer))), char)
            await wait_stored(database, "diary", "final draft!!!!!!")
            # Read while the server runs and keeps the database.
            running = await run_in_process("export", "--db", database, "--out", "-", "--at", iso(moment), "diary")
            assert running.stdout == "first draft"
            # The HTTP API reads the same store: the listing, and the document then and now.
            listing = await get(server, "/api/docs")
            assert [doc["name"] for doc in listing.json()["documents"]] == ["diary"]
            then = await get(server, f"/api/docs/diary?format=txt&at={iso(moment)}")
            assert (then.status, then.body) == (200, b"first draft")
        await wait_for(lambda: "diary" not in server.rooms)  # unloaded: the API now reads the database
        stored = await get(server, "/api/docs/diary?format=txt")
        assert (stored.status, stored.body) == (200, b"final draft!!!!!!")
    counts = row_counts(database, "diary")
    assert counts["snapshots"] == 1 and counts["checkpoints"] >= 2, ("compacted, with history", counts)
    earlier = await run_in_process("export", "--db", database, "--out", "-", "--at", iso(moment), "diary")
    assert earlier.stdout == "first draft"
    now = await run_in_process("export", "--db", database, "--out", "-", "diary")
    assert now.stdout == "final draft!!!!!!"
    history = (await run_in_process("history", "diary", "--db", database)).stdout.splitlines()
    assert len(history) >= 2 and all(re.match(r"\d{4}-\d\d-\d\dT.*Z  (checkpoint|update)", line) for line in history)
    assert any(" checkpoint " in line for line in history), history
    too_early = await run_in_process("export", "--db", database, "--out", "-", "--at", "30d", "diary", check=False)
    assert too_early.returncode == EXIT_NOT_FOUND
    assert "collab export: document 'diary' did not exist yet at " in too_early.stderr


async def test_a_damaged_checkpoint_fails_only_the_moments_it_is_part_of(database: str) -> None:
    """The current state is the snapshot and the log since it: an export or a join never reads history, so a
    checkpoint that does not decode refuses `--at` only the moments whose chain holds it, naming it."""
    now = time.time()
    a, b, c, d = keystrokes("abcd")
    engine = engine_on(database)
    try:
        engine.commit([WriteOp("append", "diary", a, now - 30), WriteOp("append", "diary", b, now - 29)])
        engine.commit([WriteOp("compact", "diary", merge_updates(a, b), now - 20)])
        engine.commit([WriteOp("append", "diary", c, now - 10)])
        engine.commit([WriteOp("compact", "diary", merge_updates(a, b, c), now - 5)])
        engine.commit([WriteOp("append", "diary", d, now - 1)])
    finally:
        engine.close()
    chain = checkpoint_rows(database, "diary")
    assert [(at, base) for _, at, base in chain] == [(now - 30, True), (now - 29, False), (now - 10, False)]
    damaged = chain[1][0]
    spoil_checkpoints(database, "diary", [damaged])

    async def export_at(at: float) -> subprocess.CompletedProcess[str]:
        return await run_in_process("export", "--db", database, "--out", "-", "--at", iso(at), "diary", check=False)

    assert (await run_in_process("export", "--db", database, "--out", "-", "diary")).stdout == "abcd"
    assert (await export_at(now - 29.5)).stdout == "a", "the base alone"
    assert (await export_at(now - 2)).stdout == "abc", "after the last compaction: the snapshot and the log"
    for moment in (now - 25, now - 8):
        refused = await export_at(moment)
        assert refused.returncode == EXIT_CORRUPT, refused.stderr
        assert f"document 'diary': stored checkpoint #{damaged} does not decode" in one_line(refused.stderr)
    async with servers_on(database) as start_server:
        server = await start_server()
        async with synced(room_url(server, "diary")) as cold:  # loaded from the database
            assert str(text(cold)) == "abcd"


async def test_export_every_format_and_import_both_ways(database: str, another_database: str, tmp_path: Path) -> None:
    """Export txt, md, json and ydoc; import the ydoc through a running server and into a database nothing wrote
    yet, each twice: the second time changes nothing."""
    async with servers_on(database) as start_server:
        server = await start_server(commit_interval=0.01)
        expected = await write_rich_document(room_url(server, "team/plan"))
        await wait_stored(database, "team/plan", expected["content"])
        for fmt in ("txt", "md"):
            exported = await run_in_process("export", "--db", database, "--format", fmt, "--out", "-", "team/plan")
            assert exported.stdout == expected["content"]
        await run_in_process("export", "--db", database, "--format", "json", "--out", str(tmp_path / "json"))
        as_json = json.loads((tmp_path / "json" / "team%2Fplan.json").read_text())
        assert as_json["name"] == "team/plan" and as_json["size"] > 0 and as_json["state_vector"]
        assert as_json["roots"] == {
            "content": expected["content"],
            "meta": {"owner": "ada", "nested": {"depth": 2.0}},
            "items": ["one", 2.0, True],
            "prosemirror": {
                "type": "fragment",
                "children": [
                    {
                        "type": "element",
                        "name": "paragraph",
                        "attributes": {"align": "left"},
                        "children": [{"type": "text", "delta": [{"insert": "hello"}]}],
                    }
                ],
            },
        }
        await run_in_process("export", "--db", database, "--format", "ydoc", "--out", str(tmp_path / "ydoc"))
        [entry] = json.loads((tmp_path / "ydoc" / MANIFEST).read_text())["documents"]
        assert (entry["name"], entry["file"]) == ("team/plan", "team%2Fplan.ydoc")
        backup = tmp_path / "ydoc" / entry["file"]
        assert contents(doc_of([backup.read_bytes()])) == expected

        # Through the running server: connected clients see it at once, and it is stored.
        write_backup(tmp_path / "restored.ydoc", "restored from backup")
        async with synced(room_url(server, "restored")) as watcher:
            result = await run_in_process("import", str(tmp_path / "restored.ydoc"), "--db", database)
            assert f"server ws://127.0.0.1:{server.port}" in result.stderr
            await watcher.wait_until(lambda: str(text(watcher)) == "restored from backup")
            again = await run_in_process("import", str(tmp_path / "restored.ydoc"), "--db", database)
            assert "already contained in" in again.stderr
            assert str(text(watcher)) == "restored from backup"
        await wait_stored(database, "restored", "restored from backup")

    # Into a database nothing wrote yet, with no server running there: written directly.
    result = await run_in_process("import", str(backup), "--db", another_database, "--name", "copy")
    assert "merged into 'copy'" in result.stderr and "(database " in result.stderr
    rows = row_counts(another_database, "copy")
    again = await run_in_process("import", str(backup), "--db", another_database, "--name", "copy")
    assert "already contained in" in again.stderr
    assert row_counts(another_database, "copy") == rows
    # Servers started afresh on each database serve what was imported.
    async with servers_on(another_database) as start_server:
        server = await start_server()
        async with synced(room_url(server, "copy")) as reader:
            assert contents(reader.doc) == expected
    async with servers_on(database) as start_server:
        server = await start_server()
        async with synced(room_url(server, "restored")) as reader:
            assert str(text(reader)) == "restored from backup"


async def test_stats_and_rooms_list_documents_and_never_print_a_password(database: str, tmp_path: Path) -> None:
    """On PostgreSQL the URL holds a password: it must not appear in any output, log line or metric."""
    password: str | None = None
    if database.startswith("postgresql:"):
        password = urlsplit(database).password or "s3cret-never-shown"  # a server that checks passwords wants its own
        database = with_password(database, password)
    said: list[str] = []

    async def collab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = await run_in_process(*args, "--db", database, check=check)
        said.extend([result.stdout, result.stderr])
        return result

    server = ServerProcess(database, "--commit-interval", "10ms").start()
    try:
        async with synced(server.url("notes/a")) as writer:
            text(writer).insert(0, "typed")
            await wait_stored(database, "notes/a", "typed")
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
        await wait_stored(database, "notes/b", "imported")
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
        missing = database.rsplit("/", 1)[0] + f"/collab_test_missing_{uuid.uuid4().hex}"
        for command in (["stats"], ["rooms"], ["export", "--out", "-"], ["import", str(tmp_path / "b.ydoc")]):
            refused = await run_in_process(*command, "--db", missing, check=False)
            assert refused.returncode == EXIT_STORAGE, (command, refused.stderr)
            assert f"cannot connect to PostgreSQL {database_name(missing)} on " in one_line(refused.stderr)
            assert password not in refused.stdout + refused.stderr, command


TEN_MB = 10 * 2**20


async def test_a_10_mb_document_round_trips(database: str, tmp_path: Path) -> None:
    """Imported, exported, served to a client, edited, compacted on the way out, exported again as text and as
    json: all of it, in characters of one to four bytes."""
    line = "the quick brown fox, Grüße 👋\n"
    lines = (f"{n:08d} {line}" for n in range(TEN_MB // len(line.encode()) + 1))
    big = "".join(lines)
    assert len(big.encode()) >= TEN_MB
    write_backup(tmp_path / "big.ydoc", big)
    await run_in_process("import", str(tmp_path / "big.ydoc"), "--db", database, "--name", "big")
    exported = await run_in_process("export", "--db", database, "--out", "-", "big")
    assert exported.stdout == big
    async with servers_on(database) as start_server:
        server = await start_server(commit_interval=0.01, unload_after=0.05)
        async with synced(room_url(server, "big")) as reader:
            assert str(text(reader)) == big
            text(reader).insert(len(text(reader)), "the end")  # pycrdt counts UTF-8 bytes, not characters
            await reader.resync()
        await wait_for(lambda: "big" not in server.rooms)  # unloaded: compacted into one snapshot
    assert row_counts(database, "big")["snapshots"] == 1
    exported = await run_in_process("export", "--db", database, "--out", "-", "big")
    assert exported.stdout == big + "the end"
    await run_in_process("export", "--db", database, "--format", "json", "--out", str(tmp_path / "json"), "big")
    assert (
        json.loads((tmp_path / "json" / "big.json").read_text(encoding="utf-8"))["roots"]["content"] == big + "the end"
    )


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


def type_into(engine: Engine, name: str, typed: str, client_id: int) -> Doc:
    """Commit `typed` keystroke by keystroke to `name`, as a room would; the room's document."""
    room: Doc = Doc()
    for update in keystrokes(typed, client_id=client_id):
        room.apply_update(update)
        engine.commit([WriteOp("append", name, update, time.time())])
    return room


def test_a_compaction_merges_what_another_engine_wrote_and_nothing_it_wrote_itself(
    two_engines: tuple[Engine, Engine],
) -> None:
    mine, theirs = two_engines
    room = type_into(mine, "shared", "mine ", client_id=1)
    # Everything stored is this engine's own: its room's state is stored as it is, with no merge.
    mine.commit([WriteOp("compact", "shared", room.get_update(), time.time())])
    [snapshot] = mine.load("shared")
    assert snapshot.kind == "snapshot" and snapshot.data == room.get_update()
    # Another process's rows, which this room never saw, are merged into the next compaction.
    type_into(theirs, "shared", "theirs", client_id=2)
    mine.commit([WriteOp("compact", "shared", room.get_update(), time.time())])
    [merged] = mine.load("shared")
    assert merged.data != room.get_update()
    assert text_of([merged.data]) in ("mine theirs", "theirsmine ")


def test_a_row_id_another_engine_reused_for_the_same_bytes_elsewhere_is_not_taken_for_its_own(
    two_engines: tuple[Engine, Engine],
) -> None:
    """SQLite gives a new row the highest id + 1, so a deleted row's id comes back, here with the same bytes (a
    template every new document starts from) but in another document, whose room never saw them."""
    template = merge_updates(*keystrokes("TEMPLATE", client_id=99))
    mine, theirs = two_engines
    room_b = type_into(mine, "b", "own", client_id=1)
    mine.commit([WriteOp("append", "a", template, time.time())])  # the newest row of the log
    theirs.commit([WriteOp("compact", "a", doc_of(r.data for r in theirs.load("a")).get_update(), time.time())])
    theirs.commit([WriteOp("append", "b", template, time.time())])  # on SQLite: the id just freed
    mine.commit([WriteOp("compact", "b", room_b.get_update(), time.time())])
    assert text_of(record.data for record in mine.load("b")) in ("TEMPLATEown", "ownTEMPLATE")
    assert text_of(record.data for record in mine.load("a")) == "TEMPLATE"


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
            # Like a room in another process: it sees the writers' rows only when it loads them, and its
            # state never loses what it held (the contract: a compaction holds what its engine wrote).
            held = doc_of(record.data for record in engine.load(name))
            for i in range(COMPACTIONS_EACH):
                if i % 3 == 0:
                    for record in engine.load(name):
                        held.apply_update(record.data)
                # A fresh view, or one from several compactions ago that lacks what was appended since.
                commit_retried(engine, [WriteOp("compact", name, held.get_update(), time.time())], deadline)
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
