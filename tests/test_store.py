"""The SQLite store on a real file: group commit, compaction, migrations, failures."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
from pycrdt import Doc, Text, merge_updates

from collab.errors import ConfigError
from collab.store.sqlite import SQLiteStore

from .helpers import wait_for


def keystrokes(text: str) -> list[bytes]:
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content = doc.get("content", type=Text)
    for char in text:
        content += char
    return updates


def text_of(updates: list[bytes]) -> str:
    doc: Doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("content", type=Text))


@pytest.fixture
async def store(db_path: Path):
    sqlite_store = SQLiteStore(db_path, commit_interval=0.01)
    await sqlite_store.start()
    yield sqlite_store
    await sqlite_store.close()


async def test_appends_are_group_committed_one_row_per_document(store: SQLiteStore, db_path: Path) -> None:
    for update in keystrokes("hello"):
        store.append("a", update)
    for update in keystrokes("bye"):
        store.append("b", update)
    await store.flush()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM updates").fetchone() == (2,)
    assert text_of([record.data for record in await store.load("a")]) == "hello"
    assert text_of([record.data for record in await store.load("b")]) == "bye"
    assert await store.load("missing") == []


async def test_compaction_keeps_one_snapshot_and_the_tail(store: SQLiteStore) -> None:
    updates = keystrokes("abcdef")
    for update in updates[:3]:
        store.append("doc", update)
    store.compact("doc", merge_updates(*updates[:3]))
    for update in updates[3:]:
        store.append("doc", update)
    await store.flush()
    records = await store.load("doc")
    assert [record.kind for record in records] == ["snapshot", "update"]
    assert text_of([record.data for record in records]) == "abcdef"
    [info] = await store.documents()
    assert info.name == "doc" and info.log_length == 1
    assert info.size == sum(len(record.data) for record in records)


async def test_database_is_in_wal_mode_with_a_recorded_schema(store: SQLiteStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        names = [name for (name,) in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'collab'")]
    assert names == ["m001_documents_snapshots_updates"]


async def test_a_database_from_a_newer_collab_is_refused_untouched(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    await store.start()
    await store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('collab', 'm999_future', 'x')"
        )
    before = db_path.read_bytes()
    newer = SQLiteStore(db_path)
    with pytest.raises(ConfigError, match="newer collab"):
        await newer.start()
    assert db_path.read_bytes() == before
    assert sorted(path.name for path in db_path.parent.iterdir() if "collab.db" in path.name)[0] == "collab.db"


async def test_a_failing_disk_delays_writes_but_loses_none(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(db_path, commit_interval=0.01, busy_timeout=0.05)
    await store.start()
    updates = keystrokes("durable")
    store.append("doc", updates[0])
    await store.flush()
    # Another process holds the write lock: every commit fails with "database is locked".
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with caplog.at_level(logging.ERROR, logger="collab.store"):
        for update in updates[1:]:
            store.append("doc", update)
        flushed = asyncio.create_task(store.flush())
        await wait_for(lambda: store.failing)
        assert not flushed.done()
        assert "store commit failed" in caplog.text and "locked" in caplog.text
    blocker.execute("ROLLBACK")
    blocker.close()
    async with asyncio.timeout(10):
        await flushed
    assert not store.failing
    assert text_of([record.data for record in await store.load("doc")]) == "durable"
    await store.close()
