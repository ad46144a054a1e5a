"""`collab import`: merge a `ydoc` backup into a document.

Merging is a CRDT merge: whatever the document already has is not added again,
so importing the same backup twice changes nothing. If a server is running on
the database (see `lockfile`), the import goes through it as a WebSocket
client: connected clients see the content at once and the server stores it.
Otherwise it is written to the database file directly (created if missing),
holding the database lock so that no server starts meanwhile.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pycrdt import Doc

from ..auth import Permission, mint_token
from ..client import Client
from ..config import Settings
from ..errors import ConfigError, DatabaseInUseError, ImportFailed, InvalidUpdateError
from ..formats import doc_from_records
from ..store.engines import locate, open_store
from ..sync.names import validate_room_name
from ..sync.room import check_update

__all__ = ["Imported", "import_update"]

SERVER_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Imported:
    name: str
    changed: bool
    via: str
    """'server ws://…' or 'database PATH'."""


async def import_update(db: str | Path, update: bytes, name: str) -> Imported:
    """Merge `update` (a Yjs v1 update) into document `name`."""
    validate_room_name(name)
    try:
        check_update(update)
    except InvalidUpdateError as error:
        raise ImportFailed(f"not a Yjs update (expected a .ydoc file from collab export): {error}") from error
    server = locate(db).running_server()
    if server is not None:
        if "url" not in server:
            raise DatabaseInUseError(f"a collab server (pid {server.get('pid')}) is starting on {db}; try again")
        return await _through_server(
            f"{server['url']}/{quote(name, safe='')}{_token_query(server, name)}", update, name
        )
    return await _into_database(db, update, name)


def _token_query(server: dict[str, object], name: str) -> str:
    """A short-lived write token when the server checks tokens (minted with the same secret)."""
    if not server.get("auth"):
        return ""
    secret = Settings.load().secret()
    if secret is None:
        raise ConfigError(
            "the server requires tokens: set COLLAB_AUTH_SECRET (or COLLAB_AUTH_SECRET_FILE) to its secret"
        )
    return "?token=" + mint_token(secret, name, Permission.WRITE, ttl=SERVER_TIMEOUT * 2)


async def _through_server(url: str, update: bytes, name: str) -> Imported:
    # The server was found through its lock file on this machine; its certificate may name a public host.
    tls = _loopback_tls() if url.startswith("wss:") else None
    async with asyncio.timeout(SERVER_TIMEOUT):
        async with Client(url, ssl=tls) as client:
            await client.synced.wait()
            before = client.doc.get_update()
            client.doc.apply_update(update)  # the client sends what is new to the server
            changed = client.doc.get_update() != before
            # A round trip after the update: once answered, the server has handled the update.
            await client.resync()
    return Imported(name, changed, f"server {url.split('/')[0]}//{url.split('/')[2]}")


def _loopback_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _into_database(db: str | Path, update: bytes, name: str) -> Imported:
    lock = locate(db).lock()
    lock.acquire()
    try:
        store = open_store(Settings(db=str(db)))
        await store.start()
        try:
            records = await store.load(name)
            current: Doc = doc_from_records(name, records)  # a row that would crash pycrdt is reported, not read
            before_state, before = current.get_state(), current.get_update()
            current.apply_update(update)
            changed = current.get_update() != before
            if changed:
                store.append(name, current.get_update(before_state))
        finally:
            await store.close()
    finally:
        lock.release()
    return Imported(name, changed, f"database {db}")
