"""`collab import`: merge a `ydoc` backup into a document.

Merging is a CRDT merge: whatever the document already has is not added again,
so importing the same backup twice changes nothing. If a server is running on
the database (see `store.lockfile`), the import goes through it as a WebSocket
client: connected clients see the content at once and the server stores it.
Otherwise it is written to the database file directly (created if missing),
holding the database lock so that no server starts meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pycrdt import Doc

from ..auth import Permission, mint_token
from ..client import Client
from ..config import Settings
from ..errors import (
    FORBIDDEN,
    UNAUTHENTICATED,
    ConfigError,
    DatabaseInUseError,
    ForbiddenError,
    ImportFailed,
    InvalidUpdateError,
    StorageError,
    UnauthenticatedError,
)
from ..formats import doc_from_records
from ..store import Engine, WriteOp
from ..store.engines import Backend, locate, redacted
from ..sync.names import validate_room_name
from ..sync.room import check_update

__all__ = ["Imported", "driver_errors", "import_update", "merge_through_server", "server_address"]

SERVER_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Imported:
    name: str
    changed: bool
    via: str
    """'server ws://…' or 'database PATH'."""


async def import_update(settings: Settings, update: bytes, name: str) -> Imported:
    """Merge `update` (a Yjs v1 update) into document `name` of `settings.db`."""
    validate_room_name(name)
    try:
        check_update(update)
    except InvalidUpdateError as error:
        raise ImportFailed(f"not a Yjs update (expected a .ydoc file from collab export): {error}") from error
    database = locate(settings.db)
    server = database.running_server()
    if server is not None:
        return await merge_through_server(settings, server, update, name)
    return await _into_database(database, settings, update, name)


async def merge_through_server(settings: Settings, server: dict[str, Any], update: bytes, name: str) -> Imported:
    """Merge `update`, already checked, into `name` as a client of `server` (what `running_server` found).

    `collab copy` calls it too, once per document. `DatabaseInUseError` as `server_address` says.
    """
    where = server_address(settings, server)
    url = f"{where}/{quote(name, safe='')}{_token_query(server, name, settings)}"
    return await _through_server(url, where, update, name)


def server_address(settings: Settings, server: dict[str, Any]) -> str:
    """Where the holder of `settings.db`'s lock listens; `DatabaseInUseError` if it is a server with no address
    yet, or no server at all but a command writing the database (`collab copy`, `collab import`)."""
    if "command" in server:
        raise DatabaseInUseError(
            f"collab {server['command']} (pid {server.get('pid')}) is writing to {redacted(settings.db)};"
            " try again once it is done"
        )
    if "url" not in server:
        raise DatabaseInUseError(
            f"a collab server (pid {server.get('pid')}) is starting on {redacted(settings.db)}; try again"
        )
    return str(server["url"])


def server_secret(settings: Settings, server: dict[str, Any]) -> bytes | None:
    """The secret to mint tokens for a running server that checks them (None: it does not); `ConfigError` if
    it does and none is set."""
    if not server.get("auth"):
        return None
    secret = settings.secret()
    if secret is None:
        raise ConfigError(
            "the server requires tokens: set COLLAB_AUTH_SECRET (or COLLAB_AUTH_SECRET_FILE) to its secret"
        )
    return secret


def _token_query(server: dict[str, Any], name: str, settings: Settings) -> str:
    """A short-lived write token when the server checks tokens (minted with the same secret)."""
    secret = server_secret(settings, server)
    return "" if secret is None else "?token=" + mint_token(secret, name, Permission.WRITE, ttl=SERVER_TIMEOUT * 2)


async def _through_server(url: str, where: str, update: bytes, name: str) -> Imported:
    """Merge as a client of the server at `where` (its lock file's URL), so that its clients see it at once."""
    # The server was found through its lock file on this machine; its certificate may name a public host.
    tls = loopback_tls() if url.startswith("wss:") else None
    try:
        async with asyncio.timeout(SERVER_TIMEOUT), Client(url, ssl=tls) as client:
            await _synced_or_refused(client)
            before = client.doc.get_update()
            client.doc.apply_update(update)  # the client sends what is new to the server
            changed = client.doc.get_update() != before
            # A round trip after the update: once answered, the server has handled the update.
            await client.resync()
    except TimeoutError:
        raise ImportFailed(f"the server at {where} did not answer within {SERVER_TIMEOUT:g} s") from None
    except OSError as error:
        raise ImportFailed(f"cannot reach the server at {where}: {error.strerror or error}") from None
    return Imported(name, changed, f"server {where}")


async def _synced_or_refused(client: Client) -> None:
    """Wait for the first sync; a server that closes instead (a refused token) says why."""
    synced = asyncio.ensure_future(client.synced.wait())
    closed = asyncio.ensure_future(client.wait_closed(timeout=SERVER_TIMEOUT))
    try:
        await asyncio.wait((synced, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (synced, closed):
            waiting.cancel()
    if client.synced.is_set():
        return
    code, reason = client.close_code, client.close_reason or client.permission_denied or ""
    if code == UNAUTHENTICATED:
        raise UnauthenticatedError(f"the server refused the token: {reason}")
    if code == FORBIDDEN:
        raise ForbiddenError(f"the server refused the token: {reason}")
    raise ImportFailed(f"the server closed the connection ({code} {reason})".rstrip())


def loopback_tls() -> ssl.SSLContext:
    """TLS to a server found through its lock on this machine: its certificate may name a public host, so the
    name is not checked (nor the chain: a self-signed certificate is common there)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _into_database(database: Backend, settings: Settings, update: bytes, name: str) -> Imported:
    """Merge in one transaction of the engine, holding the database's lock; a failure is one `StorageError`.

    Not the server's group-commit store, which retries a failed commit forever: a command must finish.
    """
    if not database.persistent:
        raise ConfigError(f"--db {settings.db} keeps nothing once this command ends: import through a running server")
    lock = database.lock()
    lock.acquire()
    try:
        lock.describe(command="import")  # whoever finds the lock held is told who writes, not "a server starting"
        changed = await asyncio.to_thread(_merge_into, database.engine(settings), name, update)
    finally:
        lock.release()
    return Imported(name, changed, f"database {redacted(settings.db)}")


def _merge_into(engine: Engine, name: str, update: bytes) -> bool:
    """On a thread: read the document, merge, write what is new; whether anything was."""
    try:
        engine.open()
        try:
            current: Doc = doc_from_records(name, engine.load(name))  # a row that would crash pycrdt is reported
            before_state, before = current.get_state(), current.get_update()
            current.apply_update(update)
            changed = current.get_update() != before
            if changed:
                engine.commit([WriteOp("append", name, current.get_update(before_state), time.time())])
            return changed
        finally:
            engine.close()
    except driver_errors() as error:  # a locked or unwritable database; anything else is a bug, with its traceback
        raise StorageError(f"cannot write to the database: {type(error).__name__}: {error}") from error


def driver_errors() -> tuple[type[Exception], ...]:
    """What the database drivers raise when a database cannot be read or written (locked, unreachable, full).

    psycopg's errors only once psycopg is loaded: it is an optional dependency (the `postgres` extra), and only
    the PostgreSQL engine, which imports it, can raise them.
    """
    psycopg = sys.modules.get("psycopg")
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    return errors if psycopg is None else (*errors, psycopg.Error)
