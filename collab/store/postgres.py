"""The PostgreSQL engine: collab's tables in a database teams already run and back up.

The tables are those of `tables` (the same as SQLite's), with a `checked`
column on snapshots and updates (true for rows collab walked before storing
them; a row put there by hand is walked before pycrdt sees it), plus

    revocations(id, created_at, token_id, scope, before)   -- `collab revoke` (see `postgres_read`)
    collab_server(id = 1, details)                         -- where the server holding the database listens
    collab_migrations(name, applied_at)                    -- the migrations applied, by name

The driver is psycopg 3 (`collab[postgres]`): maintained, blocking calls that
suit the store's one worker thread, binary wheels that bring their own libpq.
One connection per engine: the store commits one group at a time, so a pool
would hold idle connections. A connection lost (the server restarted, the
backend terminated) is replaced by the next call; the store retries the
failed commit with the same writes.

Each group commit is one transaction: the documents it touches are created if
new and locked `FOR UPDATE` in name order (so two processes committing the same
documents queue instead of deadlocking), its log rows inserted, its compactions
done under that row lock (see `compaction`: exactly the rows read are deleted).
A delete or a rename takes the same locks; a commit that finds a document gone
or renamed meanwhile makes a new one by its name, in the same transaction.
Durability is the server's `synchronous_commit` (on by default: a commit returns
once the WAL is flushed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import AlreadyExistsError, ConfigError, StorageError
from . import DocumentDump, DocumentInfo, HistoryPoint, StoredRecord, WriteOp
from .compaction import OwnRows
from .history import Retention
from .outbox import CREATED, DELETED, RENAMED, OutboxTables, Recording, RecordingSetting, changes_of, resolve
from .tables import Tables

__all__ = [
    "MIGRATIONS",
    "PostgresEngine",
    "connect",
    "database_of",
    "migrate",
    "one_line",
    "outbox_tables",
    "postgres_tables",
    "where",
]

Connection = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")

MIGRATION_LOCK = 0x636F6C6C6162  # "collab": the advisory lock held while migrating
STREAM_ROWS = 256
"""Rows fetched at a time while reading: a long log streams in instead of being buffered whole."""

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "m001_documents",
        """
        CREATE TABLE documents (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL);
        CREATE TABLE snapshots (
            id bigserial PRIMARY KEY,
            doc_id bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            created_at double precision NOT NULL,
            data bytea NOT NULL,
            checked boolean NOT NULL DEFAULT false);
        CREATE INDEX snapshots_by_doc ON snapshots (doc_id, id);
        CREATE TABLE updates (
            id bigserial PRIMARY KEY,
            doc_id bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            created_at double precision NOT NULL,
            data bytea NOT NULL,
            checked boolean NOT NULL DEFAULT false);
        CREATE INDEX updates_by_doc ON updates (doc_id, id);
        CREATE TABLE checkpoints (
            id bigserial PRIMARY KEY,
            doc_id bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            created_at double precision NOT NULL,
            base boolean NOT NULL,
            data bytea NOT NULL);
        CREATE INDEX checkpoints_by_doc ON checkpoints (doc_id, id);
        """,
    ),
    (
        "m002_revocations",
        """
        CREATE TABLE revocations (
            id bigserial PRIMARY KEY,
            created_at double precision NOT NULL,
            token_id text,
            scope text,
            before double precision,
            CHECK ((token_id IS NOT NULL AND scope IS NULL AND before IS NULL)
                OR (token_id IS NULL AND scope IS NOT NULL AND before IS NOT NULL)));
        """,
    ),
    (
        "m003_server",
        """
        CREATE TABLE collab_server (
            id integer PRIMARY KEY CHECK (id = 1),
            details jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now());
        """,
    ),
    (
        "m004_lz4",
        # lz4 reads back several times faster than the default pglz (a cold join of a large document is one
        # such read) for about as much space; a server built without lz4 keeps pglz.
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
                       AND 'lz4' = ANY(enumvals)) THEN
                ALTER TABLE snapshots ALTER COLUMN data SET COMPRESSION lz4;
                ALTER TABLE updates ALTER COLUMN data SET COMPRESSION lz4;
                ALTER TABLE checkpoints ALTER COLUMN data SET COMPRESSION lz4;
            END IF;
        END
        $$;
        """,
    ),
    (
        "m005_webhook_outbox",
        # See `outbox`: the events of each change, written in its transaction, until every webhook has them.
        """
        CREATE TABLE webhook_events (
            id bigserial PRIMARY KEY,
            uid text NOT NULL,
            type text NOT NULL,
            name text NOT NULL,
            also text,
            first_at double precision NOT NULL,
            last_at double precision NOT NULL,
            gathering boolean NOT NULL,
            details text,
            created_at double precision NOT NULL);
        CREATE UNIQUE INDEX webhook_events_gathering ON webhook_events (name) WHERE gathering;
        CREATE INDEX webhook_events_undescribed ON webhook_events (id) WHERE details IS NULL;
        CREATE UNIQUE INDEX webhook_events_uid ON webhook_events (uid);
        CREATE TABLE webhook_deliveries (
            event_id bigint NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
            target text NOT NULL,
            attempts integer NOT NULL,
            next_at double precision NOT NULL,
            since double precision,
            unreachable_at double precision,
            last_error text,
            failed boolean NOT NULL,
            PRIMARY KEY (event_id, target));
        CREATE INDEX webhook_deliveries_queued ON webhook_deliveries (target, failed, event_id);
        CREATE TABLE webhook_lease (
            id integer PRIMARY KEY CHECK (id = 1),
            holder text NOT NULL,
            until double precision NOT NULL);
        CREATE TABLE webhook_config (
            id integer PRIMARY KEY CHECK (id = 1),
            targets text NOT NULL,
            types text NOT NULL);
        """,
    ),
)
"""Ordered, each applied once and recorded by name in collab_migrations; never edit one, add the next."""

DEFAULTS = {
    "connect_timeout": "10",
    "application_name": "collab",
    # A connection that silently went away (a host gone, a firewall dropping it) fails in about 30 s
    # instead of the kernel's two hours: the store's one worker thread must not hang in a commit.
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
"""libpq parameters collab sets unless the URL, a service file entry or the environment sets them."""
ENVIRONMENT = {"connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME"}
KEYS = (0x636F6C6C, 0x636F6C6D)
"""The first halves of collab's advisory locks (migrating, the one server); the second half names the schema."""
MIGRATION_KEY = KEYS[0]
NOT_A_URL = "--db: not a PostgreSQL URL (postgresql://user:password@host:port/dbname)"
"""libpq's own message quotes the URL, password and all: never show it."""


def where(url: str) -> str:
    """The database `url` names, for messages: never its password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL"
    host = params.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "(default)"
    return f"PostgreSQL {dbname} on {host}:{port}"


def database_of(url: str) -> tuple[str, str, str, str]:
    """Host, port, database and schema options `url` names, with the environment's defaults: two spellings of
    one database give the same (a host reached by two names does not)."""
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except psycopg.ProgrammingError:
        raise ConfigError(NOT_A_URL) from None
    host = params.get("host") or os.environ.get("PGHOST") or ""
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    user = params.get("user") or os.environ.get("PGUSER") or ""
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return host, port, dbname, params.get("options") or os.environ.get("PGOPTIONS") or ""


def one_line(error: BaseException) -> str:
    """A driver error's message on one line: libpq and PostgreSQL add hints and DETAIL lines after newlines."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def connect(url: str, *, autocommit: bool = True, lock_timeout: float | None = None) -> Connection:
    """A connection to `url` (a libpq URL; PG* variables fill in what it leaves out), or `StorageError`.

    With `lock_timeout`, a statement waiting for a lock another connection holds fails after that long
    (the store then retries the commit). Set on the session, so that `options` from the URL, PGOPTIONS or
    a service file stay as they are.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError(NOT_A_URL) from None
    if "service" in params or "PGSERVICE" in os.environ:
        extra = {}  # the service file says what it wants
    else:
        extra = {
            key: value
            for key, value in DEFAULTS.items()
            if key not in params and ENVIRONMENT.get(key, key.upper()) not in os.environ
        }
    try:
        conn = psycopg.connect(make_conninfo(url, **extra), autocommit=autocommit)
    except psycopg.Error as error:
        raise StorageError(f"cannot connect to {where(url)}: {one_line(error)}") from error
    if lock_timeout is not None:
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{round(lock_timeout * 1000)}ms"])
        except psycopg.Error as error:
            conn.close()
            raise StorageError(f"cannot set lock_timeout on {where(url)}: {one_line(error)}") from error
    return conn


def migrate(conn: Connection, url: str) -> None:
    """Bring the schema up to date in one transaction, under an advisory lock (processes starting together wait).

    The lock is per schema (its second half is the schema's name hashed), as collab's tables are.
    `StorageError` if a newer collab migrated it: never touch a schema we do not know.
    """
    known = [name for name, _ in MIGRATIONS]
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = 0")  # wait for another process's migration, however long
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", [MIGRATION_KEY])
        conn.execute(
            """CREATE TABLE IF NOT EXISTS collab_migrations (
                name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {name for (name,) in conn.execute("SELECT name FROM collab_migrations")}
        unknown = applied - set(known)
        if unknown:
            raise StorageError(
                f"{where(url)} was migrated by a newer collab ({', '.join(sorted(unknown))}); upgrade collab"
            )
        for name, statements in MIGRATIONS:
            if name not in applied:
                conn.execute(statements.encode())  # bytes: several statements in one simple query
                conn.execute("INSERT INTO collab_migrations (name) VALUES (%s)", [name])


STREAM_SIZE = STREAM_ROWS if psycopg.pq.version() >= 170000 else 1
"""Rows per chunk when streaming: libpq 17 fetches chunks; older ones one row at a time."""


def postgres_tables(conn: Connection) -> Tables:
    """collab's tables through `conn`: `?` placeholders become psycopg's, rows come in binary."""

    def execute(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return conn.cursor(binary=True).execute(_placeholders(sql), params).fetchall()

    def stream(sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        return conn.cursor(binary=True).stream(_placeholders(sql), params, size=STREAM_SIZE)

    def execute_many(sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            conn.cursor().executemany(_placeholders(sql), rows)

    def insert_rows(table: str, rows: Sequence[tuple[int, float, bytes]]) -> list[int]:
        if not rows:
            return []
        doc_ids, times, data = zip(*rows, strict=True)
        inserted = conn.execute(
            f"""INSERT INTO {table} (doc_id, created_at, data, checked)
                SELECT doc_id, at, data, true
                FROM unnest(%s::bigint[], %s::float8[], %s::bytea[]) WITH ORDINALITY AS new(doc_id, at, data, n)
                ORDER BY n
                RETURNING id""",
            [list(doc_ids), list(times), list(data)],
        ).fetchall()
        return sorted(row_id for (row_id,) in inserted)  # ids are drawn in insertion order

    return Tables(execute, stream, execute_many, insert_rows, {"snapshots": "checked", "updates": "checked"})


def _lock_documents(conn: Connection, created: dict[str, float], *, create: bool) -> tuple[dict[str, int], list[str]]:
    """Lock the documents named in `created` (first made, at those times, if `create`): their ids by name, and
    the names made just now.

    In name order, so that two processes committing the same documents queue instead of deadlocking.
    """
    names = sorted(created)
    made: list[str] = []
    if create:
        made = [
            name
            for (name,) in conn.execute(
                """INSERT INTO documents (name, created_at, updated_at)
                   SELECT name, at, at FROM unnest(%s::text[], %s::float8[]) AS new(name, at) ORDER BY name
                   ON CONFLICT (name) DO NOTHING RETURNING name""",
                [names, [created[name] for name in names]],
            ).fetchall()
        ]
    rows = conn.execute("SELECT name, id FROM documents WHERE name = ANY(%s) ORDER BY name FOR UPDATE", [names])
    return dict(rows.fetchall()), made


def outbox_tables(conn: Connection) -> OutboxTables:
    tables = postgres_tables(conn)
    return OutboxTables(tables.execute, tables.execute_many)


def _placeholders(sql: str) -> str:
    assert "%" not in sql, "collab's SQL holds no %: it would be read as a placeholder"
    return sql.replace("?", "%s")


class PostgresEngine:
    """Documents in a PostgreSQL database: the `Engine` `collab serve --db postgresql://…` runs on.

    The connection is in autocommit mode: a load is one statement (one round trip, one consistent moment),
    a commit one explicit transaction. A commit whose outcome was lost with its connection is retried, so
    its log rows may be stored twice: harmless to the document (CRDT merges are idempotent), one more
    history point. A delete or a rename retried so finds its work done, and says the name is unknown.
    """

    def __init__(
        self,
        url: str,
        *,
        lock_timeout: float = 5.0,
        retention: Retention | None = None,
        recording: RecordingSetting = None,
    ) -> None:
        self.url = url
        self.lock_timeout = lock_timeout
        self.retention = Retention() if retention is None else retention
        self._conn: Connection | None = None
        self._open = False
        self._doc_ids: dict[str, int] = {}
        """Documents known to exist: a commit of only those skips creating them."""
        self._own = OwnRows()
        self._outbox_reader: Connection | None = None
        """`read_outbox`'s own connection, so that its reads never wait for (or hold up) a commit."""
        self._recording_setting = recording
        self.recording: Recording | None = None
        """What each change adds to the webhook outbox (see `outbox`), once open; None: webhooks are off."""

    def open(self) -> None:
        conn = connect(self.url, lock_timeout=self.lock_timeout)
        try:
            migrate(conn, self.url)
        except BaseException:
            conn.close()
            raise
        self._conn, self._open = conn, True
        self.recording = self.outbox(lambda outbox: resolve(outbox, self._recording_setting))

    def close(self) -> None:
        self._open = False
        if self._outbox_reader is not None:
            self._outbox_reader.close()
            self._outbox_reader = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> Connection:
        """The open connection, or a new one if the last was lost (the store retries what failed with it)."""
        if not self._open:
            raise StorageError("store is not open")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._conn = connect(self.url, lock_timeout=self.lock_timeout)
        return self._conn

    def _on_connection(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)`, once more on a new connection if the one it got had died since its last use.

        psycopg learns that a connection is dead (PostgreSQL restarted, the backend was terminated) only
        by using it: without this, the first load after a restart would fail although the database is up.
        A commit retried this way is retried with the same writes, as the store would retry it.
        """
        conn = self._connection()
        try:
            return work(conn)
        except psycopg.OperationalError:
            if not conn.broken:
                raise
        return work(self._connection())

    def check_writable(self) -> None:
        self._on_connection(self._check_writable)

    def _check_writable(self, conn: Connection) -> None:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
            raise StorageError(f"{where(self.url)} is a read-only standby")

    def commit(self, batch: Sequence[WriteOp]) -> None:
        def write(conn: Connection) -> None:
            try:
                with conn.transaction():
                    self._write(conn, batch)
            except BaseException:
                self._own.rolled_back()
                self._doc_ids.clear()  # documents the transaction created are void
                raise
            self._own.committed()

        self._on_connection(write)

    def _write(self, conn: Connection, batch: Sequence[WriteOp]) -> None:
        created: dict[str, float] = {}
        updated: dict[str, float] = {}
        for op in batch:
            created.setdefault(op.name, op.at)
            updated[op.name] = max(updated.get(op.name, op.at), op.at)
        names = sorted(created)
        doc_ids, made = _lock_documents(conn, created, create=any(name not in self._doc_ids for name in names))
        if len(doc_ids) < len(names):  # deleted or renamed since we saw them (here or elsewhere): made anew
            doc_ids, made_now = _lock_documents(conn, created, create=True)
            made += made_now
        if len(doc_ids) < len(names):
            raise StorageError("documents vanished during a commit; retrying")
        self._doc_ids.update(doc_ids)
        tables = postgres_tables(conn)
        appends: list[WriteOp] = []
        for op in batch:
            if op.kind == "append":
                appends.append(op)
                continue
            self._append(tables, doc_ids, appends)  # what came before the compaction is in the log it reads
            appends = []
            tables.compact(doc_ids[op.name], op, self._own, self.retention)
        self._append(tables, doc_ids, appends)
        conn.execute(
            """UPDATE documents SET updated_at = greatest(documents.updated_at, changed.at)
               FROM unnest(%s::bigint[], %s::float8[]) AS changed(id, at) WHERE documents.id = changed.id""",
            [[doc_ids[name] for name in names], [updated[name] for name in names]],
        )
        if self.recording is not None:
            outbox = outbox_tables(conn)
            for name in sorted(made):
                outbox.add(CREATED, name, created[name], {}, self.recording)
            outbox.changed(changes_of(batch), self.recording)

    def _append(self, tables: Tables, doc_ids: dict[str, int], appends: list[WriteOp]) -> None:
        ids = tables.insert_rows("updates", [(doc_ids[op.name], op.at, op.data) for op in appends])
        self._own.wrote(
            "updates", [(doc_ids[op.name], row_id, op.data) for op, row_id in zip(appends, ids, strict=True)]
        )

    def restore(self, dump: DocumentDump) -> None:
        def write(conn: Connection) -> None:
            with conn.transaction():
                postgres_tables(conn).restore(dump)

        self._on_connection(write)

    def delete(self, name: str) -> bool:
        self._doc_ids.pop(name, None)

        def write(conn: Connection) -> bool:
            try:
                with conn.transaction():
                    # Locked as a commit locks it: one committing it meanwhile waits, then makes it anew.
                    row = conn.execute("SELECT id FROM documents WHERE name = %s FOR UPDATE", [name]).fetchone()
                    if row is not None:
                        tables = postgres_tables(conn)
                        tables.delete(row[0], self._own)
                        if self.recording is not None:
                            outbox_tables(conn).add(DELETED, name, time.time(), {}, self.recording)
            except BaseException:
                self._own.rolled_back()
                raise
            self._own.committed()
            return row is not None

        return self._on_connection(write)

    def rename(self, old: str, new: str) -> None:
        self._doc_ids.pop(old, None)

        def write(conn: Connection) -> None:
            try:
                with conn.transaction():
                    # Both names locked in name order, as commits lock theirs: whoever comes second waits.
                    conn.execute("SELECT id FROM documents WHERE name = ANY(%s) ORDER BY name FOR UPDATE", [[old, new]])
                    tables = postgres_tables(conn)
                    tables.rename(old, new)
                    if self.recording is not None:
                        outbox_tables(conn).add(RENAMED, old, time.time(), {"to": new}, self.recording)
            except psycopg.errors.UniqueViolation as error:  # `new` made by a commit elsewhere meanwhile
                raise AlreadyExistsError.for_name(new) from error

        self._on_connection(write)

    def outbox(self, work: Callable[[OutboxTables], T]) -> T:
        def run(conn: Connection) -> T:
            with conn.transaction():
                return work(outbox_tables(conn))

        return self._on_connection(run)

    def read_outbox(self, work: Callable[[OutboxTables], T]) -> T:
        conn = self._outbox_reader
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = self._outbox_reader = connect(self.url)
        with conn.transaction():
            return work(outbox_tables(conn))

    def load(self, name: str, at: float | None = None) -> list[StoredRecord]:
        return self._on_connection(lambda conn: postgres_tables(conn).records(name, at))

    def documents(self, name: str | None = None) -> list[DocumentInfo]:
        return self._on_connection(lambda conn: postgres_tables(conn).documents(name))

    def history(self, name: str) -> list[HistoryPoint]:
        return self._on_connection(lambda conn: postgres_tables(conn).history(name))
