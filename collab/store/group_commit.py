"""Group commit: writes are queued on the event loop and committed together on one thread.

Rooms queue writes without waiting. A writer task gathers everything queued in
a window (`commit_interval`, 50 ms by default) and hands it to the engine as
one batch, run on the store's single worker thread so the event loop never
blocks on disk. If a commit fails the batch goes back to the head of the queue
and is retried with backoff, forever: a failing disk delays durability, it
never drops an update. Whatever a commit raises counts as a failed commit;
should the writer task itself ever end, the store says so (`failing`, and
`flush`, `check_writable` and `close` raise) instead of hanging.
`flush()` is how callers wait for durability.

A delete or a rename is not a queued write: an error there is the caller's
to report (an unknown name, a name taken), and retrying it forever would hang
both it and every commit behind it. It waits for the writes of its names
queued before it, then runs on the same worker thread, in order with the
commits, and raises what the engine raised.

The store holds its engine (`Engine`, see `collab.store`) rather than being
subclassed by it: everything here is the same for every database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from pycrdt import merge_updates

from ..errors import CollabError, NotFoundError, StorageError
from . import Commit, DocumentInfo, Engine, HistoryPoint, StoredRecord, WriteOp
from .outbox import OutboxTables

__all__ = ["GroupCommitStore", "coalesce"]

logger = logging.getLogger("collab.store")

T = TypeVar("T")
E = TypeVar("E", bound=Engine)

RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 5.0


class GroupCommitStore(Generic[E]):
    """The `Store` every engine sits under: queueing, batching, retrying, flushing."""

    def __init__(self, engine: E, *, commit_interval: float = 0.05) -> None:
        self.engine = engine
        """Called only from the worker thread, one call at a time."""
        self.commit_interval = commit_interval
        self.on_commit: Callable[[Commit], None] | None = None
        self._queue: list[WriteOp] = []
        self._in_flight: list[WriteOp] = []
        """The batch being committed (or about to be retried): what `load` must wait for besides the queue."""
        self._oldest_queued_at = 0.0
        self._queued = 0
        self._committed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collab-store")
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collab-outbox-reads")
        """Where `read_outbox` runs: beside the commits, not queued behind them."""
        self._wake: asyncio.Event | None = None
        self._urgent: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self.failing = False
        """True while commits fail; cleared by the next successful commit."""

    async def start(self) -> None:
        """Open the engine (running migrations) and start the writer."""
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        await self._on_thread(self.engine.open)
        self._writer = asyncio.create_task(self._write_forever(), name="collab-store-writer")
        self._writer.add_done_callback(self._writer_stopped)

    async def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        await self._flush_writes_of(name)
        return await self._on_thread(self.engine.load, name, at)

    def append(self, name: str, update: bytes, updates: int = 1) -> None:
        self._enqueue(WriteOp("append", name, update, time.time(), updates))

    def compact(self, name: str, snapshot: bytes) -> None:
        self._enqueue(WriteOp("compact", name, snapshot, time.time()))

    async def flush(self) -> None:
        target = self._queued
        if self._committed >= target:
            return
        if self._writer is None or self._urgent is None:
            raise StorageError(f"store is not running; {self.pending} writes cannot be committed")
        if self._writer.done():
            raise StorageError(f"store writer stopped; {self.pending} writes cannot be committed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._urgent.set()
        await waiter

    async def documents(self, name: str | None = None) -> list[DocumentInfo]:
        if name is not None:
            await self._flush_writes_of(name)  # a document just created is listed, with its first change
        return await self._on_thread(self.engine.documents, name)

    async def history(self, name: str) -> list[HistoryPoint]:
        await self._flush_writes_of(name)
        return await self._on_thread(self.engine.history, name)

    async def delete(self, name: str) -> None:
        await self._flush_writes_of(name)
        if not await self._on_thread(self.engine.delete, name):
            raise NotFoundError(f"no document named {name!r}")

    async def rename(self, old: str, new: str) -> None:
        await self._flush_writes_of(old, new)
        await self._on_thread(self.engine.rename, old, new)

    async def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        return await self._on_thread(self.engine.outbox, work)

    async def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        return await self._on_thread(self.engine.read_outbox, work, executor=self._reads)

    async def check_writable(self) -> None:
        """Raise `StorageError` unless the engine could start a commit right now (its own cheap probe)."""
        if self._writer is None:
            raise StorageError("store is not running")
        if self._writer.done():
            raise StorageError("store writer stopped; restart the server")
        await self._on_thread(self.engine.check_writable)

    async def close(self) -> None:
        """Flush, then release the engine; `StorageError` after releasing it if the writer had stopped."""
        writer = self._writer
        if writer is None:
            return
        if not writer.done():
            await self.flush()
        writer.cancel()
        self._writer = None
        self._reads.shutdown(wait=True)
        await self._on_thread(self.engine.close)
        self._executor.shutdown(wait=True)
        if self.pending:
            raise StorageError(f"store writer stopped; {self.pending} writes were not committed")

    @property
    def pending(self) -> int:
        """Writes queued or being committed, not yet durable."""
        return self._queued - self._committed

    # Internals.

    async def _flush_writes_of(self, *names: str) -> None:
        """Flush if writes of `names` are queued or being committed (or retried): a read must see them."""
        if any(op.name in names for op in self._in_flight) or any(op.name in names for op in self._queue):
            await self.flush()

    def _enqueue(self, op: WriteOp) -> None:
        if self._writer is None:
            raise StorageError(f"store is not running; cannot write to {op.name!r}")
        if self._writer.done():
            raise StorageError(f"store writer stopped; cannot write to {op.name!r}")
        if not self._queue:
            self._oldest_queued_at = time.monotonic()
        self._queue.append(op)
        self._queued += 1
        assert self._wake is not None
        self._wake.set()

    async def _on_thread(
        self, function: Callable[..., T], *args: object, executor: ThreadPoolExecutor | None = None
    ) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor or self._executor, function, *args)
        except CollabError:
            raise
        except Exception as error:
            raise StorageError(f"{type(error).__name__}: {error}") from error

    async def _write_forever(self) -> None:
        assert self._wake is not None and self._urgent is not None
        retry_delay = RETRY_FIRST_DELAY
        while True:
            await self._wake.wait()
            wait = self._oldest_queued_at + self.commit_interval - time.monotonic()
            if wait > 0 and not self._urgent.is_set():
                try:
                    await asyncio.wait_for(self._urgent.wait(), wait)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._urgent.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            started = time.perf_counter()
            self._in_flight = batch
            try:
                await self._on_thread(self._coalesce_and_commit, batch)
            except Exception as error:  # whatever the engine raised (a CollabError too): a failed commit
                self._in_flight = []
                logger.error(
                    "store commit failed, %d writes kept in memory, retrying in %.1fs: %s",
                    len(batch),
                    retry_delay,
                    error,
                    exc_info=None if self.failing else error,  # the whole story once per outage
                )
                self.failing = True
                self._queue[:0] = batch
                self._oldest_queued_at = time.monotonic() - self.commit_interval
                self._wake.set()
                await asyncio.sleep(retry_delay)
                retry_delay = min(retry_delay * 2, RETRY_MAX_DELAY)
                continue
            self._in_flight = []
            seconds = time.perf_counter() - started
            if self.failing:
                logger.warning("store commits succeed again, %d writes recovered", len(batch))
                self.failing = False
            retry_delay = RETRY_FIRST_DELAY
            self._committed += len(batch)
            updates = sum(op.updates for op in batch if op.kind == "append")
            self._report(Commit(seconds, updates, sum(op.kind == "compact" for op in batch)))
            self._wake_waiters()

    def _writer_stopped(self, writer: asyncio.Task[None]) -> None:
        """Done-callback of the writer: it ends only when `close` cancels it, so anything else is a bug to shout.

        Flush waiters get a `StorageError` rather than waiting forever, and `failing` makes `/readyz` say 503.
        """
        if writer.cancelled():
            return
        logger.error(
            "store writer stopped; %d writes will not be committed until a restart",
            self.pending,
            exc_info=writer.exception(),
        )
        self.failing = True
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(StorageError(f"store writer stopped; {self.pending} writes cannot be committed"))
        self._waiters = []

    def _report(self, commit: Commit) -> None:
        """Tell `on_commit`; whatever it raises is logged, since the writer must outlive it."""
        if self.on_commit is None:
            return
        try:
            self.on_commit(commit)
        except Exception:
            logger.exception("on_commit failed for a commit of %d updates", commit.updates)

    def _coalesce_and_commit(self, batch: list[WriteOp]) -> None:
        self.engine.commit(coalesce(batch))

    def _wake_waiters(self) -> None:
        still_waiting = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if target <= self._committed:
                waiter.set_result(None)
            else:
                still_waiting.append((target, waiter))
        self._waiters = still_waiting


def coalesce(batch: list[WriteOp]) -> list[WriteOp]:
    """Merge each document's consecutive appends into one, keeping every document's order.

    One row per document per commit keeps the log short. Appends before a
    compaction are kept too: compaction turns the log into history.
    """
    out: list[WriteOp] = []
    appends: dict[str, list[WriteOp]] = {}
    for op in batch:
        if op.kind == "compact":
            out.extend(_merged(op.name, appends.pop(op.name, [])))
            out.append(op)
        else:
            appends.setdefault(op.name, []).append(op)
    for name, ops in appends.items():
        out.extend(_merged(name, ops))
    return out


def _merged(name: str, ops: list[WriteOp]) -> list[WriteOp]:
    if len(ops) <= 1:
        return ops
    try:
        merged = merge_updates(*(op.data for op in ops))
    except ValueError:
        logger.warning("could not merge %d updates of %r, storing them one by one", len(ops), name)
        return ops
    return [WriteOp("append", name, merged, ops[-1].at, sum(op.updates for op in ops))]
