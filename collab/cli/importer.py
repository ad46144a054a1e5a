"""`collab import`: merge `ydoc` backups into documents, a file or a whole export at a time.

Each path is a `.ydoc` file or a directory `collab export --format ydoc` wrote.
A directory's `manifest.json` names every document in it, so that a backup
restores in one command, long names (exported as `_long-<hash>`) included;
without a manifest every `.ydoc` file in it is taken, named by its file name.
A file's document is the one its file name stands for, or for a generated
name the one the manifest beside it lists. Every file is read and checked
before anything is written, so that a bad file in a backup stops the import
before it begins.

Merging is a CRDT merge: whatever a document already has is not added again,
so importing the same backup twice changes nothing. If a server is running on
the database (see `store.lockfile`), the import goes through it as a WebSocket
client, one document after the other: connected clients see the content at
once and the server stores it; a refusal (a wrong secret) stops it at once,
naming the close code and reason. Otherwise every document is written to the
database directly (created if missing) in one transaction, holding the
database lock so that no server starts meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pycrdt import Doc

from ..auth import Permission, mint_token
from ..client import Client, ClosedError, RefusedError
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
from ..filenames import MANIFEST, is_generated, name_from_file_name
from ..formats import doc_from_records
from ..store import Engine, WriteOp
from ..store.engines import Backend, locate, redacted
from ..sync.names import validate_room_name
from ..sync.room import check_update

__all__ = [
    "Backup",
    "Imported",
    "driver_errors",
    "import_backups",
    "import_update",
    "merge_through_server",
    "read_backups",
    "server_address",
]

SERVER_TIMEOUT = 60.0
"""Seconds one document may take through a running server: connecting, syncing, merging."""


@dataclass(frozen=True, slots=True)
class Backup:
    """One backup to merge: where it was read from, the document it goes into, and its Yjs update (checked)."""

    source: str
    name: str
    update: bytes


@dataclass(frozen=True, slots=True)
class Imported:
    name: str
    changed: bool
    via: str
    """'server ws://…' or 'database PATH'."""


@dataclass(frozen=True, slots=True)
class Missing:
    """A document an export's manifest lists without a file: the export could not read it."""

    name: str
    error: str


Done = Callable[[Backup, Imported], None]


def read_backups(paths: Sequence[Path], name: str | None = None) -> tuple[list[Backup], list[Missing]]:
    """Every backup `paths` hold, read and checked, and what their manifests list that the export lacks.

    `name` (`--name`) names the document of a single file. Raises `ConfigError` for what cannot be read or
    named, `ImportFailed` for a file that is no Yjs update, before anything is written.
    """
    if name is not None and (len(paths) != 1 or paths[0].is_dir()):
        raise ConfigError("--name names the document of one file; a directory or several files name their own")
    backups: list[Backup] = []
    missing: list[Missing] = []
    for path in paths:
        if path.is_dir():
            found, lacking = _directory(path)
            backups += found
            missing += lacking
        else:
            backups.append(_backup(path, validate_room_name(name) if name is not None else _name_of_file(path)))
    return backups, missing


def _directory(folder: Path) -> tuple[list[Backup], list[Missing]]:
    """What an export directory holds: the documents its manifest lists, else its `.ydoc` files."""
    manifest = _manifest(folder)
    if manifest is None:
        files = sorted(folder.glob("*.ydoc"))
        if not files:
            raise ConfigError(f"{folder} holds no .ydoc files and no {MANIFEST}: nothing to import")
        return [_backup(file, _name_of_file(file)) for file in files], []
    backups: list[Backup] = []
    missing: list[Missing] = []
    for name, file, error in manifest:
        if file is None:
            missing.append(Missing(name, error or "not exported"))
        else:
            backups.append(_backup(folder / file, name))
    return backups, missing


def _manifest(folder: Path) -> list[tuple[str, str | None, str | None]] | None:
    """A ydoc export's manifest as (name, file or None, error) per document; None if there is none.

    A manifest is the user's file: each name is checked as any name, and each file must lie in `folder`.
    """
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from error
    try:
        manifest = json.loads(text)
        export_format, documents = manifest["format"], manifest["documents"]
        listed = [(entry["name"], entry["file"], entry.get("error")) for entry in documents]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"{path} is not a manifest collab export wrote: {error}") from None
    if export_format != "ydoc":
        raise ConfigError(
            f"{folder} holds a {export_format} export, which cannot be merged back: export with --format ydoc"
        )
    for name, file, _ in listed:
        if not isinstance(name, str) or not (file is None or _plain_file_name(file)):
            raise ConfigError(f"{path} lists {file!r} for {name!r}: not a document name and a file beside it")
        validate_room_name(name)
    return listed


def _plain_file_name(file: object) -> bool:
    return isinstance(file, str) and file not in ("", ".", "..") and Path(file).name == file and "\\" not in file


def _name_of_file(file: Path) -> str:
    """The document an exported file holds: its file name says, or for a generated one the manifest beside it."""
    if not is_generated(file.name):
        return validate_room_name(name_from_file_name(file.name))
    try:
        listed = _manifest(file.parent)
    except ConfigError:
        listed = None
    name = next((name for name, listed_file, _ in listed or [] if listed_file == file.name), None)
    if name is None:
        raise ConfigError(
            f"{file.name} is a generated file name: keep the export's {MANIFEST} beside it, or pass --name"
        )
    return name


def _backup(file: Path, name: str) -> Backup:
    try:
        update = file.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {file}: {error.strerror or error}") from error
    try:
        check_update(update)
    except InvalidUpdateError as error:
        raise ImportFailed(f"{file}: not a Yjs update (expected a .ydoc file from collab export): {error}") from error
    return Backup(str(file), name, update)


async def import_update(settings: Settings, update: bytes, name: str) -> Imported:
    """Merge `update` (a Yjs v1 update) into document `name` of `settings.db`."""
    validate_room_name(name)
    try:
        check_update(update)
    except InvalidUpdateError as error:
        raise ImportFailed(f"not a Yjs update (expected a .ydoc file from collab export): {error}") from error
    [imported] = await import_backups(settings, [Backup(name, name, update)])
    return imported


async def import_backups(settings: Settings, backups: Sequence[Backup], done: Done | None = None) -> list[Imported]:
    """Merge `backups` (from `read_backups`) into `settings.db`, through its server if one runs; `done` is told
    of each as it is merged (through a server, those before a failure are in)."""
    database = locate(settings.db)
    server = database.running_server()
    imported: list[Imported] = []
    if server is not None:
        for backup in backups:
            imported.append(await merge_through_server(settings, server, backup.update, backup.name))
            if done is not None:
                done(backup, imported[-1])
        return imported
    imported = await _into_database(database, settings, backups)
    if done is not None:
        for backup, result in zip(backups, imported, strict=True):
            done(backup, result)
    return imported


async def merge_through_server(settings: Settings, server: dict[str, Any], update: bytes, name: str) -> Imported:
    """Merge `update`, already checked, into `name` as a client of `server` (what `running_server` found).

    `collab copy` calls it too, once per document. `DatabaseInUseError` as `server_address` says.
    """
    where = server_address(settings, server)
    secret = server_secret(settings, server)
    token = None if secret is None else mint_token(secret, name, Permission.WRITE, ttl=SERVER_TIMEOUT * 2)
    return await _through_server(f"{where}/{quote(name, safe='')}", where, token, update, name)


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


async def _through_server(url: str, where: str, token: str | None, update: bytes, name: str) -> Imported:
    """Merge as a client of the server at `where` (its lock file's URL), so that its clients see it at once."""
    # The server was found through its lock file on this machine; its certificate may name a public host.
    tls = loopback_tls() if url.startswith("wss:") else None
    client = Client(url, token=token, ssl=tls, reconnect=False, sync_timeout=SERVER_TIMEOUT)
    try:
        async with asyncio.timeout(SERVER_TIMEOUT), client:
            before = client.doc.get_update()
            client.doc.apply_update(update)  # the client sends what is new to the server
            changed = client.doc.get_update() != before
            # A round trip after the update: once answered, the server has handled the update.
            await client.resync()
    except RefusedError as refusal:
        raise _refused(refusal, where, name) from None
    except TimeoutError:
        raise ImportFailed(f"the server at {where} did not answer within {SERVER_TIMEOUT:g} s") from None
    except OSError as error:
        raise ImportFailed(f"cannot reach the server at {where}: {error.strerror or error}") from None
    except ClosedError as error:  # closed after the sync: reconnecting is off, so no retry hides it
        raise ImportFailed(f"the server at {where} closed the connection while merging {name!r}: {error}") from None
    return Imported(name, changed, f"server {where}")


def _refused(refusal: RefusedError, where: str, name: str) -> Exception:
    """A refusal in the terms of the command: the token (the secret is wrong, or it is not for `name`), or what
    else the server said."""
    if refusal.code == UNAUTHENTICATED:
        return UnauthenticatedError(f"the server refused the token: {refusal.reason}")
    if refusal.code == FORBIDDEN:
        return ForbiddenError(f"the server refused the token: {refusal.reason}")
    return ImportFailed(f"the server at {where} refused {name!r}: {refusal}")


def loopback_tls() -> ssl.SSLContext:
    """TLS to a server found through its lock on this machine: its certificate may name a public host, so the
    name is not checked (nor the chain: a self-signed certificate is common there)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _into_database(database: Backend, settings: Settings, backups: Sequence[Backup]) -> list[Imported]:
    """Merge in one transaction of the engine, holding the database's lock; a failure is one `StorageError`.

    Not the server's group-commit store, which retries a failed commit forever: a command must finish.
    """
    if not database.persistent:
        raise ConfigError(f"--db {settings.db} keeps nothing once this command ends: import through a running server")
    lock = database.lock()
    lock.acquire()
    try:
        lock.describe(command="import")  # whoever finds the lock held is told who writes, not "a server starting"
        changes = await asyncio.to_thread(_merge_into, database.engine(settings), backups)
    finally:
        lock.release()
    via = f"database {redacted(settings.db)}"
    return [Imported(backup.name, changed, via) for backup, changed in zip(backups, changes, strict=True)]


def _merge_into(engine: Engine, backups: Sequence[Backup]) -> list[bool]:
    """On a thread: read each document, merge its backups, write what is new, all in one commit; whether each
    backup brought anything."""
    try:
        engine.open()
        try:
            documents: dict[str, tuple[Doc, bytes]] = {}
            changes = [_merge(engine, documents, backup) for backup in backups]
            changed = dict.fromkeys(backup.name for backup, change in zip(backups, changes, strict=True) if change)
            now = time.time()
            writes = []
            for name in changed:  # what it has beyond its state before the merges, deletions included
                doc, state_before = documents[name]
                writes.append(WriteOp("append", name, doc.get_update(state_before), now))
            if writes:
                engine.commit(writes)
            return changes
        finally:
            engine.close()
    except driver_errors() as error:  # a locked or unwritable database; anything else is a bug, with its traceback
        raise StorageError(f"cannot write to the database: {type(error).__name__}: {error}") from error


def _merge(engine: Engine, documents: dict[str, tuple[Doc, bytes]], backup: Backup) -> bool:
    """Merge one backup into its document (read on first use, with its state vector before any merge)."""
    if backup.name not in documents:
        current: Doc = doc_from_records(backup.name, engine.load(backup.name))  # a crashing row is reported
        documents[backup.name] = (current, current.get_state())
    doc = documents[backup.name][0]
    before = doc.get_update()
    doc.apply_update(backup.update)
    return doc.get_update() != before


def driver_errors() -> tuple[type[Exception], ...]:
    """What the database drivers raise when a database cannot be read or written (locked, unreachable, full).

    psycopg's errors only once psycopg is loaded: it is an optional dependency (the `postgres` extra), and only
    the PostgreSQL engine, which imports it, can raise them.
    """
    psycopg = sys.modules.get("psycopg")
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    return errors if psycopg is None else (*errors, psycopg.Error)
