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
import ssl
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
    CollabError,
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

__all__ = ["Imported", "import_update", "merge_through_server"]

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

    `collab copy` calls it too, once per document. `DatabaseInUseError` if the server has no address yet.
    """
    if "url" not in server:
        raise DatabaseInUseError(
            f"a collab server (pid {server.get('pid')}) is starting on {redacted(settings.db)}; try again"
        )
    where = str(server["url"])
    url = f"{where}/{quote(name, safe='')}{_token_query(server, name, settings)}"
    return await _through_server(url, where, update, name)


def _token_query(server: dict[str, Any], name: str, settings: Settings) -> str:
    """A short-lived write token when the server checks tokens (minted with the same secret)."""
    if not server.get("auth"):
        return ""
    secret = settings.secret()
    if secret is None:
        raise ConfigError(
            "the server requires tokens: set COLLAB_AUTH_SECRET (or COLLAB_AUTH_SECRET_FILE) to its secret"
        )
    return "?token=" + mint_token(secret, name, Permission.WRITE, ttl=SERVER_TIMEOUT * 2)


async def _through_server(url: str, where: str, update: bytes, name: str) -> Imported:
    """Merge as a client of the server at `where` (its lock file's URL), so that its clients see it at once."""
    # The server was found through its lock file on this machine; its certificate may name a public host.
    tls = _loopback_tls() if url.startswith("wss:") else None
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


def _loopback_tls() -> ssl.SSLContext:
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
    except CollabError:
        raise
    except Exception as error:  # the driver's own errors: a locked or unwritable database
        raise StorageError(f"cannot write to the database: {type(error).__name__}: {error}") from error
