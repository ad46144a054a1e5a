"""Which engine a `--db` value names, and everything collab does with that database.

    data/collab.db, ./odd:name.db               a SQLite file (a bare path is one)
    sqlite:///srv/collab.db, sqlite:rel.db      a SQLite file, absolute (no host) or relative
    postgresql://user:pass@host:5432/dbname     a PostgreSQL database (postgres:// too; libpq URL
                                                parameters and PG* variables work; collab[postgres])
    memory:                                     documents in the server's memory, gone when it stops
                                                (for tests and trying collab out)

`locate(db)` looks the value's scheme up in `SCHEMES` and returns a `Backend`:
the engine the server's store runs on, a read-only `Reader` for the command
line, the lock that keeps a database to one server, and the revoked tokens.
Rooms, the server, the HTTP API and the CLI reach a database only through
here, so a new engine is one more `Backend` and one more entry in `SCHEMES`.
Print a `--db` value only through `redacted`: a database URL may hold a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..auth import Revocation
from ..config import Settings
from ..errors import ConfigError, StorageError
from . import Engine, Reader
from .group_commit import GroupCommitStore
from .history import Retention
from .lockfile import DatabaseLock, running_server
from .memory import MemoryEngine
from .outbox import STORED, Recording, RecordingSetting
from .revocations import RevocationReader, add_revocation
from .sqlite import SQLiteEngine
from .sqlite_read import SQLiteReader

__all__ = [
    "SCHEMES",
    "Backend",
    "InMemory",
    "PostgresDatabase",
    "RevocationFeed",
    "SQLiteFile",
    "ServerLock",
    "locate",
    "open_reader",
    "open_store",
    "redacted",
]

ACCEPTED = (
    "a file path (./ before a name with a colon), sqlite:///abs/path.db, sqlite:rel/path.db,"
    " postgresql://user:password@host:port/dbname or memory:"
)
"""The `--db` forms, for the errors that refuse another."""


class ServerLock(Protocol):
    """Use of a database by one server, or by the servers of one cluster, and where one listens (see `lockfile`).

    Taken exclusively (a server of its own; a CLI command writing the database) or shared (each server of a
    cluster, `--relay`): shared holders run together, never beside an exclusive one.
    """

    def acquire(self) -> None:
        """Take it, or raise the error that names who has it (an exclusive holder, or one of the shared ones)."""
        ...

    def describe(self, **details: Any) -> None:
        """Record details (pid, url, auth; `command` for a CLI command) for whoever finds it held.

        `Backend.running_server` reads them. Shared holders keep one set, any one's: another's stay recorded.
        """
        ...

    def check(self) -> None:
        """Make sure it is still held, taking it again if it was lost and is free (blocking: run it on a thread).

        A shared holder also records its details again where the holder whose they were has gone.
        `DatabaseInUseError` if another server took it meanwhile; `StorageError` if that cannot be known now.
        """
        ...

    def release(self) -> None: ...


class RevocationFeed(Protocol):
    """The revocations stored for a database, each once, in order (see `revocations`)."""

    def read_new(self) -> list[Revocation]:
        """Those stored since the last call (all on the first); blocking, so run it on a thread."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """One database, as named by `--db`."""

    @property
    def persistent(self) -> bool:
        """Whether what is written outlives the process (False for `memory:`: nothing to import into)."""
        ...

    def engine(self, settings: Settings, *, serving: bool = False) -> Engine:
        """An engine on this database, tuned by `settings`; not opened yet.

        `serving`: for a server, which records in the webhook outbox what its settings say (and stores that);
        otherwise (a command writing the database) it records what the last server started there stored.
        """
        ...

    def reader(self) -> Reader:
        """A read-only view (use it in `with`); `StorageError` if there is no such database."""
        ...

    def lock(self, shared: bool = False) -> ServerLock:
        """The lock a server holds while it runs on this database: `shared` for a server of a cluster."""
        ...

    def running_server(self) -> dict[str, Any] | None:
        """What the server holding the lock recorded (pid, url, auth; one of a cluster's), or None if none runs."""
        ...

    def revocations(self) -> RevocationFeed:
        """What the server polls for revoked tokens."""
        ...

    def add_revocation(self, revocation: Revocation) -> None:
        """Store `revocation` (creating the database if needed) for every server on it to see."""
        ...

    def describe(self) -> str:
        """The database in one line, for `collab stats`."""
        ...

    def same_as(self, other: Backend) -> bool:
        """Whether `other` names this very database, however it is spelt (`collab copy` refuses one into itself)."""
        ...


def _retention(settings: Settings) -> Retention:
    return Retention(settings.history_recent, settings.history_hourly, settings.history_daily)


def recording(settings: Settings) -> Recording | None:
    """What a server's engine adds to the webhook outbox with each change: nothing without `--webhook`.

    The one place a `Recording` is made from settings (the sender's too): each URL once, however often given.
    """
    if not settings.webhooks:
        return None
    return Recording(tuple(dict.fromkeys(settings.webhooks)), frozenset(settings.webhook_events))


def _recording(settings: Settings, serving: bool) -> RecordingSetting:
    return recording(settings) if serving else STORED


@dataclass(frozen=True, slots=True)
class SQLiteFile:
    """A SQLite database file (and its `-wal`, `-shm` and `.lock` files beside it)."""

    path: Path

    @property
    def persistent(self) -> bool:
        return True

    @classmethod
    def from_location(cls, location: str) -> SQLiteFile:
        # sqlite:///srv/collab.db holds /srv/collab.db, as a file URL does; sqlite:collab.db is relative.
        path = location
        if location.startswith("//"):
            host, slash, path = location[2:].partition("/")
            if host:
                raise ConfigError(f"--db {redacted('sqlite:' + location)!r}: a SQLite file has no host; use {ACCEPTED}")
            path = slash + path
        if not path:
            raise ConfigError(f"--db sqlite: names no file; use {ACCEPTED}")
        return cls(Path(path))

    def engine(self, settings: Settings, *, serving: bool = False) -> Engine:
        return SQLiteEngine(
            self.path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout=settings.sqlite_busy_timeout,
            retention=_retention(settings),
            recording=_recording(settings, serving),
        )

    def reader(self) -> Reader:
        return SQLiteReader(self.path)

    def lock(self, shared: bool = False) -> ServerLock:
        return DatabaseLock(self.path, shared=shared)

    def running_server(self) -> dict[str, Any] | None:
        return running_server(self.path)

    def revocations(self) -> RevocationFeed:
        return RevocationReader(self.path)

    def add_revocation(self, revocation: Revocation) -> None:
        add_revocation(self.path, revocation)

    def describe(self) -> str:
        files = 0
        for suffix in ("", "-wal", "-shm"):  # by name: a glob would count x.db.bak, and read d[1].db as a pattern
            try:
                files += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return f"{self.path} ({files} bytes on disk, with WAL)"

    def same_as(self, other: Backend) -> bool:
        return isinstance(other, SQLiteFile) and self.path.resolve() == other.path.resolve()


@dataclass(frozen=True, slots=True)
class PostgresDatabase:
    """A PostgreSQL database, named by a libpq URL; psycopg (`collab[postgres]`) is imported only for one."""

    url: str

    @property
    def persistent(self) -> bool:
        return True

    @classmethod
    def from_location(cls, location: str) -> PostgresDatabase:
        if not location.startswith("//"):
            raise ConfigError(f"--db {redacted('postgresql:' + location)!r}: a PostgreSQL URL starts postgresql://")
        try:
            import psycopg  # noqa: F401  (said here, before anything is started)
        except ImportError:
            raise ConfigError(
                "--db postgresql://… needs PostgreSQL support: pip install 'collab[postgres]' (scripts/serve does)"
            ) from None
        return cls("postgresql:" + location)

    def engine(self, settings: Settings, *, serving: bool = False) -> Engine:
        from .postgres import PostgresEngine

        return PostgresEngine(
            self.url,
            lock_timeout=settings.postgres_lock_timeout,
            retention=_retention(settings),
            recording=_recording(settings, serving),
        )

    def reader(self) -> Reader:
        from .postgres_read import PostgresReader

        return PostgresReader(self.url)

    def lock(self, shared: bool = False) -> ServerLock:
        from .postgres_read import PostgresLock

        return PostgresLock(self.url, shared=shared)

    def running_server(self) -> dict[str, Any] | None:
        from .postgres_read import running_server

        return running_server(self.url)

    def revocations(self) -> RevocationFeed:
        from .postgres_read import PostgresRevocations

        return PostgresRevocations(self.url)

    def add_revocation(self, revocation: Revocation) -> None:
        from .postgres_read import add_revocation

        add_revocation(self.url, revocation)

    def describe(self) -> str:
        from .postgres_read import describe

        return describe(self.url)

    def same_as(self, other: Backend) -> bool:
        from .postgres import database_of

        return isinstance(other, PostgresDatabase) and database_of(self.url) == database_of(other.url)


@dataclass(frozen=True, slots=True)
class InMemory:
    """`memory:`: a fresh `MemoryEngine` per server, which no other process can reach."""

    @property
    def persistent(self) -> bool:
        return False

    @classmethod
    def from_location(cls, location: str) -> InMemory:
        if location:
            raise ConfigError(
                f"--db {redacted('memory:' + location)!r}: memory: takes nothing after it; use {ACCEPTED}"
            )
        return cls()

    def engine(self, settings: Settings, *, serving: bool = False) -> Engine:
        return MemoryEngine(_recording(settings, serving))

    def reader(self) -> Reader:
        raise StorageError("a memory: database lives inside its server only; use the server's /api/docs")

    def lock(self, shared: bool = False) -> ServerLock:
        return _Unshared()

    def running_server(self) -> dict[str, Any] | None:
        return None

    def revocations(self) -> RevocationFeed:
        return _Unshared()

    def add_revocation(self, revocation: Revocation) -> None:
        raise ConfigError("a memory: database cannot be reached from another process: restart the server instead")

    def describe(self) -> str:
        return "memory: (in the server's memory)"

    def same_as(self, other: Backend) -> bool:
        return False  # each server has its own


class _Unshared:
    """The lock and the revocations of a database no other process can reach: nothing to hold, none to read."""

    def acquire(self) -> None:
        pass

    def describe(self, **details: Any) -> None:
        pass

    def check(self) -> None:
        pass

    def release(self) -> None:
        pass

    def read_new(self) -> list[Revocation]:
        return []

    def close(self) -> None:
        pass


SCHEMES: dict[str, Callable[[str], Backend]] = {
    "sqlite": SQLiteFile.from_location,
    "postgresql": PostgresDatabase.from_location,
    "postgres": PostgresDatabase.from_location,
    "memory": InMemory.from_location,
}
"""`--db` scheme (lower case) -> what opens the rest of the value. A value with no scheme is a SQLite file path."""

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]+):", re.IGNORECASE)  # two letters at least: C:\ is a drive, not a scheme
_PASSWORD = re.compile(r"^(?P<user>[a-z][a-z0-9+.-]*://[^:/?#@]*):[^?#]*@", re.IGNORECASE)
"""A URL's `scheme://user:` and everything up to the last `@` before its query: drivers split a password
holding `@` or `/` differently, so all that any of them may read as the password is hidden."""


_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
"""libpq also takes the password as a query parameter (`?password=…`)."""


def redacted(db: str) -> str:
    """`db` with a URL's password hidden (`postgresql://user:***@host/db`), fit for a log line or an error."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD.sub(r"\g<user>:***@", db, count=1))


def locate(db: str | os.PathLike[str]) -> Backend:
    """The database `db` names: `scheme:rest` for a known scheme (in any case), else a SQLite file path.

    Only a `str` is read for a scheme: a `Path` is always a file, since `Path("./odd:name.db")` has already
    dropped the `./` that told `odd:` from a scheme (and `Path("sqlite:///x")` is `sqlite:/x`).
    Raises `ConfigError` for a scheme collab has no engine for, or a form its engine does not take.
    """
    if not isinstance(db, str):
        return SQLiteFile(Path(db))
    match = _SCHEME.match(db)
    if match is None:
        return SQLiteFile(Path(db))
    scheme = match[1].lower()
    opener = SCHEMES.get(scheme)
    if opener is None:
        raise ConfigError(f"--db {redacted(db)!r}: collab has no engine for {scheme}:; use {ACCEPTED}")
    return opener(db[match.end() :])


def open_store(settings: Settings, *, serving: bool = False) -> GroupCommitStore[Engine]:
    """The store for `settings.db`, not started yet (`await store.start()`); `serving`: a server's (see
    `Backend.engine`)."""
    engine = locate(settings.db).engine(settings, serving=serving)
    return GroupCommitStore(engine, commit_interval=settings.commit_interval)


def open_reader(db: str | os.PathLike[str]) -> Reader:
    """A read-only view of the database `db` names, for `with`; `StorageError` if it does not exist."""
    return locate(db).reader()
