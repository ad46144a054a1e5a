"""One server per database, or the servers of one cluster, and where one listens: an advisory lock beside it.

A server holds an `flock` on `<db>.lock` while it runs and writes its address
into it: an exclusive one for a server of its own, a shared one for each server
of a cluster (`--relay`), which run together but never beside a server of its own
or a command writing the database (those take it exclusively too). Commands that
work on the database file (import) look at the lock to find a running server and
go through it instead, so that what they write reaches the connected clients and
is never overwritten by the server's own compaction.

Shared holders keep one set of details in the file, any one's (they relay to
each other): each writes its own only where none are, or they are its own, or
their process is gone; removes them only if they are its own; and `check` puts
its own back once the holder they were of has gone. Pids are of this machine:
a SQLite database is shared by the processes of one machine only.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import DatabaseInUseError, StorageError

__all__ = ["DatabaseLock", "running_server"]

SIZE = 4096
"""What is read of the file; a shared holder writes its details padded to it, in one write, so that two holders
writing at once leave one's whole (a write is atomic with respect to other writes on Linux's file systems)."""
RETRY = 0.5
"""Seconds `acquire` tries again while the lock is held by nobody that says who: `running_server` probing it (for
microseconds), or a holder between taking it and recording itself."""
RETRY_PAUSE = 0.01


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class DatabaseLock:
    """Use of a database by this process: exclusive, or `shared` with the other servers of a cluster."""

    def __init__(self, db: Path, *, shared: bool = False) -> None:
        self.path = lock_path(db)
        self.shared = shared
        self._fd: int | None = None
        self._details: dict[str, Any] = {}
        self._written: dict[str, Any] | None = None
        """Shared: the details this lock wrote last, to tell its own in the file from another holder's."""
        self._mutex = threading.Lock()
        """`check` runs on a thread of its own; `describe` and `release` may run meanwhile."""

    def acquire(self) -> None:
        """Take the lock, or raise `DatabaseInUseError` naming the process that has it (`StorageError`: no access)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StorageError(f"cannot open database {self.path.with_suffix('')}: {error}") from error
        try:
            holder = _take(fd, self.shared)
        except BaseException:
            os.close(fd)
            raise
        if holder is not None:
            os.close(fd)
            db = self.path.with_suffix("")
            if "command" in holder:  # `collab copy` or `collab import`, not a server
                held = f"collab {holder['command']} (pid {holder.get('pid')}) is writing to it"
                raise DatabaseInUseError(f"the database {db} is in use: {held}")
            who = f"pid {holder.get('pid')}, {holder.get('url', 'no address yet')}" if holder else "another process"
            raise DatabaseInUseError(f"the database {db} is in use by {who}")
        with self._mutex:
            self._fd = fd
            self._describe(pid=os.getpid())

    def describe(self, **details: Any) -> None:
        """Record details (pid, url; command for a CLI command writing the database) for whoever finds the lock held."""
        with self._mutex:
            self._describe(**details)

    def _describe(self, **details: Any) -> None:
        assert self._fd is not None, "lock not held"
        self._details.update(details)
        if not self.shared:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(self._details).encode(), 0)
            return
        recorded = _read(self._fd)
        if recorded == self._written or _gone(recorded):
            self._write_shared()

    def _write_shared(self) -> None:
        assert self._fd is not None
        os.pwrite(self._fd, json.dumps(self._details).encode().ljust(SIZE), 0)
        self._written = dict(self._details)

    def check(self) -> None:
        """An flock lasts as long as its file descriptor: nothing can take it from a running server.

        A shared holder records its own details again where the holder whose they were has gone.
        """
        with self._mutex:
            if self.shared and self._fd is not None and _gone(_read(self._fd)):
                self._write_shared()

    def release(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if not self.shared or _read(fd) == self._written:  # another holder's details stay for it
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the flock


def _take(fd: int, shared: bool) -> dict[str, Any] | None:
    """Take the flock on `fd`: None, or what its holder recorded ({} if nothing) when it is held."""
    deadline = time.monotonic() + RETRY
    while True:
        try:
            if shared:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # other servers of the cluster hold it (the next flock succeeds), or someone else
                else:
                    os.ftruncate(fd, 0)  # held by nobody: what the file says is of a holder killed meanwhile
            # Turning an exclusive flock shared lets go of it first: another process may take it in between.
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            holder = _read(fd)
            if not _gone(holder) or time.monotonic() >= deadline:
                return holder
        time.sleep(RETRY_PAUSE)


def running_server(db: Path) -> dict[str, Any] | None:
    """The details of the server holding `db`'s lock ({} if it recorded none), or None if nobody holds it."""
    path = lock_path(db)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # Exclusive, since a shared flock is taken beside the servers of a cluster; let go of at once (closing).
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd)
    else:
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        described = json.loads(os.pread(fd, SIZE, 0) or b"{}")
    except ValueError:
        return {}
    return described if isinstance(described, dict) else {}


def _gone(details: dict[str, Any]) -> bool:
    """Whether the process `details` are of has ended (or they name none)."""
    pid = details.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # kill(0) and kill(-1) would signal groups of processes
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False
