"""What only the PostgreSQL engine does: migrations, the server lock, URLs and passwords, rows made by hand, size.

The engine-agnostic contract (commits, loads, compaction, persistence across restarts) runs on PostgreSQL
too, in test_engines.py, test_persistence.py and test_store_contract.py; this module holds what those
cannot say: a schema migrated by name under an advisory lock, a lock PostgreSQL itself releases when a
server dies, a `--db` value that may carry a password, a `checked` column that a row put there by hand
leaves false. Every test has its own fresh database (`postgres_url`) on a real server.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from pycrdt import Doc, Text

from collab.errors import EXIT_CORRUPT, EXIT_IN_USE, EXIT_STORAGE, StorageError
from collab.store import WriteOp
from collab.store.engines import PostgresDatabase, locate, redacted
from collab.store.postgres import MIGRATIONS, PostgresEngine
from collab.store.postgres_read import PostgresReader, running_server
from collab.sync.yupdate import MAX_CLOCK

from . import craft
from .helpers import (
    SECRET,
    ServerProcess,
    collab_cli,
    http_get,
    keystrokes,
    refused,
    room_url,
    run_collab,
    servers_on,
    stored_text,
    synced,
    text,
    text_of,
    token,
    wait_for,
    with_token,
    write_backup,
)
from .postgres import database_name, free_port

MIGRATION_NAMES = [name for name, _ in MIGRATIONS]
A_NEWER_MIGRATION = "m900_from_a_newer_collab"
PASSWORD = "s3cret-do-not-print"
"""Added to URLs that have none; the shared server and private clusters trust 127.0.0.1, so it is never checked."""


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection of the test's own, outside collab, committing each statement."""
    return psycopg.connect(url, autocommit=True)


def migrations(url: str) -> list[str]:
    """The names in collab_migrations, in the order they were applied (one transaction shares a time: heap order)."""
    with connect(url) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM collab_migrations ORDER BY applied_at, ctid")]


def everything(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table in the public schema with all its rows, to compare a database before and after."""
    with connect(url) as conn:
        tables = [
            table
            for (table,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
            )
        ]
        return {
            table: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(table))).fetchall()
            for table in tables
        }


def with_password(url: str) -> tuple[str, str]:
    """`url` with a password in it, and that password: its own if it has one, else `PASSWORD`."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{PASSWORD}@{host}")), PASSWORD


def one_line(stderr: str) -> str:
    """`stderr`, which must be one line and no traceback."""
    assert "Traceback" not in stderr, stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    return stderr


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition outside any event loop (another process's state), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def hand_insert(url: str, room: str, data: bytes) -> int:
    """Append `data` to `room`'s log as a person with psql would (checked left to its default), creating the
    document if it is new; the row's id."""
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO documents (name, created_at, updated_at) VALUES (%s, 0, 0) ON CONFLICT (name) DO NOTHING",
            [room],
        )
        row = conn.execute(
            "INSERT INTO updates (doc_id, created_at, data) SELECT id, 0, %s FROM documents WHERE name = %s"
            " RETURNING id, checked",
            [data, room],
        ).fetchone()
    assert row is not None and row[1] is False, "the column's default says: never walked"
    return int(row[0])


# Migrations.


def test_a_fresh_database_gets_every_migration_once_by_name_in_order(postgres_url: str) -> None:
    engine = PostgresEngine(postgres_url)
    engine.open()
    engine.close()
    assert migrations(postgres_url) == MIGRATION_NAMES
    assert set(everything(postgres_url)) == {
        "checkpoints",
        "collab_migrations",
        "collab_server",
        "documents",
        "revocations",
        "snapshots",
        "updates",
    }
    before = everything(postgres_url)["collab_migrations"]
    engine.open()
    engine.close()
    assert everything(postgres_url)["collab_migrations"] == before, "opening again applies nothing, not even again"


def test_an_older_database_gets_only_the_migrations_it_lacks(postgres_url: str) -> None:
    """A database the first collab with PostgreSQL made: its documents stay, the later tables are added."""
    engine = PostgresEngine(postgres_url)
    engine.open()
    engine.commit([WriteOp("append", "kept", craft.text_update(1, 0, "from before"), 1.0)])
    engine.close()
    with connect(postgres_url) as conn:  # back to what only the first migration made
        conn.execute("DROP TABLE revocations, collab_server")
        conn.execute("DELETE FROM collab_migrations WHERE name <> %s", [MIGRATION_NAMES[0]])
    engine.open()
    try:
        assert migrations(postgres_url) == MIGRATION_NAMES
        assert text_of(record.data for record in engine.load("kept")) == "from before"
    finally:
        engine.close()


def test_a_database_a_newer_collab_migrated_is_refused_and_left_untouched(postgres_url: str) -> None:
    engine = PostgresEngine(postgres_url)
    engine.open()
    engine.commit([WriteOp("append", "notes", craft.text_update(1, 0, "written"), 1.0)])
    engine.close()
    with connect(postgres_url) as conn:
        # A migration this collab does not know, and one of ours missing: refusing must come before applying
        # anything, or the missing one would be created in a schema this collab does not understand.
        conn.execute("INSERT INTO collab_migrations (name) VALUES (%s)", [A_NEWER_MIGRATION])
        conn.execute("DELETE FROM collab_migrations WHERE name = 'm003_server'")
        conn.execute("DROP TABLE collab_server")
    before = everything(postgres_url)
    with pytest.raises(StorageError, match=rf"migrated by a newer collab \({A_NEWER_MIGRATION}\); upgrade collab"):
        PostgresEngine(postgres_url).open()
    serve = collab_cli("serve", "--port", "0", "--db", postgres_url, check=False)
    assert serve.returncode == EXIT_STORAGE
    assert A_NEWER_MIGRATION in one_line(serve.stderr)
    revoke = collab_cli("revoke", "--db", postgres_url, "--id", "someone", check=False)
    assert revoke.returncode == EXIT_STORAGE
    assert A_NEWER_MIGRATION in one_line(revoke.stderr)
    assert everything(postgres_url) == before, "nothing applied, nothing written"


def test_servers_starting_together_on_an_empty_database_do_not_race(postgres_url: str) -> None:
    """Eight engines open at the same moment: the advisory lock makes seven wait, then find nothing to do."""
    engines = [PostgresEngine(postgres_url) for _ in range(8)]
    start = threading.Barrier(len(engines), timeout=30)
    errors: list[BaseException] = []

    def open_engine(engine: PostgresEngine) -> None:
        try:
            start.wait()
            engine.open()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_engine, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not any(thread.is_alive() for thread in threads), "an open() hung"
        assert errors == []
        assert migrations(postgres_url) == MIGRATION_NAMES
        for number, engine in enumerate(engines):
            engine.commit([WriteOp("append", f"doc{number}", craft.text_update(number + 1, 0, "x"), 1.0)])
        assert [info.name for info in engines[0].documents()] == sorted(f"doc{number}" for number in range(8))
    finally:
        for engine in engines:
            engine.close()


# --db values and passwords.


async def test_no_output_of_a_server_on_postgresql_shows_the_password(postgres_url: str) -> None:
    """The startup line, /metrics, `collab stats` (through the postgres:// spelling) and the shutdown lines."""
    url, password = with_password(postgres_url)
    assert isinstance(locate(url), PostgresDatabase)
    assert isinstance(locate(url.replace("postgresql://", "postgres://", 1)), PostgresDatabase)
    assert password not in redacted(url) and redacted(url).startswith("postgresql://")
    server = ServerProcess(url, "--log-format", "json").start()
    try:
        assert server.process is not None
        async with synced(server.url("notes")) as writer:
            text(writer).insert(0, "hello")
            await writer.resync()
        listening = json.loads(server.wait_for_line(r'"event": "listening on ').string)
        assert listening["database"] == redacted(url)
        metrics = http_get(server.port, "/metrics")
        assert metrics.status == 200 and password.encode() not in metrics.body
        stats = await run_collab("stats", "--db", url.replace("postgresql://", "postgres://", 1))
        assert password not in stats.stdout + stats.stderr
        lines = dict(line.split(":", 1) for line in stats.stdout.splitlines())
        host = urlsplit(postgres_url).hostname
        assert lines["database"].strip().startswith(f"PostgreSQL {database_name(postgres_url)} on {host}:")
        assert lines["server"].strip() == f"running, pid {server.process.pid}, ws://127.0.0.1:{server.port}"
        assert lines["documents"].strip() == "1"
    finally:
        assert server.stop() == 0
    assert password not in "".join(server.output)
    described = locate(url).describe()
    assert described.startswith(f"PostgreSQL {database_name(postgres_url)} on ") and password not in described


@pytest.mark.parametrize(
    "command",
    [["stats"], ["rooms"], ["export", "--out", "-", "notes"], ["serve", "--port", "0"]],
    ids=["stats", "rooms", "export", "serve"],
)
def test_an_unreachable_server_is_one_line_without_the_password(command: list[str]) -> None:
    port = free_port()
    result = collab_cli(*command, "--db", f"postgresql://someone:{PASSWORD}@127.0.0.1:{port}/collab", check=False)
    assert result.returncode == EXIT_STORAGE
    line = one_line(result.stderr)
    assert f"cannot connect to PostgreSQL collab on 127.0.0.1:{port}" in line
    assert PASSWORD not in line


def test_pg_variables_fill_in_what_the_url_leaves_out(postgres_url: str) -> None:
    engine = PostgresEngine(postgres_url)
    engine.open()
    engine.commit([WriteOp("append", "notes", craft.text_update(1, 0, "found"), 1.0)])
    engine.close()
    parts = urlsplit(postgres_url)
    environment = {"PGHOST": parts.hostname or "", "PGPORT": str(parts.port or 5432), "PGUSER": parts.username or ""}
    if parts.password:
        environment["PGPASSWORD"] = parts.password
    dbname = database_name(postgres_url)
    stats = collab_cli("stats", "--db", f"postgresql:///{dbname}", env=environment)
    assert f"PostgreSQL {dbname} on {environment['PGHOST']}:{environment['PGPORT']} " in stats.stdout
    assert "documents:      1" in stats.stdout
    exported = collab_cli("export", "--db", f"postgresql:///{dbname}", "--out", "-", "notes", env=environment)
    assert exported.stdout == "found"


# The server lock.


def test_a_second_server_is_refused_until_the_first_is_killed(postgres_url: str) -> None:
    first = ServerProcess(postgres_url).start()
    try:
        assert first.process is not None
        holder = running_server(postgres_url)
        assert holder is not None
        assert (holder["url"], holder["pid"]) == (f"ws://127.0.0.1:{first.port}", first.process.pid)
        second = collab_cli("serve", "--port", "0", "--db", postgres_url, check=False)
        assert second.returncode == EXIT_IN_USE
        line = one_line(second.stderr)
        assert f"is in use by pid {first.process.pid} on " in line and f"ws://127.0.0.1:{first.port}" in line
    finally:
        first.kill()
    # PostgreSQL ends the dead server's session, and the advisory lock with it; no stale lock to remove.
    eventually(lambda: running_server(postgres_url) is None)
    third = ServerProcess(postgres_url).start()
    try:
        holder = running_server(postgres_url)
        assert holder is not None and holder["url"] == f"ws://127.0.0.1:{third.port}"
    finally:
        assert third.stop() == 0
    assert running_server(postgres_url) is None, "a clean stop releases it at once"


async def test_import_into_a_database_a_server_holds_goes_through_it(postgres_url: str, tmp_path: Path) -> None:
    write_backup(tmp_path / "restored.ydoc", "restored from backup")
    async with servers_on(postgres_url) as start_server:
        server = await start_server()
        async with synced(room_url(server, "restored")) as watcher:
            result = await run_collab("import", str(tmp_path / "restored.ydoc"), "--db", postgres_url)
            assert f"server ws://127.0.0.1:{server.port}" in result.stderr
            await watcher.wait_until(lambda: str(text(watcher)) == "restored from backup")
            again = await run_collab("import", str(tmp_path / "restored.ydoc"), "--db", postgres_url)
            assert "already contained in" in again.stderr
        await wait_for(lambda: stored_text(postgres_url, "restored") == "restored from backup")


# Revocations.


async def test_revoking_a_token_closes_its_connection_on_a_server_on_postgresql(postgres_url: str) -> None:
    doomed, kept = token("notes", token_id="doomed"), token("notes", token_id="kept")
    async with servers_on(postgres_url) as start_server:
        server = await start_server(auth_secret=SECRET)
        url = room_url(server, "notes")
        async with synced(with_token(url, kept)) as healthy, synced(with_token(url, doomed)) as victim:
            text(victim).insert(0, "before ")
            await healthy.wait_until(lambda: str(text(healthy)) == "before ")
            result = await run_collab("revoke", "--db", postgres_url, "--id", "doomed")
            assert "revoked token 'doomed'" in result.stderr
            assert (await victim.wait_closed())[0] == 4401
            assert victim.permission_denied == "permission denied: token revoked"
            text(healthy).insert(7, "after")
            await healthy.resync()
            assert healthy.close_code is None
        await server.stop()
        restarted = await start_server(auth_secret=SECRET)  # reads the revocations stored before it started
        again = await refused(with_token(room_url(restarted, "notes"), doomed))
        assert again.close_code == 4401 and again.permission_denied == "permission denied: token revoked"
        async with synced(with_token(room_url(restarted, "notes"), kept)) as fresh:
            assert str(text(fresh)) == "before after"


# Rows put in by hand.


async def test_rows_inserted_by_hand_are_walked_before_pycrdt_reads_them(postgres_url: str) -> None:
    """A row that would kill the process (a stack overflow) or panic pycrdt (a wrapped clock) refuses its
    document only, naming the row; a valid one loads; the server lives on. In a subprocess: were the walk
    skipped, the crash would end the server, not the test run."""
    server = ServerProcess(postgres_url).start()
    try:
        async with synced(server.url("good")) as writer:
            text(writer).insert(0, "still good")
            await writer.resync()
    finally:
        assert server.stop() == 0
    deep = hand_insert(postgres_url, "deep", craft.nested_any(30_000))
    hand_insert(postgres_url, "wrapped", craft.text_update(7, 0, "XYZ"))
    wrapped = hand_insert(postgres_url, "wrapped", craft.text_update(7, MAX_CLOCK, "ab"))
    hand_insert(postgres_url, "by hand", craft.text_update(42, 0, "typed by hand"))
    server.start()
    try:
        for room, row in (("deep", deep), ("wrapped", wrapped)):
            client = await refused(server.url(room))
            assert client.close_code == 1011 and "try again" in (client.close_reason or "")
            assert not client.synced.is_set(), "never served as an empty document"
            server.wait_for_line(rf"document '{room}': stored update #{row} does not decode", timeout=10)
            exported = await run_collab("export", "--db", postgres_url, "--out", "-", room, check=False)
            assert exported.returncode == EXIT_CORRUPT
            assert f"stored update #{row} does not decode" in one_line(exported.stderr)
        async with synced(server.url("by hand")) as reader:
            assert str(text(reader)) == "typed by hand"
        async with synced(server.url("good")) as reader:
            assert str(text(reader)) == "still good"
        assert server.process is not None and server.process.poll() is None
    finally:
        assert server.stop() == 0


# Size.


def test_a_ten_megabyte_document_round_trips_through_the_engine_and_export(postgres_url: str, tmp_path: Path) -> None:
    alphabet = "abcdefghijklmnopqrstuvwxyz ÄÖÜßéñ👋\n"
    block = "".join(random.Random(11).choices(alphabet, k=4096))
    typed = block * (10 * 2**20 // len(block.encode()) + 1)
    assert len(typed.encode()) > 10 * 2**20
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, typed)
    update = doc.get_update()
    engine = PostgresEngine(postgres_url)
    engine.open()
    try:
        engine.commit([WriteOp("append", "big", update, 1.0)])
        [record] = engine.load("big")
        assert record.data == update
        engine.commit([WriteOp("compact", "big", update, 2.0)])
        [snapshot] = engine.load("big")
        assert snapshot.kind == "snapshot" and text_of([snapshot.data]) == typed
    finally:
        engine.close()
    exported = collab_cli("export", "--db", postgres_url, "--format", "txt", "--out", "-", "big")
    assert exported.stdout == typed
    collab_cli("export", "--db", postgres_url, "--format", "json", "--out", str(tmp_path), "big")
    assert json.loads((tmp_path / "big.json").read_text(encoding="utf-8"))["roots"]["content"] == typed


def test_a_long_log_loads_in_order(postgres_url: str) -> None:
    typed = "".join(random.Random(5).choices("abc def\n", k=20_000))
    updates = keystrokes(typed)
    engine = PostgresEngine(postgres_url)
    engine.open()
    try:
        for start in range(0, len(updates), 5_000):  # four group commits, as a busy server makes them
            batch = updates[start : start + 5_000]
            engine.commit([WriteOp("append", "long", data, 1.0 + start + index) for index, data in enumerate(batch)])
        records = engine.load("long")
        assert [record.data for record in records] == updates
        assert all(record.kind == "update" and record.checked for record in records)
        assert [record.id for record in records] == sorted(record.id for record in records)
        assert engine.documents("long")[0].log_length == len(updates)
    finally:
        engine.close()
    with PostgresReader(postgres_url) as reader:
        assert [record.data for record in reader.records("long")] == updates
    assert text_of(updates) == typed
