"""What only the PostgreSQL engine does: migrations, the server lock, URLs and passwords, rows made by hand, a
long log.

The engine-agnostic contract (commits, loads, compaction, persistence across restarts, import through a
server, a 10 MB document) runs on PostgreSQL too, in test_engines.py, test_persistence.py and
test_store_contract.py; this module holds what those cannot say: a schema migrated by name under an advisory
lock, a lock PostgreSQL itself releases when a server dies, a `--db` value that may carry a password, a
`checked` column that a row put there by hand leaves false. Every test has its own fresh database
(`postgres_url`) on a real server.
"""

from __future__ import annotations

import json
import random
import threading
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from collab.errors import EXIT_CORRUPT, EXIT_IN_USE, EXIT_STORAGE, EXIT_USAGE, StorageError
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
    collab_in_process,
    http_get,
    insert_by_hand,
    keystrokes,
    one_line,
    refused,
    room_url,
    run_collab,
    run_in_process,
    servers_on,
    synced,
    text,
    text_of,
    token,
    wait_for,
    wait_stored,
    with_password,
    with_token,
)
from .postgres import database_name, free_port

MIGRATION_NAMES = [name for name, _ in MIGRATIONS]
A_NEWER_MIGRATION = "m900_from_a_newer_collab"
PASSWORD = "s3cret-do-not-print"
"""Put in URLs that have none; the shared server and private clusters trust 127.0.0.1, so it is never checked."""


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
        "webhook_config",
        "webhook_deliveries",
        "webhook_events",
        "webhook_lease",
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
        conn.execute(
            "DROP TABLE revocations, collab_server, webhook_deliveries, webhook_events, webhook_lease, webhook_config"
        )
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
    # In a subprocess: were it not refused, it would serve until collab_cli's timeout rather than for ever.
    serve = collab_cli("serve", "--port", "0", "--db", postgres_url, check=False)
    assert serve.returncode == EXIT_STORAGE
    assert A_NEWER_MIGRATION in one_line(serve.stderr)
    revoke = collab_in_process("revoke", "--db", postgres_url, "--id", "someone", check=False)
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
    password = urlsplit(postgres_url).password or PASSWORD  # a server that checks passwords wants its own
    url = with_password(postgres_url, password)
    assert isinstance(locate(url), PostgresDatabase)
    assert isinstance(locate(url.replace("postgresql://", "postgres://", 1)), PostgresDatabase)
    assert password not in redacted(url) and redacted(url).startswith("postgresql://")
    server = ServerProcess(url, "--log-format", "json").start()
    try:
        assert server.process is not None
        async with synced(server.url("notes")) as writer:
            text(writer).insert(0, "hello")
            await writer.resync()
        await wait_stored(url, "notes", "hello")  # committed, so that `collab stats` counts it
        listening = json.loads(server.wait_for_line(r'"event": "listening on ').string)
        assert listening["database"] == redacted(url)
        metrics = http_get(server.port, "/metrics")
        assert metrics.status == 200 and password.encode() not in metrics.body
        stats = await run_in_process("stats", "--db", url.replace("postgresql://", "postgres://", 1))
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
    run = collab_cli if command[0] == "serve" else collab_in_process  # serve in a subprocess, in case it serves
    result = run(*command, "--db", f"postgresql://someone:{PASSWORD}@127.0.0.1:{port}/collab", check=False)
    assert result.returncode == EXIT_STORAGE
    line = one_line(result.stderr)
    assert f"cannot connect to PostgreSQL collab on 127.0.0.1:{port}" in line
    assert PASSWORD not in line


def test_a_url_libpq_cannot_parse_is_refused_without_quoting_it() -> None:
    # libpq's own message quotes the URL, password and all.
    for url in (f"postgresql://u:{PASSWORD}@[::1/db", f"postgresql://u:{PASSWORD}%zz@127.0.0.1/db"):
        result = collab_in_process("stats", "--db", url, check=False)
        assert result.returncode == EXIT_USAGE
        assert "not a PostgreSQL URL" in one_line(result.stderr) and PASSWORD not in result.stderr


async def test_each_schema_is_a_database_of_its_own(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables and the one-server lock are per schema, chosen by `search_path` in the URL or in PGOPTIONS."""
    with connect(postgres_url) as conn:
        conn.execute("CREATE SCHEMA alpha")
        conn.execute("CREATE SCHEMA beta")
    separator = "&" if "?" in postgres_url else "?"
    alpha = f"{postgres_url}{separator}options=-csearch_path%3Dalpha"
    beta = f"{postgres_url}{separator}options=-csearch_path%3Dbeta"
    async with servers_on(alpha) as start_alpha, servers_on(beta) as start_beta:
        on_alpha, on_beta = await start_alpha(commit_interval=0.01), await start_beta(commit_interval=0.01)
        for server, typed in ((on_alpha, "in alpha"), (on_beta, "in beta")):
            async with synced(room_url(server, "notes")) as writer:
                text(writer).insert(0, typed)
                await writer.resync()
        await wait_stored(alpha, "notes", "in alpha")
        await wait_stored(beta, "notes", "in beta")
        for url, server in ((alpha, on_alpha), (beta, on_beta)):
            holder = running_server(url)
            assert holder is not None and holder["url"] == f"ws://127.0.0.1:{server.port}"
    # PGOPTIONS reaches the store's own connection too (it sets lock_timeout without replacing options).
    monkeypatch.setenv("PGOPTIONS", "-c search_path=beta")
    engine = PostgresEngine(postgres_url)
    engine.open()
    try:
        assert text_of(record.data for record in engine.load("notes")) == "in beta"
    finally:
        engine.close()
    with connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('public.documents')").fetchone() == (None,), "nothing in public"


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


async def test_a_second_server_is_refused_until_the_first_is_killed(postgres_url: str) -> None:
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
    await wait_for(lambda: running_server(postgres_url) is None, interval=0.05)
    third = ServerProcess(postgres_url).start()
    try:
        holder = running_server(postgres_url)
        assert holder is not None and holder["url"] == f"ws://127.0.0.1:{third.port}"
    finally:
        assert third.stop() == 0
    assert running_server(postgres_url) is None, "a clean stop releases it at once"


# Revocations.


async def test_revoking_a_token_closes_its_connection_on_a_server_on_postgresql(postgres_url: str) -> None:
    doomed, kept = token("notes", token_id="doomed"), token("notes", token_id="kept")
    async with servers_on(postgres_url) as start_server:
        server = await start_server(auth_secret=SECRET)
        url = room_url(server, "notes")
        async with synced(with_token(url, kept)) as healthy, synced(with_token(url, doomed)) as victim:
            text(victim).insert(0, "before ")
            await healthy.wait_until(lambda: str(text(healthy)) == "before ")
            result = await run_in_process("revoke", "--db", postgres_url, "--id", "doomed")
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
    deep = insert_by_hand(postgres_url, "deep", craft.nested_any(30_000))
    insert_by_hand(postgres_url, "wrapped", craft.text_update(7, 0, "XYZ"))
    wrapped = insert_by_hand(postgres_url, "wrapped", craft.text_update(7, MAX_CLOCK, "ab"))
    insert_by_hand(postgres_url, "by hand", craft.text_update(42, 0, "typed by hand"))
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


# A long log.


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
