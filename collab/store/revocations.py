"""Revoked tokens in the database: `collab revoke` writes them, the running server polls them.

    revocations(id, created_at, token_id, scope, before)
        token_id: that one token (its `jti`), on every document, and the share links made from it;
        scope, before: every token issued (`iat`) before `before`, on the document `scope`
                       or, for a prefix ending in '/', on every document under it, and every share
                       link whose first token was (`collab.auth.Via`: what a leaked token shares is leaked).

Why polling rather than telling the server through its HTTP API: the row is the
whole mechanism, so it works from any process or host that can write the file,
needs no endpoint of its own to secure, survives restarts (a server reads every
row when it starts) and cannot be lost between "stored" and "told". The server
asks for rows newer than the last it saw every `POLL_INTERVAL`: one lookup on
the primary key, microseconds, on a thread of its own.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..auth import Revocation
from ..errors import StorageError
from .sqlite import open_database
from .sqlite_read import connect_read_only

__all__ = ["POLL_INTERVAL", "RevocationReader", "add_revocation"]

POLL_INTERVAL = 0.5
"""Seconds between the server's looks at the table: a revocation reaches live connections within about this."""


def add_revocation(path: Path, revocation: Revocation, busy_timeout: float = 5.0) -> int:
    """Store `revocation` in the database at `path` (created and migrated if needed); its row id."""
    conn = open_database(path, busy_timeout).conn
    try:
        with conn:
            cursor = conn.execute(
                "INSERT INTO revocations (created_at, token_id, scope, before) VALUES (?, ?, ?, ?)",
                [time.time(), revocation.token_id, revocation.scope, revocation.before],
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid
    except sqlite3.Error as error:
        raise StorageError(f"cannot store the revocation in {path}: {error}") from error
    finally:
        conn.close()


class RevocationReader:
    """The server's view of the table: every row once, in order, through its own read-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_id = 0
        self._conn: sqlite3.Connection | None = None

    def read_new(self) -> list[Revocation]:
        """Rows added since the last call (all of them on the first); blocking, so run it on a thread."""
        try:
            if self._conn is None:
                self._conn = connect_read_only(self.path, check_same_thread=False)
            rows = self._conn.execute(
                "SELECT id, token_id, scope, before FROM revocations WHERE id > ? ORDER BY id", [self.last_id]
            ).fetchall()
        except sqlite3.Error as error:
            raise StorageError(f"cannot read revocations from {self.path}: {error}") from error
        if rows:
            self.last_id = rows[-1][0]
        return [Revocation(token_id, scope, before) for _, token_id, scope, before in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
