"""The SQLite engine on a real file: one row per commit, migrations, a locked file, history and retention.

What every engine does alike is in test_engines.py; queueing and retrying in test_group_commit.py.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text, merge_updates

from collab.errors import HistoryError, StorageError
from collab.store import HistoryPoint, WriteOp
from collab.store.group_commit import GroupCommitStore
from collab.store.history import DAY, HOUR, Retention, to_keep
from collab.store.sqlite import MIGRATION_NAMES, SQLiteEngine, open_database
from collab.store.sqlite_read import SQLiteReader, first_checked_ids
from collab.units import parse_time

from .helpers import keystrokes, text_of, wait_for

FileStore = GroupCommitStore[SQLiteEngine]


def sqlite_store(db_path: Path, commit_interval: float = 0.05, busy_timeout: float = 5.0) -> FileStore:
    return GroupCommitStore(SQLiteEngine(db_path, busy_timeout=busy_timeout), commit_interval=commit_interval)


@pytest.fixture
async def store(db_path: Path):
    started = sqlite_store(db_path, commit_interval=0.01)
    await started.start()
    yield started
    await started.close()


async def test_appends_are_group_committed_one_row_per_document(store: FileStore, db_path: Path) -> None:
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


async def test_compaction_keeps_one_snapshot_and_the_tail(store: FileStore) -> None:
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


async def test_rows_stored_before_the_walk_existed_are_marked_for_walking(db_path: Path) -> None:
    """Rows written once the schema records where walked rows start (m004_checked_rows) are `checked`;
    rows of a database an older collab wrote are not, and are walked again when read."""
    updates = keystrokes("ab")
    older = sqlite_store(db_path, commit_interval=0.01)
    await older.start()
    older.append("doc", updates[0])
    await older.close()
    with sqlite3.connect(db_path) as conn:  # as an older collab left it: its rows, no m004 yet
        [tables] = conn.execute("SELECT group_concat(name) FROM sqlite_master WHERE name LIKE '%migrations'").fetchone()
        conn.execute(f"DELETE FROM {tables} WHERE name = 'm004_checked_rows'")
        conn.execute("DROP TABLE checked_rows")
    store = sqlite_store(db_path, commit_interval=0.01)
    await store.start()
    try:
        store.append("doc", updates[1])
        await store.flush()
        records = await store.load("doc")
        assert [record.checked for record in records] == [False, True]
        assert text_of([record.data for record in records]) == "ab"
    finally:
        await store.close()


async def test_database_is_in_wal_mode_with_a_recorded_schema(store: FileStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        names = [name for (name,) in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'collab'")]
    assert names == MIGRATION_NAMES
    assert names[0] == "m001_documents_snapshots_updates"


async def test_a_database_from_a_newer_collab_is_refused_untouched(db_path: Path) -> None:
    store = sqlite_store(db_path)
    await store.start()
    await store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('collab', 'm999_future', 'x')"
        )
    before = db_path.read_bytes()
    newer = sqlite_store(db_path)
    with pytest.raises(StorageError, match="newer collab"):  # exit 5, not 2: no flag of the user's is wrong
        await newer.start()
    assert db_path.read_bytes() == before
    # Nothing moved aside or created beside it (a collab.db.bak, a fresh collab.db): the file is as it was.
    assert {path.name for path in db_path.parent.iterdir()} <= {"collab.db", "collab.db-wal", "collab.db-shm"}


def test_a_commit_that_failed_halfway_can_be_retried(db_path: Path) -> None:
    """The ids of documents the failed transaction inserted are forgotten with it: reused, they failed the
    retry with "FOREIGN KEY constraint failed", again and again, as long as the server ran."""
    sqlite_engine = engine(db_path)
    update = keystrokes("x")[0]
    batch = [WriteOp("append", "first", update, T0), WriteOp("append", "second", update * 100, T0)]
    default_length = sqlite_engine.db.conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    # Too big a blob, refused by SQLite itself after "first" and "second" were inserted (as a full disk would be).
    sqlite_engine.db.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, len(update) * 50)
    with pytest.raises(sqlite3.DataError, match="too big"):
        sqlite_engine.commit(batch)
    assert sqlite_engine.documents() == [], "rolled back"
    sqlite_engine.db.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, default_length)
    sqlite_engine.commit(batch)  # what the store does next: the same writes again
    assert [info.name for info in sqlite_engine.documents()] == ["first", "second"]
    assert text_of([record.data for record in sqlite_engine.load("first")]) == "x"
    sqlite_engine.close()


def test_which_rows_are_checked_is_read_or_the_failure_raised(db_path: Path) -> None:
    """A table missing (a database not migrated yet) means no row is checked; a locked database is an error,
    not "every row unchecked"."""
    sqlite_engine = engine(db_path)
    sqlite_engine.close()
    with sqlite3.connect(db_path) as conn:
        assert set(first_checked_ids(conn)) == {"snapshots", "updates"}
        conn.execute("DROP TABLE checked_rows")
        assert first_checked_ids(conn) == {}
        conn.execute("PRAGMA journal_mode=DELETE")  # in WAL mode a reader is never locked out
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        reader = sqlite3.connect(db_path, timeout=0)
        with pytest.raises(StorageError, match="cannot read which rows are checked: database is locked"):
            first_checked_ids(reader)
        reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_a_failing_disk_delays_writes_but_loses_none(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = sqlite_store(db_path, commit_interval=0.01, busy_timeout=0.05)
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


# History: the engine driven directly with chosen timestamps (a real file, no event loop needed).

T0 = 1_800_000_000.0  # a fixed moment, at an hour boundary
assert T0 % HOUR == 0


def engine(db_path: Path, retention: Retention | None = None) -> SQLiteEngine:
    opened = SQLiteEngine(db_path) if retention is None else SQLiteEngine(db_path, retention=retention)
    opened.open()
    return opened


def state_at(sqlite_engine: SQLiteEngine, at: float | None) -> str:
    return text_of([record.data for record in sqlite_engine.load("doc", at)])


def history_of(sqlite_engine: SQLiteEngine) -> list[HistoryPoint]:
    """What `collab history` lists, read beside the engine as the command line does."""
    with SQLiteReader(sqlite_engine.path) as reader:
        assert reader.history("nobody") == []
        return reader.history("doc")


def test_point_in_time_reads_survive_compaction(db_path: Path) -> None:
    sqlite_engine = engine(db_path)
    all_updates = keystrokes("abcdefghXY")
    updates = all_updates[:8]
    full: Doc = Doc()
    # Two keystrokes in each of four consecutive hours, then a compaction an hour later.
    for n, update in enumerate(updates):
        sqlite_engine.commit([WriteOp("append", "doc", update, T0 + (n // 2) * HOUR + n)])
        full.apply_update(update)
    assert state_at(sqlite_engine, T0 + HOUR + 10) == "abcd"
    sqlite_engine.commit([WriteOp("compact", "doc", full.get_update(), T0 + 5 * HOUR)])
    for more in all_updates[8:]:
        sqlite_engine.commit([WriteOp("append", "doc", more, T0 + 5 * HOUR + 60)])
    # The log is gone, but the last state of every hour it covered is a checkpoint.
    assert state_at(sqlite_engine, T0 + 10) == "ab"
    assert state_at(sqlite_engine, T0 + HOUR + 10) == "abcd"
    assert state_at(sqlite_engine, T0 + 3 * HOUR + 10) == "abcdefgh"
    assert state_at(sqlite_engine, T0 + 5 * HOUR + 30) == "abcdefgh"
    assert state_at(sqlite_engine, None) == "abcdefghXY"
    with pytest.raises(HistoryError, match="history starts at"):
        sqlite_engine.load("doc", T0 - HOUR)
    kinds = [point.kind for point in history_of(sqlite_engine)]
    assert kinds == ["checkpoint"] * 4 + ["update"] * 2
    sqlite_engine.close()


def test_retention_thins_checkpoints_and_keeps_the_chain_readable(db_path: Path) -> None:
    sqlite_engine = engine(db_path, Retention(recent_for=HOUR, hourly_for=3 * HOUR, daily_for=2 * DAY))
    doc: Doc = Doc()
    content = doc.get("content", type=Text)
    expected: dict[float, str] = {}
    # One edit and one compaction every 6 hours for three days.
    for n in range(12):
        at = T0 + n * 6 * HOUR
        before = doc.get_state()
        content += str(n % 10)
        sqlite_engine.commit([WriteOp("append", "doc", doc.get_update(before), at)])
        sqlite_engine.commit([WriteOp("compact", "doc", doc.get_update(), at + 1)])
        expected[at] = str(content)  # a checkpoint is dated by the last change it holds
    now = T0 + 11 * 6 * HOUR
    kept = [point.at for point in history_of(sqlite_engine) if point.kind == "checkpoint"]
    assert kept == sorted(kept) and kept[-1] == now
    # Older than 2 days: gone, but the newest of each day within 2 days survives.
    assert all(now + 1 - at <= 2 * DAY for at in kept)
    assert len(kept) < 12
    for at in kept:
        assert state_at(sqlite_engine, at) == expected[at]
    assert state_at(sqlite_engine, None) == expected[now]
    sqlite_engine.close()


def test_retention_policy() -> None:
    now = T0 + 10 * DAY
    times = [now - 40 * DAY, now - 3 * DAY - HOUR, now - 3 * DAY, now - 5 * HOUR, now - 4.5 * HOUR, now - 10]
    keep = to_keep(times, now, Retention(recent_for=0, hourly_for=DAY, daily_for=30 * DAY))
    assert keep == {2, 4, 5}
    assert to_keep(times, now, Retention(0, 0, 0)) == {5}
    assert to_keep(times, now, Retention(recent_for=6 * HOUR, hourly_for=0, daily_for=0)) == {3, 4, 5}


def test_times_parse_relative_and_iso() -> None:
    assert parse_time("2h", now=T0) == T0 - 2 * HOUR
    assert parse_time("3d", now=T0) == T0 - 3 * DAY
    assert parse_time("2027-01-15T08:00:00Z", now=T0) == parse_time("2027-01-15T09:00:00+01:00", now=T0)
    assert parse_time("2027-01-15T08:00:00", now=T0) == parse_time("2027-01-15T08:00:00Z", now=T0)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish", now=T0)


def test_recent_changes_are_all_kept_and_history_can_be_turned_off(db_path: Path) -> None:
    sqlite_engine = engine(db_path)
    updates = keystrokes("abc")
    for n, update in enumerate(updates):
        sqlite_engine.commit([WriteOp("append", "doc", update, T0 + n)])
    sqlite_engine.commit([WriteOp("compact", "doc", merge_updates(*updates), T0 + 10)])
    assert [state_at(sqlite_engine, T0 + n) for n in range(3)] == ["a", "ab", "abc"]
    sqlite_engine.close()
    without_history = engine(db_path, Retention(0, 0, 0))
    without_history.commit([WriteOp("compact", "doc", merge_updates(*updates), T0 + 20)])
    assert history_of(without_history) == []
    with pytest.raises(HistoryError, match="no history is kept"):
        without_history.load("doc", T0 + 1)
    without_history.close()


def _open_together(folder: str, files: int, together: Any) -> None:
    for index in range(files):
        together.wait(20)
        open_database(Path(folder) / f"new{index}.db").conn.close()


def test_processes_opening_one_new_file_at_once_take_turns_at_migrating(tmp_path: Path) -> None:
    """`collab serve --workers N` on a database that does not exist yet: every worker creates and migrates it.

    Eight processes open five new files, all at once each time (without the write lock taken first, most runs
    saw "table ... already exists" for some file)."""
    context = multiprocessing.get_context("spawn")
    together = context.Barrier(8)
    openers = [context.Process(target=_open_together, args=(str(tmp_path), 5, together)) for _ in range(8)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(60)
    assert [opener.exitcode for opener in openers] == [0] * 8
