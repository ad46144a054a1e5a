"""Deleting and renaming documents in the store, on SQLite, PostgreSQL and the in-memory engine.

What a delete removes (every row, history included: a document later made by that name starts empty, with a
new id), what a rename keeps (rows, history, times), what both refuse (an unknown name, a name taken), that
writes queued before them are neither lost nor brought back, and what an engine caching ids, or a second engine
on the same database (as another process has), writes afterwards.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pycrdt import Doc, merge_updates

from collab.config import Settings
from collab.errors import AlreadyExistsError, NotFoundError, StorageError
from collab.store import Engine, StoredRecord, WriteOp
from collab.store.engines import open_reader, open_store
from collab.store.group_commit import GroupCommitStore
from collab.store.sqlite import SQLiteEngine

from .helpers import engine_on, keystrokes, text_of

TABLES = ("snapshots", "updates", "checkpoints")


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def db(request: pytest.FixtureRequest) -> str:
    """The `--db` value of a fresh database, once per engine (memory: has no readers and one engine only)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_path"))
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return "memory:"


def persistent(db: str) -> bool:
    return db != "memory:"


def settings(db: str, **options: Any) -> Settings:
    return Settings(db=db, sqlite_synchronous="normal", **options)


@asynccontextmanager
async def store_on(db: str, **options: Any) -> AsyncIterator[GroupCommitStore[Engine]]:
    """A started store on `db`, committing at once unless `commit_interval` says otherwise; closed after."""
    store = open_store(settings(db, **{"commit_interval": 0.0, **options}))
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def text_in(records: Iterable[StoredRecord]) -> str:
    return text_of(record.data for record in records)


def append(engine: Engine, name: str, typed: str, client_id: int) -> Doc:
    """Commit `typed` to `name` in one commit, as a room would; the room's document."""
    room: Doc = Doc()
    for update in keystrokes(typed, client_id=client_id):
        room.apply_update(update)
    engine.commit([WriteOp("append", name, room.get_update(), time.time())])
    return room


def query(db: str, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of `sql` (with `?` placeholders) read straight from the database."""
    if db.startswith("postgresql:"):
        with psycopg.connect(db) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, params or []).fetchall()


def doc_id(db: str, name: str) -> int:
    [(found,)] = query(db, "SELECT id FROM documents WHERE name = ?", [name])
    return int(found)


def rows_of_no_document(db: str) -> dict[str, int]:
    """Rows whose document is gone, per table: what a delete must leave none of."""
    return {
        table: query(db, f"SELECT count(*) FROM {table} WHERE doc_id NOT IN (SELECT id FROM documents)")[0][0]
        for table in TABLES
    }


async def test_a_deleted_document_is_gone_with_its_history_and_its_name_starts_afresh(db: str) -> None:
    old = keystrokes("old text", client_id=1)
    async with store_on(db) as store:
        store.append("other", merge_updates(*keystrokes("kept", client_id=2)))
        await store.flush()  # "doc" is then the newest document: SQLite used to hand its id out again
        for update in old[:4]:
            store.append("doc", update)
        store.compact("doc", merge_updates(*old[:4]))  # history: the log so far becomes checkpoints
        for update in old[4:]:
            store.append("doc", update)
        await store.flush()
        [before] = await store.documents("doc")
        if persistent(db):
            assert query(db, "SELECT count(*) FROM checkpoints")[0][0] > 0, "there was history to delete"
            old_id = doc_id(db, "doc")

        await store.delete("doc")
        assert await store.documents("doc") == [] and await store.load("doc") == []
        assert [info.name for info in await store.documents()] == ["other"]
        assert text_in(await store.load("other")) == "kept"
        if persistent(db):
            assert rows_of_no_document(db) == dict.fromkeys(TABLES, 0)
            with open_reader(db) as reader:
                assert reader.documents("doc") == [] and reader.records("doc") == []
                assert reader.history("doc") == [] and reader.dump("doc") is None

        moment = time.time()
        store.append("doc", merge_updates(*keystrokes("new", client_id=3)))
        await store.flush()
        assert text_in(await store.load("doc")) == "new"
        [after] = await store.documents("doc")
        assert after.created_at >= moment > before.updated_at and after.log_length == 1
        if persistent(db):
            assert doc_id(db, "doc") > old_id, "a new id, never one used before"
            with open_reader(db) as reader:
                assert [point.at >= moment for point in reader.history("doc")] == [True]
                assert reader.records("doc", at=moment - 0.001) == [], "nothing of the old document at any time"
                dump = reader.dump("doc")
                assert dump is not None and [row.kind for row in dump.rows] == ["update"]


async def test_deleting_an_unknown_name_is_refused_and_changes_nothing(db: str) -> None:
    async with store_on(db) as store:
        store.append("kept", merge_updates(*keystrokes("kept")))
        await store.flush()
        listed = await store.documents()
        with pytest.raises(NotFoundError, match="no document named 'missing'"):
            await store.delete("missing")
        assert await store.documents() == listed
    engine = engine_on(db)  # for memory:, an empty database of its own
    try:
        assert engine.delete("missing") is False
        assert [info.name for info in engine.documents()] == ([] if db == "memory:" else ["kept"])
    finally:
        engine.close()


async def test_writes_queued_before_a_delete_or_rename_are_committed_first(db: str) -> None:
    """Nothing commits by itself here (a minute's window): a delete commits what was queued for the name first,
    so that no queued write lands after it and brings back part of what was deleted, and a rename what was
    queued for the old name, which it then carries to the new one."""
    async with store_on(db, commit_interval=60.0) as store:
        for update in keystrokes("queued"):
            store.append("doc", update)
        for update in keystrokes("moved", client_id=7):
            store.append("a", update)
        await store.delete("doc")  # not refused as unknown: what was queued made it, then it was deleted
        assert await store.load("doc") == []
        assert store.pending == 0, "the rest of that group was committed with it"
        for update in keystrokes("after", client_id=5):
            store.append("doc", update)
        for update in keystrokes("!", client_id=8):
            store.append("a", update)
        await store.rename("a", "b")
        assert store.pending == 0
        assert text_in(await store.load("b")) == "moved!" and await store.load("a") == []
        assert text_in(await store.load("doc")) == "after"


async def test_a_rename_keeps_rows_history_and_times_and_the_old_name_is_unknown(db: str) -> None:
    typed = keystrokes("renamed document", client_id=1)
    async with store_on(db) as store:
        for update in typed[:5]:
            store.append("a", update)
        store.compact("a", merge_updates(*typed[:5]))
        for update in typed[5:]:
            store.append("a", update)
        store.append("b", merge_updates(*keystrokes("b")))
        await store.flush()
        await store.delete("b")  # a name used before is free again
        records = await store.load("a")
        [info] = await store.documents("a")
        if persistent(db):
            with open_reader(db) as reader:
                history, dump = reader.history("a"), reader.dump("a")
            assert dump is not None and any(row.kind == "checkpoint" for row in dump.rows)
            dumped_as_b = dataclasses.replace(dump, name="b")
            identity = doc_id(db, "a")

        await store.rename("a", "b")
        assert await store.load("a") == [] and await store.documents("a") == []
        assert await store.load("b") == records
        assert text_in(records) == "renamed document"
        assert await store.documents() == [dataclasses.replace(info, name="b")], "times and sizes kept"
        if persistent(db):
            with open_reader(db) as reader:
                assert reader.history("b") == history and reader.history("a") == []
                assert reader.dump("b") == dumped_as_b and reader.dump("a") is None
            assert doc_id(db, "b") == identity


async def test_a_rename_onto_a_stored_name_or_from_an_unknown_one_is_refused_and_changes_nothing(db: str) -> None:
    async with store_on(db) as store:
        store.append("a", merge_updates(*keystrokes("a", client_id=1)))
        store.append("b", merge_updates(*keystrokes("b", client_id=2)))
        await store.flush()
        listed = await store.documents()
        for old, new in (("a", "b"), ("a", "a")):
            with pytest.raises(AlreadyExistsError, match=f"a document named '{new}' exists already"):
                await store.rename(old, new)
        for old, new in (("missing", "c"), ("missing", "a")):
            with pytest.raises(NotFoundError, match="no document named 'missing'"):
                await store.rename(old, new)
        assert await store.documents() == listed
        assert [text_in(await store.load(name)) for name in ("a", "b")] == ["a", "b"]
        assert await store.documents("c") == []


async def test_a_write_queued_for_the_new_name_before_a_rename_makes_it_refused(db: str) -> None:
    """A room that just created `new` has its first write queued: it is committed first, so the rename sees it."""
    async with store_on(db, commit_interval=60.0) as store:
        store.append("a", merge_updates(*keystrokes("a")))
        await store.flush()
        store.append("b", merge_updates(*keystrokes("b")))
        with pytest.raises(AlreadyExistsError):
            await store.rename("a", "b")
        assert [info.name for info in await store.documents()] == ["a", "b"]


def test_after_a_rename_or_delete_the_engine_writes_to_the_name_it_is_given(db: str) -> None:
    """An engine caches document ids by name for its commits: a compaction after a rename goes to the new
    name, a write to the old name makes a new document, and a write after a delete too."""
    engine = engine_on(db)
    try:
        room = append(engine, "a", "first", client_id=1)
        engine.rename("a", "b")
        engine.commit([WriteOp("compact", "b", room.get_update(), time.time())])
        assert [record.kind for record in engine.load("b")] == ["snapshot"] and text_in(engine.load("b")) == "first"
        append(engine, "a", "second", client_id=2)
        assert text_in(engine.load("a")) == "second" and text_in(engine.load("b")) == "first"
        assert engine.delete("a") and not engine.delete("a")
        append(engine, "a", "third", client_id=3)
        engine.commit([WriteOp("compact", "a", engine.load("a")[0].data, time.time())])
        assert text_in(engine.load("a")) == "third" and text_in(engine.load("b")) == "first"
        assert [info.name for info in engine.documents()] == ["a", "b"]
    finally:
        engine.close()


def test_an_engine_commits_to_a_name_another_engine_deleted_or_renamed_as_a_new_document(
    database: str, two_engines: tuple[Engine, Engine]
) -> None:
    """The other engine caches the ids of documents it wrote: after a delete or rename elsewhere, its next commit
    to the name makes a new document at the first try (no failed commit to retry), and never writes to the
    renamed one."""
    mine, theirs = two_engines
    append(mine, "x", "mine x", client_id=1)
    append(mine, "y", "mine y", client_id=1)
    deleted_id = doc_id(database, "x")
    assert theirs.delete("x")
    theirs.rename("y", "z")
    append(mine, "x", "again", client_id=2)
    append(mine, "y", "fresh", client_id=2)
    assert [text_in(mine.load(name)) for name in ("x", "y", "z")] == ["again", "fresh", "mine y"]
    assert doc_id(database, "x") > deleted_id
    assert [info.name for info in theirs.documents()] == ["x", "y", "z"]
    assert rows_of_no_document(database) == dict.fromkeys(TABLES, 0)


def test_a_document_id_is_never_handed_out_again(database: str, two_engines: tuple[Engine, Engine]) -> None:
    """An engine knows the rows it wrote by document id, row id and bytes (`OwnRows`), and does not merge them
    into a compaction again. SQLite hands a freed row id out again, and used to hand out the deleted newest
    document's id too: here the same bytes (a template every document starts from) in the same row, of a
    document made by another engine after the delete, would have been taken for the deleted one's, and left out
    of the compaction of a room that never saw them."""
    template = merge_updates(*keystrokes("TEMPLATE", client_id=99))
    mine, theirs = two_engines
    mine.commit([WriteOp("append", "x", template, time.time())])  # the newest document, and the newest row
    deleted_id = doc_id(database, "x")
    assert theirs.delete("x")
    theirs.commit([WriteOp("append", "y", template, time.time())])  # on SQLite: the row id just freed
    assert doc_id(database, "y") > deleted_id
    room = append(mine, "y", "own", client_id=1)  # mine's room for "y" holds only what it wrote
    mine.commit([WriteOp("compact", "y", room.get_update(), time.time())])
    assert text_in(mine.load("y")) in ("TEMPLATEown", "ownTEMPLATE")


async def test_a_delete_or_rename_the_database_refuses_raises_to_the_caller(db_path: Path) -> None:
    """Unlike a commit it is not retried: the caller says why, and nothing changed."""
    async with store_on(str(db_path), sqlite_busy_timeout=0.05) as store:
        store.append("doc", merge_updates(*keystrokes("kept")))
        await store.flush()
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
            with pytest.raises(StorageError, match="database is locked"):
                await store.delete("doc")
            with pytest.raises(StorageError, match="database is locked"):
                await store.rename("doc", "elsewhere")
            other.execute("ROLLBACK")
        assert [info.name for info in await store.documents()] == ["doc"]
        assert not store.failing, "commits are not affected"
        await store.rename("doc", "elsewhere")
        assert text_in(await store.load("elsewhere")) == "kept"


def test_a_file_from_before_ids_were_kept_unique_is_migrated_with_its_documents(db_path: Path) -> None:
    """m005 rebuilds `documents` with AUTOINCREMENT; every row and every reference to it stays as it was."""
    engine = SQLiteEngine(db_path)
    engine.open()
    append(engine, "a", "first", client_id=1)
    append(engine, "b", "second", client_id=2)
    engine.close()
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:  # as an older collab left it
        conn.executescript(
            """CREATE TABLE documents_old (
                   id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL NOT NULL,
                   updated_at REAL NOT NULL);
               INSERT INTO documents_old SELECT * FROM documents;
               DROP TABLE documents;
               ALTER TABLE documents_old RENAME TO documents;
               DELETE FROM sqlite_sequence;
               DELETE FROM _sqlite_migrations WHERE name = 'm005_document_ids_never_reused';"""
        )
        before = conn.execute("SELECT * FROM documents ORDER BY id").fetchall()
    engine = SQLiteEngine(db_path)
    engine.open()
    try:
        [(schema,)] = engine.db.execute("SELECT sql FROM sqlite_master WHERE name = 'documents'").fetchall()
        assert "AUTOINCREMENT" in schema
        assert engine.db.execute("SELECT * FROM documents ORDER BY id").fetchall() == before
        assert engine.db.execute("PRAGMA foreign_keys").fetchone() == (1,), "on again after migrating"
        assert [text_in(engine.load(name)) for name in ("a", "b")] == ["first", "second"]
        assert engine.delete("b")
        append(engine, "c", "third", client_id=3)
        assert doc_id(str(db_path), "c") > before[-1][0]
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            engine.db.execute("INSERT INTO updates (doc_id, created_at, data) VALUES (?, 0, x'00')", [before[-1][0]])
    finally:
        engine.close()


def wait_for_a_lock_wait(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Return once another session of this database waits for a lock (a commit queued behind ours); 5 s at most."""
    for _ in range(500):
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.01)
    raise AssertionError("no session ever waited for the lock")


@pytest.mark.parametrize("change", ["delete", "rename"])
def test_a_commit_waiting_for_a_document_deleted_or_renamed_meanwhile_makes_it_anew(
    postgres_url: str, change: str
) -> None:
    """On PostgreSQL a commit locks its documents' rows; one that gets the lock after another transaction deleted
    or renamed the row finds no document by that name, and makes one in the same transaction."""
    engine = engine_on(postgres_url)
    try:
        append(engine, "x", "before", client_id=1)
        with psycopg.connect(postgres_url) as other:  # another process's delete or rename, holding the lock
            other.execute("SELECT id FROM documents WHERE name = 'x' FOR UPDATE")
            waiting = threading.Thread(target=append, args=(engine, "x", "after", 2))
            waiting.start()
            wait_for_a_lock_wait(other)
            if change == "delete":
                for table in TABLES:
                    other.execute(f"DELETE FROM {table} WHERE doc_id = (SELECT id FROM documents WHERE name = 'x')")
                other.execute("DELETE FROM documents WHERE name = 'x'")
            else:
                other.execute("UPDATE documents SET name = 'z' WHERE name = 'x'")
        waiting.join(10)
        assert not waiting.is_alive()
        assert text_in(engine.load("x")) == "after"
        assert [info.name for info in engine.documents()] == (["x"] if change == "delete" else ["x", "z"])
    finally:
        engine.close()


def test_a_rename_onto_a_name_made_elsewhere_meanwhile_is_refused(postgres_url: str) -> None:
    engine = engine_on(postgres_url)
    try:
        append(engine, "a", "a", client_id=1)
        refused: list[BaseException] = []

        def rename() -> None:
            try:
                engine.rename("a", "b")
            except BaseException as error:
                refused.append(error)

        with psycopg.connect(postgres_url) as other:  # a commit elsewhere making "b", not yet committed
            other.execute("INSERT INTO documents (name, created_at, updated_at) VALUES ('b', 0, 0)")
            renaming = threading.Thread(target=rename)
            renaming.start()
            wait_for_a_lock_wait(other)
        renaming.join(10)
        assert not renaming.is_alive()
        assert [type(error) for error in refused] == [AlreadyExistsError]
        assert [info.name for info in engine.documents()] == ["a", "b"] and text_in(engine.load("a")) == "a"
    finally:
        engine.close()
