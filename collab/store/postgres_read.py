"""Everything besides the store that collab does with a PostgreSQL database.

    PostgresReader       one consistent read-only moment (REPEATABLE READ, READ ONLY) for export, history, stats
    PostgresRevocations  the revoked tokens a server polls (see `revocations` for why polling)
    PostgresLock         one server per database: a session advisory lock, and where that server listens

The lock is PostgreSQL's own: `pg_try_advisory_lock` on a connection the server
keeps open, released by PostgreSQL when that connection ends however the process
ends (kill -9 included), so a stale lock cannot outlive its server. The servers
of a cluster (`--relay`) take it shared (`pg_try_advisory_lock_shared`, the same
keys): any number of them together, none beside an exclusive holder. Its details
(pid, address, whether tokens are checked) sit in `collab_server` for `collab
import` to find the server and go through it; shared holders keep one row, any
one's, as `lockfile` says for SQLite (whose session holds the lock tells a holder
gone). Who holds the lock is read from `pg_locks`, never by trying to take it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Self

import psycopg

from ..auth import Revocation
from ..errors import DatabaseInUseError, StorageError
from . import DocumentDump, DocumentInfo, HistoryPoint, StoredRecord
from .outbox import Listing
from .postgres import KEYS, Connection, connect, migrate, one_line, outbox_tables, postgres_tables, where

__all__ = ["PostgresLock", "PostgresReader", "PostgresRevocations", "add_revocation", "describe", "running_server"]

SERVER_KEY = KEYS[1]
"""First half of the advisory lock a server holds; the second is its schema's name hashed, as for migrations."""
_HOLDERS = """SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = %s AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid"""
"""The sessions holding the server lock, in either mode (ExclusiveLock, or ShareLock for each shared holder);
a two-key lock shows its halves as classid and objid."""
_HELD = f"SELECT EXISTS ({_HOLDERS})"
"""Whether any session holds the server lock."""
_HOLDS = f"SELECT EXISTS ({_HOLDERS} AND pid = %s)"
"""Whether the session with that pid holds it."""
_TAKE = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"
_TAKE_SHARED = "SELECT pg_try_advisory_lock_shared(%s, hashtext(current_schema()))"
_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))"
_UNLOCK_SHARED = "SELECT pg_advisory_unlock_shared(%s, hashtext(current_schema()))"


def _has_table(conn: Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone() == (True,)


class PostgresReader:
    """A read-only view of a collab database as of one moment (a `Reader`): it can never write to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect(url)
        try:
            if not _has_table(self.conn, "documents"):
                raise StorageError(f"{where(url)} is not a collab database (no documents table)")
        except BaseException:
            self.conn.close()
            raise
        self._tables = postgres_tables(self.conn)

    def __enter__(self) -> Self:
        try:
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        except BaseException:
            self.conn.close()  # `with` calls no __exit__ when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.conn.broken:
                self.conn.execute("COMMIT")
        finally:
            self.conn.close()

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        with self._reading():
            return self._tables.documents(name)

    def records(self, name: str, at: float | None = None) -> list[StoredRecord]:
        with self._reading():
            return self._tables.records(name, at)

    def history(self, name: str) -> list[HistoryPoint]:
        with self._reading():
            return self._tables.history(name)

    def dump(self, name: str) -> DocumentDump | None:
        with self._reading():
            return self._tables.dump(name)

    def webhooks(self, *, failed_only: bool = False) -> Listing:
        with self._reading():
            if not _has_table(self.conn, "webhook_events"):
                return Listing([], {})  # a database this collab has not migrated yet
            return outbox_tables(self.conn).listing(failed_only=failed_only)

    def _reading(self) -> _DriverErrors:
        return _DriverErrors(f"cannot read {where(self.url)}")


class _DriverErrors:
    """`with`: the driver's errors (a connection lost, a schema unknown) as one-line `StorageError`s."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if isinstance(error, psycopg.Error):
            raise StorageError(f"{self.doing}: {one_line(error)}") from error


def add_revocation(url: str, revocation: Revocation) -> int:
    """Store `revocation` (creating and migrating the schema if needed); its row id."""
    conn = connect(url)
    try:
        with _DriverErrors(f"cannot store the revocation in {where(url)}"):
            migrate(conn, url)
            with conn.transaction():
                row = conn.execute(
                    """INSERT INTO revocations (created_at, token_id, scope, before)
                       VALUES (%s, %s, %s, %s) RETURNING id""",
                    [time.time(), revocation.token_id, revocation.scope, revocation.before],
                ).fetchone()
        assert row is not None
        return int(row[0])
    finally:
        conn.close()


class PostgresRevocations:
    """The server's view of the revocations table: every row once, in order; reconnects after a lost connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_id = 0
        self._conn: Connection | None = None

    def read_new(self) -> list[Revocation]:
        """Rows added since the last call (all of them on the first); blocking, so run it on a thread."""
        if self._conn is None or self._conn.broken or self._conn.closed:
            self.close()
            self._conn = connect(self.url)
        with _DriverErrors(f"cannot read revocations from {where(self.url)}"):
            if not _has_table(self._conn, "revocations"):
                return []
            rows = self._conn.execute(
                "SELECT id, token_id, scope, before FROM revocations WHERE id > %s ORDER BY id", [self.last_id]
            ).fetchall()
        if rows:
            self.last_id = rows[-1][0]
        return [Revocation(token_id, scope, before) for _, token_id, scope, before in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresLock:
    """Use of a database by one server, exclusive or `shared` with the other servers of a cluster, held on a
    connection of its own while the server runs."""

    def __init__(self, url: str, *, shared: bool = False) -> None:
        self.url = url
        self.shared = shared
        self._conn: Connection | None = None
        self._details: dict[str, Any] = {}
        self._written: dict[str, Any] | None = None
        """Shared: the details this lock wrote last, to tell its own row from another holder's."""
        self._mutex = threading.Lock()
        """`check` runs on a thread of its own; `describe` and `release` may run meanwhile."""

    def acquire(self) -> None:
        """Take the lock, or raise `DatabaseInUseError` naming the server that has it."""
        with self._mutex:
            self._conn = self._take()
            self._describe(pid=os.getpid(), host=socket.gethostname())

    def _take(self) -> Connection:
        conn = connect(self.url)
        try:
            with _DriverErrors(f"cannot lock {where(self.url)}"):
                migrate(conn, self.url)  # collab_server must exist to say who holds the lock
                if not self._try_lock(conn):
                    holder = _details(conn)
                    process = f"pid {holder.get('pid')} on {holder.get('host')}"
                    if "command" in holder:  # `collab copy` or `collab import`, not a server
                        held = f"collab {holder['command']} ({process}) is writing to it"
                        raise DatabaseInUseError(f"the database {where(self.url)} is in use: {held}")
                    who = f"{process}, {holder.get('url', 'no address yet')}"
                    raise DatabaseInUseError(
                        f"the database {where(self.url)} is in use by {who if holder else 'another collab server'}"
                    )
        except BaseException:
            conn.close()
            raise
        return conn

    def _try_lock(self, conn: Connection) -> bool:
        """Take the lock; if this lock's own lost session still holds it (dead to us, not yet ended on the
        server's side), end that session first."""
        lost = self._details.get("backend")
        if self.shared:
            if lost is not None:  # its shared lock would outlast this server, keeping exclusive holders out
                self._end(conn, lost)
            return conn.execute(_TAKE_SHARED, [SERVER_KEY]).fetchone() == (True,)
        if conn.execute(_TAKE, [SERVER_KEY]).fetchone() == (True,):
            return True
        if lost is None or _details(conn).get("backend") != lost:
            return False
        self._end(conn, lost)
        return conn.execute(_TAKE, [SERVER_KEY]).fetchone() == (True,)

    def _end(self, conn: Connection, session: dict[str, Any]) -> None:
        """End `session`, waiting for it to go: that very session (a pid is reused: its start time tells
        sessions apart), not whatever has its pid now."""
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s AND backend_start::text = %s",
            [session["pid"], session["start"]],
        )

    def check(self) -> None:
        """Take the lock again if its connection was lost (PostgreSQL restarted, the backend terminated).

        A shared holder also records its own details again where the holder whose they were has gone.
        """
        with self._mutex:
            self._check()

    def _check(self) -> None:
        conn = self._conn
        if conn is None:
            return  # released
        if not conn.closed:
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError as error:
                if not conn.broken:
                    raise StorageError(f"cannot check the lock on {where(self.url)}: {one_line(error)}") from error
            else:
                if self.shared:
                    with _DriverErrors(f"cannot record the server in {where(self.url)}"):
                        if _gone(conn, _details(conn)):
                            self._write(conn)
                return
            conn.close()
        self._conn = self._take()  # if this raises, the next check tries again
        self._describe()

    def describe(self, **details: Any) -> None:
        """Record details (pid, url, auth) for whoever finds the lock held."""
        with self._mutex:
            self._describe(**details)

    def _describe(self, **details: Any) -> None:
        conn = self._conn
        assert conn is not None, "lock not held"
        with _DriverErrors(f"cannot record the server in {where(self.url)}"):
            session = conn.execute(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            if session is not None:  # a role may not see even its own session there: then none is ended
                self._details.update(backend={"pid": session[0], "start": session[1]})
            self._details.update(details)
            if self.shared:
                recorded = _details(conn)
                if recorded != self._written and not _gone(conn, recorded):
                    return  # another server of the cluster's, which will do
            self._write(conn)

    def _write(self, conn: Connection) -> None:
        conn.execute(
            """INSERT INTO collab_server (id, details) VALUES (1, %s)
               ON CONFLICT (id) DO UPDATE SET details = EXCLUDED.details, updated_at = now()""",
            [json.dumps(self._details)],
        )
        self._written = dict(self._details)

    def release(self) -> None:
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.broken:
                if not self.shared:
                    conn.execute("DELETE FROM collab_server")
                elif self._written is not None:  # its own only: another holder's details stay for it
                    conn.execute("DELETE FROM collab_server WHERE details = %s::jsonb", [json.dumps(self._written)])
                conn.execute(_UNLOCK_SHARED if self.shared else _UNLOCK, [SERVER_KEY])
        except psycopg.Error:
            pass  # closing the connection below releases the lock all the same
        finally:
            conn.close()


def _details(conn: Connection) -> dict[str, Any]:
    row = conn.execute("SELECT details FROM collab_server WHERE id = 1").fetchone()
    return dict(row[0]) if row is not None else {}


def _gone(conn: Connection, details: dict[str, Any]) -> bool:
    """Whether the session `details` are of holds the server lock no more, or they name none (a role that cannot
    see its own session in pg_stat_activity records none: then each check writes its own, and any will do)."""
    backend = details.get("backend")
    pid = backend.get("pid") if isinstance(backend, dict) else None
    return pid is None or conn.execute(_HOLDS, [SERVER_KEY, pid]).fetchone() != (True,)


def running_server(url: str) -> dict[str, Any] | None:
    """The details of the server holding the database's lock (one of a cluster's), or None if none holds it."""
    conn = connect(url)
    try:
        with _DriverErrors(f"cannot read {where(url)}"):
            if not _has_table(conn, "collab_server"):
                return None
            held = conn.execute(_HELD, [SERVER_KEY]).fetchone() == (True,)
            return _details(conn) if held else None
    finally:
        conn.close()


def describe(url: str) -> str:
    """The database in one line, for `collab stats`."""
    conn = connect(url)
    try:
        with _DriverErrors(f"cannot read {where(url)}"):
            row = conn.execute(
                "SELECT pg_database_size(current_database()), current_setting('server_version')"
            ).fetchone()
    finally:
        conn.close()
    assert row is not None
    return f"{where(url)} (server {row[1]}, {row[0]} bytes on disk)"
