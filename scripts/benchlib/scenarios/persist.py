"""`persist`: updates per second durably committed to SQLite, and bytes stored per document.

One writer per room sends its keystrokes as fast as TCP takes them. The harness reads the server's
database itself (read-only, beside the running server: SQLite's WAL allows that) every `POLL_S`: a room
is done once the newest row stored for it, snapshot or log, holds the writer's last keystroke (every
stream ends with an insert, and writes are committed in order, so everything before it is in too). The
rate is keystrokes / time until every room is done. Then the document is rebuilt from the database and
compared with what was typed. Finally the writers leave, collab compacts and unloads each room, and the
bytes stored for it are compared with len(doc.get_update()) of the same document.

Only a server the harness started with a database it can read (collab) is measured.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from pycrdt import get_update

from collab.sync.protocol import encode_var_uint

from ..context import Context, close_all
from ..peer import Peer, join, text_of
from ..results import Meter, Result
from ..servers import ManagedTarget, Target
from ..workload import Stream, expected_text, expected_update_size, var_uint

POLL_S = 0.02
DURABLE_TIMEOUT = 120.0
UNLOAD_TIMEOUT = 60.0


class Database:
    """The server's SQLite file, read as an outsider would (see collab/store/sqlite.py for the schema)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def newest_rows(self, room: str) -> list[bytes]:
        return [
            row[0]
            for table in ("snapshots", "updates")
            for row in self.conn.execute(
                f"SELECT data FROM {table} WHERE doc_id = (SELECT id FROM documents WHERE name = ?)"
                " ORDER BY id DESC LIMIT 1",
                [room],
            )
        ]

    def records(self, room: str) -> list[bytes]:
        """The newest snapshot, then the log after it: what collab loads."""
        query = """SELECT data FROM (SELECT id, data FROM snapshots WHERE doc_id = ?1 ORDER BY id DESC LIMIT 1)
                   UNION ALL SELECT data FROM (SELECT id, data FROM updates WHERE doc_id = ?1 ORDER BY id)"""
        doc_id = self.conn.execute("SELECT id FROM documents WHERE name = ?", [room]).fetchone()
        return [row[0] for row in self.conn.execute(query, [doc_id[0]])] if doc_id else []

    def stored_bytes(self, room: str) -> int:
        return sum(len(data) for data in self.records(room))

    def close(self) -> None:
        self.conn.close()


def clock(state_vector: bytes, client_id: int) -> int:
    """The clock a Yjs state vector holds for `client_id` (0 if absent)."""
    clients, pos = var_uint(state_vector, 0)
    for _ in range(clients):
        client, pos = var_uint(state_vector, pos)
        value, pos = var_uint(state_vector, pos)
        if client == client_id:
            return value
    return 0


def holds_last_keystroke(stream: Stream) -> Callable[[bytes], bool]:
    """A test of a stored row: does it contain the stream's last keystroke (an insert, at clock final - 1)?

    `get_update(row, sv)` keeps the structs of `row` that `sv` lacks; with sv = {writer: final - 1} only the
    last keystroke can remain, and an update's first byte is its number of clients with structs.
    (pycrdt's get_state(update) cannot tell: it reports only clocks contiguous from 0.)
    """
    final = clock(stream.state_vector, stream.client_id)
    before_last = encode_var_uint(1) + encode_var_uint(stream.client_id) + encode_var_uint(final - 1)
    return lambda row: get_update(row, before_last)[0] != 0


async def send_all(writer: Peer, stream: Stream) -> None:
    """Every keystroke, as fast as the socket takes them (yielding to the other writers now and then)."""
    for i, frame in enumerate(stream.frames):
        writer.ws.write_frame(frame)
        if i % 256 == 255:
            await writer.ws.drain()
            await asyncio.sleep(0)


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.persist
    result = Result("persist", target.name, params=vars(size).copy())
    if not isinstance(target, ManagedTarget) or not target.can_unload:
        result.skipped = "no database to read: only a collab started by the harness is measured"
        return result
    rooms = [ctx.room("persist", r) for r in range(size.rooms)]
    streams = [ctx.stream("persist", r, size.updates) for r in range(size.rooms)]
    writers = [await join(target.url(room), keep=False) for room in rooms]
    db = Database(target.db_path)
    try:
        with Meter(target) as meter:
            start = time.perf_counter()
            sending = asyncio.gather(
                *(send_all(writer, stream) for writer, stream in zip(writers, streams, strict=True))
            )
            done = [holds_last_keystroke(stream) for stream in streams]
            pending = set(range(size.rooms))
            deadline = start + DURABLE_TIMEOUT
            while pending and time.perf_counter() < deadline:
                await asyncio.sleep(POLL_S)
                pending = {r for r in pending if not any(map(done[r], db.newest_rows(rooms[r])))}
            end = time.perf_counter()
            await sending
        meter.record(result)
        result.checks["all_durable"] = not pending
        total = size.rooms * size.updates
        result.metrics = {"updates_per_s": round(total / (end - start)), "updates": total}
        result.checks["database_complete"] = all(
            text_of(db.records(room)) == expected_text([stream]) for room, stream in zip(rooms, streams, strict=True)
        )
        await close_all(writers)
        for room in rooms:
            await target.wait_unloaded(room, UNLOAD_TIMEOUT)
        stored = [db.stored_bytes(room) for room in rooms]
        reference = [expected_update_size([stream]) for stream in streams]
        ratios = [s / r for s, r in zip(stored, reference, strict=True)]
        result.metrics["stored_kb_per_doc"] = round(sum(stored) / len(stored) / 1024, 2)
        result.metrics["get_update_kb_per_doc"] = round(sum(reference) / len(reference) / 1024, 2)
        result.metrics["storage_ratio"] = round(max(ratios), 3)
        result.checks["compacted_complete"] = all(
            text_of(db.records(room)) == expected_text([stream]) for room, stream in zip(rooms, streams, strict=True)
        )
    finally:
        db.close()
        await close_all(writers)
    return result
