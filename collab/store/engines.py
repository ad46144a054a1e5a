"""Which engine a `--db` value names, and everything collab does with that database.

    data/collab.db, sqlite:///srv/collab.db     a SQLite file (a bare path is one)
    memory:                                     documents in the server's memory, gone when it stops
                                                (for tests and trying collab out)

`locate(db)` looks the value's scheme up in `SCHEMES` and returns a `Backend`:
the engine the server's store runs on, a read-only `Reader` for the command
line, the lock that keeps a database to one server, and the revoked tokens.
Rooms, the server, the HTTP API and the CLI reach a database only through
here, so a new engine is one more `Backend` and one more entry in `SCHEMES`.
"""

from __future__ import annotations

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
from .revocations import RevocationReader, add_revocation
from .sqlite import SQLiteEngine
from .sqlite_read import SQLiteReader

__all__ = [
    "SCHEMES",
    "Backend",
    "InMemory",
    "RevocationFeed",
    "SQLiteFile",
    "ServerLock",
    "locate",
    "open_reader",
    "open_store",
]


class ServerLock(Protocol):
    """Exclusive use of a database by one server, and where that server listens (see `lockfile`)."""

    def acquire(self) -> None:
        """Take it, or raise the error that names who has it."""
        ...

    def describe(self, **details: Any) -> None:
        """Record details (pid, url, auth) for whoever finds it held (`Backend.running_server`)."""
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

    def engine(self, settings: Settings) -> Engine:
        """The engine for the server's store, tuned by `settings`; not opened yet."""
        ...

    def reader(self) -> Reader:
        """A read-only view (use it in `with`); `StorageError` if there is no such database."""
        ...

    def lock(self) -> ServerLock:
        """The lock a server holds while it runs on this database."""
        ...

    def running_server(self) -> dict[str, Any] | None:
        """What the server holding the lock recorded (pid, url, auth), or None if no server runs."""
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


@dataclass(frozen=True, slots=True)
class SQLiteFile:
    """A SQLite database file (and its `-wal`, `-shm` and `.lock` files beside it)."""

    path: Path

    @classmethod
    def from_location(cls, location: str) -> SQLiteFile:
        # sqlite:///srv/collab.db holds /srv/collab.db, as a file URL does; sqlite:collab.db is relative.
        path = location.removeprefix("//")
        if not path:
            raise ConfigError("--db sqlite: names no file; try sqlite:///srv/collab.db or a plain path")
        return cls(Path(path))

    def engine(self, settings: Settings) -> Engine:
        retention = Retention(settings.history_recent, settings.history_hourly, settings.history_daily)
        return SQLiteEngine(
            self.path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout=settings.sqlite_busy_timeout,
            retention=retention,
        )

    def reader(self) -> Reader:
        return SQLiteReader(self.path)

    def lock(self) -> ServerLock:
        return DatabaseLock(self.path)

    def running_server(self) -> dict[str, Any] | None:
        return running_server(self.path)

    def revocations(self) -> RevocationFeed:
        return RevocationReader(self.path)

    def add_revocation(self, revocation: Revocation) -> None:
        add_revocation(self.path, revocation)

    def describe(self) -> str:
        files = sum(
            path.stat().st_size for path in self.path.parent.glob(self.path.name + "*") if path.suffix != ".lock"
        )
        return f"{self.path} ({files} bytes on disk, with WAL)"


@dataclass(frozen=True, slots=True)
class InMemory:
    """`memory:`: a fresh `MemoryEngine` per server, which no other process can reach."""

    def engine(self, settings: Settings) -> Engine:
        return MemoryEngine()

    def reader(self) -> Reader:
        raise StorageError("a memory: database lives inside its server only; use the server's /api/docs")

    def lock(self) -> ServerLock:
        return _Unshared()

    def running_server(self) -> dict[str, Any] | None:
        return None

    def revocations(self) -> RevocationFeed:
        return _Unshared()

    def add_revocation(self, revocation: Revocation) -> None:
        raise ConfigError("a memory: database cannot be reached from another process: restart the server instead")

    def describe(self) -> str:
        return "memory: (in the server's memory)"


class _Unshared:
    """The lock and the revocations of a database no other process can reach: nothing to hold, none to read."""

    def acquire(self) -> None:
        pass

    def describe(self, **details: Any) -> None:
        pass

    def release(self) -> None:
        pass

    def read_new(self) -> list[Revocation]:
        return []

    def close(self) -> None:
        pass


SCHEMES: dict[str, Callable[[str], Backend]] = {"sqlite": SQLiteFile.from_location, "memory": lambda _: InMemory()}
"""`--db` scheme -> what opens the rest of the value. A value with no scheme is a SQLite file path."""

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]+):")


def locate(db: str | Path) -> Backend:
    """The database `db` names: `scheme:rest` for a known scheme, else a SQLite file path.

    Raises `ConfigError` for a scheme collab has no engine for (prefix a file name holding a colon with ./).
    """
    text = str(db)
    match = _SCHEME.match(text)
    if match is None:
        return SQLiteFile(Path(text))
    opener = SCHEMES.get(match[1])
    if opener is None:
        known = ", ".join(f"{scheme}:" for scheme in SCHEMES)
        raise ConfigError(f"--db {text!r}: no engine for {match[1]}:, only for {known} (or a file path)")
    return opener(text[match.end() :])


def open_store(settings: Settings) -> GroupCommitStore[Engine]:
    """The store for `settings.db`, not started yet (`await store.start()`)."""
    engine = locate(settings.db).engine(settings)
    return GroupCommitStore(engine, commit_interval=settings.commit_interval)


def open_reader(db: str | Path) -> Reader:
    """A read-only view of the database `db` names, for `with`; `StorageError` if it does not exist."""
    return locate(db).reader()
