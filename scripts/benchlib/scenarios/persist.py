"""`persist`: updates per second durably committed to the database, and bytes stored per document.

One writer per room sends its keystrokes as fast as TCP takes them. The harness reads the server's
database itself every `POLL_S` (SQLite read-only beside the running server, which its WAL allows;
PostgreSQL through a connection of its own), on a thread: a poll on the event loop stalled every writer
for its round trip to PostgreSQL, and the server idled. A room is done once the newest row stored for it,
snapshot or log, holds the writer's last keystroke (every stream ends with an insert, and writes are
committed in order, so everything before it is in too). The rate is keystrokes / time until every room is
done. Then the document is rebuilt from the database and compared with what was typed. Finally the
writers leave, collab compacts and unloads each room, and the bytes stored for it (the data of the rows
collab would load) are compared with len(doc.get_update()) of the same document.

Only a server the harness started with a database it can read (collab) is measured.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection
from typing import Protocol

from pycrdt import get_update

from collab.sync.protocol import encode_var_uint

from ..context import Context, close_all
from ..peer import Peer, join, text_of
from ..results import Meter, Result
from ..servers import ManagedTarget, Target, process_cpu_seconds
from ..workload import Stream, expected_text, expected_update_size, var_uint

POLL_S = 0.02
DURABLE_TIMEOUT = 120.0
UNLOAD_TIMEOUT = 60.0


class Database(Protocol):
    """The server's database, read as an outsider would (see collab/store/tables.py for the schema)."""

    def newest_rows(self, rooms: Collection[str]) -> dict[str, list[bytes]]:
        """Per room, the newest snapshot and the newest log row stored for it (either may be missing)."""
        ...

    def records(self, room: str) -> list[bytes]:
        """The newest snapshot, then the log after it: what collab loads."""
        ...

    def server_cpu_seconds(self) -> float | None:
        """CPU time the database server's processes for collab used so far, where it is a separate server on
        this machine (else None): it shares the cores too."""
        ...

    def compressed_bytes(self, room: str) -> int | None:
        """What `records(room)` takes in the database's own compressed form (None: stored as they are)."""
        ...

    def close(self) -> None: ...


NEWEST = "SELECT data FROM {table} WHERE doc_id = (SELECT id FROM documents WHERE name = ?) ORDER BY id DESC LIMIT 1"
RECORDS = """SELECT {value} FROM (SELECT id, data FROM snapshots WHERE doc_id = ? ORDER BY id DESC LIMIT 1) AS s
             UNION ALL SELECT {value} FROM (SELECT id, data FROM updates WHERE doc_id = ? ORDER BY id) AS u"""
"""The newest snapshot's and the log's `value` (an expression of `data`), in the order collab loads them."""


class SQLiteDatabase:
    """A SQLite file, read-only beside the running server (its WAL allows that)."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def newest_rows(self, rooms: Collection[str]) -> dict[str, list[bytes]]:
        return {
            room: [
                row[0]
                for table in ("snapshots", "updates")
                for row in self.conn.execute(NEWEST.format(table=table), [room])
            ]
            for room in rooms
        }

    def records(self, room: str) -> list[bytes]:
        doc_id = self.conn.execute("SELECT id FROM documents WHERE name = ?", [room]).fetchone()
        query = RECORDS.format(value="data")
        return [row[0] for row in self.conn.execute(query, [doc_id[0], doc_id[0]])] if doc_id else []

    def server_cpu_seconds(self) -> float | None:
        return None  # SQLite runs inside collab's process: its CPU is the server's

    def compressed_bytes(self, room: str) -> int | None:
        return None

    def close(self) -> None:
        self.conn.close()


class PostgresDatabase:
    """A PostgreSQL database, through one connection of the harness's own (autocommit: each read sees the
    latest commits). Every room's newest rows come in one query, so that polling costs the server one
    statement per `POLL_S`, not two per room."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def newest_rows(self, rooms: Collection[str]) -> dict[str, list[bytes]]:
        newest: dict[str, list[bytes]] = {room: [] for room in rooms}
        query = " UNION ALL ".join(
            f"""SELECT d.name, t.data FROM documents AS d CROSS JOIN LATERAL
                (SELECT data FROM {table} WHERE doc_id = d.id ORDER BY id DESC LIMIT 1) AS t
                WHERE d.name = ANY(%(rooms)s)"""
            for table in ("snapshots", "updates")
        )
        for name, data in self.conn.execute(query, {"rooms": list(rooms)}):
            newest[name].append(data)
        return newest

    def records(self, room: str) -> list[bytes]:
        doc_id = self.conn.execute("SELECT id FROM documents WHERE name = %s", [room]).fetchone()
        if doc_id is None:
            return []
        query = RECORDS.format(value="data").replace("?", "%s")
        return [row[0] for row in self.conn.execute(query, [doc_id[0], doc_id[0]])]

    def server_cpu_seconds(self) -> float | None:
        """The backends serving collab's connections to this database (not the harness's own, nor PostgreSQL's
        background writers); None when their /proc entries cannot be read (a server on another machine)."""
        backends = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        try:
            return sum(process_cpu_seconds(pid) for (pid,) in backends)
        except OSError:
            return None

    def compressed_bytes(self, room: str) -> int | None:
        """A value over ~2 KB is TOASTed, compressed (pglz by default): pg_column_size is what it then takes."""
        doc_id = self.conn.execute("SELECT id FROM documents WHERE name = %s", [room]).fetchone()
        if doc_id is None:
            return 0
        query = RECORDS.format(value="pg_column_size(data)").replace("?", "%s")
        return sum(int(size) for (size,) in self.conn.execute(query, [doc_id[0], doc_id[0]]))

    def close(self) -> None:
        self.conn.close()


def open_database(db: str) -> Database:
    """The database a collab started with `--db db` writes to."""
    return PostgresDatabase(db) if db.startswith(("postgresql://", "postgres://")) else SQLiteDatabase(db)


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
    db = open_database(target.db)
    try:
        db_cpu_before = db.server_cpu_seconds()
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
                newest = await asyncio.to_thread(db.newest_rows, [rooms[r] for r in pending])
                pending = {r for r in pending if not any(map(done[r], newest[rooms[r]]))}
            end = time.perf_counter()
            await sending
        db_cpu_after = db.server_cpu_seconds()
        meter.record(result)
        result.checks["all_durable"] = not pending
        total = size.rooms * size.updates
        result.metrics = {"updates_per_s": round(total / (end - start)), "updates": total}
        if db_cpu_before is not None and db_cpu_after is not None:
            result.metrics["db_server_cpu_s"] = round(db_cpu_after - db_cpu_before, 3)
        result.checks["database_complete"] = all(
            text_of(db.records(room)) == expected_text([stream]) for room, stream in zip(rooms, streams, strict=True)
        )
        await close_all(writers)
        for room in rooms:
            await target.wait_unloaded(room, UNLOAD_TIMEOUT)
        stored = [sum(map(len, db.records(room))) for room in rooms]
        reference = [expected_update_size([stream]) for stream in streams]
        ratios = [s / r for s, r in zip(stored, reference, strict=True)]
        result.metrics["stored_kb_per_doc"] = round(sum(stored) / len(stored) / 1024, 2)
        compressed = [db.compressed_bytes(room) for room in rooms]
        if not any(size is None for size in compressed):
            total_compressed = sum(size or 0 for size in compressed)
            result.metrics["compressed_kb_per_doc"] = round(total_compressed / len(compressed) / 1024, 2)
        result.metrics["get_update_kb_per_doc"] = round(sum(reference) / len(reference) / 1024, 2)
        result.metrics["storage_ratio"] = round(max(ratios), 3)
        result.checks["compacted_complete"] = all(
            text_of(db.records(room)) == expected_text([stream]) for room, stream in zip(rooms, streams, strict=True)
        )
    finally:
        db.close()
        await close_all(writers)
    return result
