"""One server per database, and where it listens: an advisory lock beside the database.

The server holds an exclusive `flock` on `<db>.lock` while it runs and writes
its address into it. Commands that work on the database file (import) look at
the lock to find a running server and go through it instead, so that what
they write reaches the connected clients and is never overwritten by the
server's own compaction.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DatabaseInUseError, StorageError

__all__ = ["DatabaseLock", "running_server"]


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class DatabaseLock:
    """Exclusive use of a database by this process."""

    def __init__(self, db: Path) -> None:
        self.path = lock_path(db)
        self._fd: int | None = None
        self._details: dict[str, Any] = {}

    def acquire(self) -> None:
        """Take the lock, or raise `DatabaseInUseError` naming the process that has it (`StorageError`: no access)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StorageError(f"cannot open database {self.path.with_suffix('')}: {error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            db = self.path.with_suffix("")
            if "command" in holder:  # `collab copy` or `collab import`, not a server
                held = f"collab {holder['command']} (pid {holder.get('pid')}) is writing to it"
                raise DatabaseInUseError(f"the database {db} is in use: {held}") from None
            who = f"pid {holder.get('pid')}, {holder.get('url', 'no address yet')}" if holder else "another process"
            raise DatabaseInUseError(f"the database {db} is in use by {who}") from None
        self._fd = fd
        self.describe(pid=os.getpid())

    def describe(self, **details: Any) -> None:
        """Record details (pid, url; command for a CLI command writing the database) for whoever finds the lock held."""
        assert self._fd is not None, "lock not held"
        self._details.update(details)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self._details).encode(), 0)

    def check(self) -> None:
        """An flock lasts as long as its file descriptor: nothing can take it from a running server."""

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def running_server(db: Path) -> dict[str, Any] | None:
    """The details of the server holding `db`'s lock, or None if nobody holds it."""
    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or {}
    else:
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        described: dict[str, Any] = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return described
    except ValueError:
        return {}
