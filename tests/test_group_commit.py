"""Group commit over any engine: batching, flushing, and retrying a failing engine forever.

Run on the in-memory engine, and on `FailingEngine`, a real engine that refuses its next N commits
the way a full disk or a database locked by another process does (or with any error it is given).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from collab.errors import HistoryError, StorageError
from collab.store import Commit, DocumentDump, DocumentInfo, HistoryPoint, StoredRecord, WriteOp
from collab.store.group_commit import GroupCommitStore
from collab.store.memory import MemoryEngine, MemoryStore
from collab.store.outbox import OutboxTables

from .helpers import keystrokes, text_of, wait_for

T = TypeVar("T")


class FailingEngine:
    """A `MemoryEngine` whose next `failures` commits raise `error`, as a disk that fills up and is then freed."""

    def __init__(self, failures: int = 0, error: BaseException | None = None) -> None:
        self.inner = MemoryEngine()
        self.failures = failures
        self.error = OSError(28, "No space left on device") if error is None else error
        self.attempts: list[list[WriteOp]] = []
        self.writable = True

    def open(self) -> None:
        self.inner.open()

    def commit(self, batch: Sequence[WriteOp]) -> None:
        self.attempts.append(list(batch))
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.inner.commit(batch)

    def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        return self.inner.load(name, at)

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        return self.inner.documents(name)

    def history(self, name: str) -> list[HistoryPoint]:
        return self.inner.history(name)

    def check_writable(self) -> None:
        if not self.writable:
            raise OSError(30, "Read-only file system")

    def close(self) -> None:
        self.inner.close()

    def delete(self, name: str) -> bool:
        return self.inner.delete(name)

    def rename(self, old: str, new: str) -> None:
        self.inner.rename(old, new)

    def restore(self, dump: DocumentDump) -> None:
        self.inner.restore(dump)

    def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        return self.inner.outbox(work)

    def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        return self.inner.read_outbox(work)


async def text_in(store: GroupCommitStore[FailingEngine] | MemoryStore, name: str) -> str:
    return text_of(record.data for record in await store.load(name))


async def test_writes_in_one_window_are_one_commit_of_one_row_per_document() -> None:
    store = MemoryStore(commit_interval=0.05)
    await store.start()
    try:
        for update in keystrokes("hello"):
            store.append("a", update)
        for update in keystrokes("bye"):
            store.append("b", update)
        assert store.pending == 8
        await store.flush()
        assert store.pending == 0
        assert store.engine.commits == 1
        assert [info.log_length for info in await store.documents()] == [1, 1]
        assert await text_in(store, "a") == "hello" and await text_in(store, "b") == "bye"
    finally:
        await store.close()


async def test_a_compaction_keeps_the_appends_before_it_in_order(memory_store: MemoryStore) -> None:
    updates = keystrokes("abc")
    memory_store.append("doc", updates[0])
    memory_store.compact("doc", updates[0])
    memory_store.append("doc", updates[1])
    memory_store.append("doc", updates[2])
    await memory_store.flush()
    assert [record.kind for record in await memory_store.load("doc")] == ["snapshot", "update"]
    assert await text_in(memory_store, "doc") == "abc"


async def test_a_failing_engine_delays_writes_and_loses_none(caplog: pytest.LogCaptureFixture) -> None:
    engine = FailingEngine(failures=2)
    store = GroupCommitStore(engine, commit_interval=0.01)
    commits: list[Commit] = []
    store.on_commit = commits.append
    await store.start()
    try:
        with caplog.at_level(logging.ERROR, logger="collab.store"):
            for update in keystrokes("kept"):
                store.append("doc", update)
            store.compact("other", keystrokes("o")[0])
            flushed = asyncio.create_task(store.flush())
            await wait_for(lambda: store.failing)
            assert not flushed.done() and store.pending == 5
            assert "store commit failed, 5 writes kept in memory" in caplog.text
            assert "No space left on device" in caplog.text
        async with asyncio.timeout(10):
            await flushed
        assert not store.failing and store.pending == 0
        assert len(engine.attempts) == 3, "two refused, then the same writes again"
        assert engine.attempts[0] == engine.attempts[2]
        assert await text_in(store, "doc") == "kept"
        assert [(commit.updates, commit.compactions) for commit in commits] == [(4, 1)]
    finally:
        await store.close()


async def test_writes_made_during_an_outage_join_the_retry() -> None:
    engine = FailingEngine(failures=1)
    store = GroupCommitStore(engine, commit_interval=0.01)
    await store.start()
    try:
        updates = keystrokes("ab")
        store.append("doc", updates[0])
        await wait_for(lambda: store.failing)
        store.append("doc", updates[1])
        await store.flush()
        assert await text_in(store, "doc") == "ab"
        assert engine.inner.commits == 1
    finally:
        await store.close()


async def test_any_error_from_a_commit_is_a_failed_commit_that_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    """Even one of collab's own errors, which `_on_thread` passes on unwrapped: it once ended the writer."""
    engine = FailingEngine(failures=1, error=HistoryError("an engine bug that raises the wrong error"))
    store = GroupCommitStore(engine, commit_interval=0.01)
    await store.start()
    try:
        with caplog.at_level(logging.ERROR, logger="collab.store"):
            store.append("doc", keystrokes("x")[0])
            await wait_for(lambda: store.failing)
            async with asyncio.timeout(10):
                await store.flush()
        assert "store commit failed, 1 writes kept in memory" in caplog.text and "the wrong error" in caplog.text
        assert len(engine.attempts) == 2 and not store.failing and store.pending == 0
        assert await text_in(store, "doc") == "x"
    finally:
        await store.close()


class WriterKiller(BaseException):
    """Not an `Exception`, so no `except Exception` in the writer stops it: what any bug there would do."""


async def test_a_writer_that_stops_says_so_instead_of_hanging(caplog: pytest.LogCaptureFixture) -> None:
    engine = FailingEngine(failures=1, error=WriterKiller("a bug in the writer"))
    store = GroupCommitStore(engine, commit_interval=0.01)
    await store.start()
    with caplog.at_level(logging.ERROR, logger="collab.store"):
        store.append("doc", keystrokes("x")[0])
        async with asyncio.timeout(10):
            with pytest.raises(StorageError, match="store writer stopped; 1 writes cannot be committed"):
                await store.flush()
    assert "store writer stopped; 1 writes will not be committed" in caplog.text and "WriterKiller" in caplog.text
    assert store.failing, "what /readyz reports"
    with pytest.raises(StorageError, match="writer stopped"):
        await store.check_writable()
    with pytest.raises(StorageError, match="writer stopped; cannot write to 'doc'"):
        store.append("doc", b"")
    with pytest.raises(StorageError, match="1 writes were not committed"):
        await store.close()
    with pytest.raises(StorageError, match="store is not running"):
        await store.check_writable()


async def test_listing_a_document_commits_what_is_queued_for_it_first() -> None:
    """So the API can tell "created after that moment" from "no such document" for a document just made."""
    store = MemoryStore(commit_interval=3600)  # only a flush can commit within the test
    await store.start()
    try:
        store.append("new", keystrokes("x")[0])
        [info] = await store.documents("new")
        assert info.name == "new" and info.log_length == 1 and store.pending == 0
    finally:
        await store.close()


async def test_loading_a_document_commits_what_is_queued_for_it_first() -> None:
    store = MemoryStore(commit_interval=3600)  # only a flush can commit within the test
    await store.start()
    try:
        store.append("doc", keystrokes("x")[0])
        assert await text_in(store, "doc") == "x"
        assert store.pending == 0
    finally:
        await store.close()


async def test_closing_flushes_and_a_closed_store_refuses_writes() -> None:
    store = MemoryStore(commit_interval=3600)
    await store.start()
    store.append("doc", keystrokes("x")[0])
    await store.close()
    assert store.engine.commits == 1 and [info.name for info in store.engine.documents()] == ["doc"]
    with pytest.raises(StorageError, match="store is not running; cannot write to 'doc'"):
        store.append("doc", b"")
    with pytest.raises(StorageError, match="not running"):
        await store.check_writable()
    await store.flush()  # nothing queued: nothing to wait for


async def test_check_writable_asks_the_engine_and_engine_errors_become_storage_errors() -> None:
    engine = FailingEngine()
    store = GroupCommitStore(engine)
    await store.start()
    try:
        await store.check_writable()
        engine.writable = False
        with pytest.raises(StorageError, match=r"OSError: .*Read-only file system"):
            await store.check_writable()
    finally:
        await store.close()


async def test_a_failing_commit_listener_does_not_stop_the_writer(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    reported: list[Commit] = []

    def listener(commit: Commit) -> None:
        reported.append(commit)
        raise RuntimeError("a broken metrics hook")

    store.on_commit = listener
    await store.start()
    try:
        with caplog.at_level(logging.ERROR, logger="collab.store"):
            store.append("doc", keystrokes("a")[0])
            await store.flush()
        assert "on_commit failed" in caplog.text
        store.append("doc", keystrokes("b")[0])
        async with asyncio.timeout(5):
            await store.flush()
        assert len(reported) == 2 and store.engine.commits == 2
    finally:
        await store.close()
