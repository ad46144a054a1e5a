"""`collab import`: merge `ydoc` backups into documents, a file or a whole export at a time.

Each path is a `.ydoc` file or a directory `collab export --format ydoc` wrote.
A directory's `manifest.json` names every document in it, so that a backup
restores in one command, long names (exported as `_long-<hash>`) included;
without a manifest every `.ydoc` file in it is taken, named by its file name.
A file's document is the one its file name stands for, or for a generated
name the one the manifest beside it lists. Every file is read and checked
before anything is written, so that a bad file in a backup stops the import
before it begins; only its path is kept, and it is read (and checked) again
when its turn comes, so that a backup need not fit in memory, only its largest
document.

Merging is a CRDT merge: whatever a document already has is not added again,
so importing the same backup twice changes nothing. If a server is running on
the database (see `store.lockfile`), the import goes through its HTTP API, one
document after the other: `GET /api/docs/NAME?format=ydoc` for what it has, then
`POST /api/docs/NAME/update` with what the backup adds, which the server answers
once the change is stored; its clients see the content at once. What a retry
may fix (the server busy or restarting, a connection refused or cut) is tried
again for up to `SERVER_TIMEOUT` seconds a document; a refusal (a wrong
secret) stops it at once, naming what the server said. Otherwise every document
is written to the database directly (created if missing) in one transaction,
holding the database lock so that no server starts meanwhile.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import logging
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pycrdt import Doc, TransactionEvent

from ..auth import Permission, mint_token
from ..client import Backoff
from ..config import Settings
from ..errors import (
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
    "ServerApi",
    "driver_errors",
    "import_backups",
    "read_backups",
    "server_address",
    "server_secret",
    "server_tls",
]

logger = logging.getLogger("collab.cli")

SERVER_TIMEOUT = 60.0
"""Seconds one document may take through a running server, retries included."""

RETRIES = Backoff(initial=0.25, max_delay=4.0)
"""Waits between tries through a server, as a client's reconnects wait."""

RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Answers a retry may fix: a proxy without its server, the server busy (a document being deleted or renamed,
the rooms limit, a store not confirming in time: sending an update again changes nothing)."""

DOCS = "/api/docs"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Backup:
    """One backup to merge: the file it is in (checked once by `read_backups`) and the document it goes into."""

    path: Path
    name: str

    @property
    def source(self) -> str:
        return str(self.path)

    def read(self) -> bytes:
        """The file's Yjs update, checked again: the file may have changed since `read_backups` read it."""
        return _read_update(self.path)


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
    """Every backup `paths` hold, each read and checked, and what their manifests list that the export lacks.

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
    except RecursionError:
        raise ConfigError(f"{path} is not a manifest collab export wrote: it is nested too deeply") from None
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
    """Whether `file` names a file in the manifest's folder (no path, nothing a file name cannot hold)."""
    return (
        isinstance(file, str)
        and file not in ("", ".", "..")
        and "\x00" not in file
        and "\\" not in file
        and Path(file).name == file
    )


def _name_of_file(file: Path) -> str:
    """The document an exported file holds: its file name says, or for a generated one the manifest beside it
    (whose own error, if it cannot be followed, is what is reported)."""
    if not is_generated(file.name):
        return validate_room_name(name_from_file_name(file.name))
    listed = _manifest(file.parent)
    if listed is None:
        raise ConfigError(
            f"{file.name} is a generated file name: keep the export's {MANIFEST} beside it, or pass --name"
        )
    name = next((name for name, listed_file, _ in listed if listed_file == file.name), None)
    if name is None:
        raise ConfigError(f"{file.name} is a generated file name that {file.parent / MANIFEST} does not list")
    return name


def _backup(file: Path, name: str) -> Backup:
    _read_update(file)  # checked now, kept as a path: read again when it is merged
    return Backup(file, name)


def _read_update(file: Path) -> bytes:
    """The Yjs update in `file`, checked; `ConfigError` if it cannot be read, `ImportFailed` if it is none."""
    try:
        update = file.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {file}: {error.strerror or error}") from error
    try:
        check_update(update)
    except InvalidUpdateError as error:
        raise ImportFailed(f"{file}: not a Yjs update (expected a .ydoc file from collab export): {error}") from error
    return update


def import_backups(
    settings: Settings, backups: Sequence[Backup], done: Done | None = None, cafile: Path | None = None
) -> list[Imported]:
    """Merge `backups` (from `read_backups`) into `settings.db`, through its server if one runs (TLS verified
    with `cafile` if given); `done` is told of each once it is stored (through a server, those before a
    failure are in)."""
    database = locate(settings.db)
    server = database.running_server()
    if server is None:
        imported = _into_database(database, settings, backups)
        if done is not None:
            for backup, result in zip(backups, imported, strict=True):
                done(backup, result)
        return imported
    api = ServerApi.of(settings, server, cafile)
    imported = []
    for backup in backups:
        imported.append(api.merge(backup.name, backup.read()))
        if done is not None:
            done(backup, imported[-1])
    return imported


# Through a running server.


@dataclass(frozen=True, slots=True)
class ServerApi:
    """The HTTP API of the server holding a database's lock, with what a command needs to write through it."""

    where: str
    """ws:// or wss://, host and port, as the server recorded it."""
    secret: bytes | None
    """To mint tokens, if the server checks them."""
    tls: ssl.SSLContext | None

    @classmethod
    def of(cls, settings: Settings, holder: dict[str, Any], cafile: Path | None = None) -> ServerApi:
        """For `holder` (what `running_server` found): `DatabaseInUseError` as `server_address` says,
        `ConfigError` as `server_secret` says."""
        where = server_address(settings, holder)
        tls = server_tls(where, cafile) if where.startswith("wss:") else None
        return cls(where, server_secret(settings, holder), tls)

    def merge(self, name: str, update: bytes) -> Imported:
        """Merge `update`, already checked, into document `name`; returns once the server stored it."""
        deadline = time.monotonic() + SERVER_TIMEOUT
        token = None if self.secret is None else mint_token(self.secret, name, Permission.WRITE, SERVER_TIMEOUT * 2)
        path = f"{DOCS}/{quote(name, safe='')}"
        current = self._call("GET", f"{path}?format=ydoc", name, token, deadline)
        news = _news(current, update, f"the server at {self.where} sent {name!r}")
        if news is not None:
            self._call("POST", f"{path}/update", name, token, deadline, news)
        return Imported(name, news is not None, f"server {self.where}")

    def _call(
        self, method: str, path: str, name: str, token: str | None, deadline: float, body: bytes | None = None
    ) -> bytes | None:
        """The body of a 200 answer to `method` on `path` (None: a GET of a document that does not exist),
        trying again what a retry may fix until `deadline`; raises the error any other answer stands for."""
        failures = 0
        while True:
            maybe_applied = body is not None  # unless the server says it was not
            retry_after = 0.0
            try:
                status, answer, retry_after = self._request(
                    method, path, token, body, max(deadline - time.monotonic(), 1.0)
                )
            except ssl.SSLEOFError as error:  # cut during the TLS handshake, as a server going down does
                failure = f"cannot reach it: {_reason(error)}"
            except ssl.SSLError as error:  # a certificate not trusted: trying again gives the same
                raise ImportFailed(f"TLS to the server at {self.where} failed: {_reason(error)}{_CAFILE}") from None
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut
                failure = f"cannot reach it: {_reason(error)}"
            else:
                if status == 200 or (status == 404 and method == "GET"):
                    return answer if status == 200 else None
                message, applied = _said(answer)
                if status not in RETRYABLE_STATUSES:
                    raise _refused(status, message, self.where, name)
                failure = f"HTTP {status}: {message}"
                maybe_applied = maybe_applied and applied is not False
            failures += 1
            delay = max(RETRIES.delay(failures), retry_after)
            if time.monotonic() + delay >= deadline:
                note = " (it may have been merged: importing again changes nothing)" if maybe_applied else ""
                raise ImportFailed(
                    f"the server at {self.where} did not take {name!r} within {SERVER_TIMEOUT:g} s{note}; {failure}"
                )
            logger.info("%s %s: %s; trying again in %.1f s", method, path, failure, delay)
            time.sleep(delay)  # the wait between tries: time is what it waits for

    def _request(
        self, method: str, path: str, token: str | None, body: bytes | None, timeout: float
    ) -> tuple[int, bytes, float]:
        """The status, body and `Retry-After` (seconds, 0 if none) of one request."""
        netloc = urlsplit(self.where).netloc
        connection = (
            http.client.HTTPSConnection(netloc, timeout=timeout, context=self.tls)
            if self.tls is not None
            else http.client.HTTPConnection(netloc, timeout=timeout)
        )
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}  # a ?token= may reach access logs
        if body is not None:
            headers["Content-Type"] = OCTET_STREAM
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), _seconds(response.getheader("Retry-After"))
        finally:
            connection.close()


_CAFILE = "; pass --cafile with the CA certificate that signed its certificate"


def _news(current: bytes | None, update: bytes, what: str) -> bytes | None:
    """What `update` adds to the document `current` holds (an update, deletions included); None if nothing."""
    doc: Doc = Doc()
    if current is not None:
        try:
            check_update(current)  # the server's own export, but reached over the network: walked as any update
        except InvalidUpdateError as error:
            raise ImportFailed(f"{what}, but not as a Yjs update: {error}") from None
        doc.apply_update(current)
    return _applied(doc, update)


def _applied(doc: Doc, update: bytes) -> bytes | None:
    """Apply `update` to `doc`; what it changed, as an update (None: nothing, it was all there)."""
    made: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        made.append(event.update)

    subscription = doc.observe(keep)
    try:
        doc.apply_update(update)
    finally:
        doc.unobserve(subscription)
    return made[0] if made else None


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__


def _seconds(retry_after: str | None) -> float:
    """A `Retry-After` of delay-seconds (RFC 9110 10.2.3), 0 if there is none; its date form is not used here."""
    try:
        return max(float(retry_after or 0), 0.0)
    except ValueError:
        return 0.0


def _said(body: bytes) -> tuple[str, bool | None]:
    """What the server said: the API's {"error": ...}, or the first line of anything else (a proxy's page); and
    the `applied` of a 503 (whether the change took effect: None if it does not say)."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return (body.decode(errors="replace").strip().splitlines() or [""])[0][:200], None
    if not isinstance(answer, dict):
        return str(answer), None
    applied = answer.get("applied")
    return str(answer.get("error", answer)), applied if isinstance(applied, bool) else None


def _refused(status: int, message: str, where: str, name: str) -> Exception:
    """A refusal in the terms of the command: the token (the secret is wrong, or it is not for `name`), or what
    else the server said."""
    if status == 401:
        return UnauthenticatedError(f"the server refused the token: {message}")
    if status == 403:
        return ForbiddenError(f"the server refused the token: {message}")
    return ImportFailed(f"the server at {where} refused {name!r} (HTTP {status}): {message}")


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


def server_tls(where: str, cafile: Path | None = None) -> ssl.SSLContext:
    """TLS to the server at `where` (a URL its lock recorded), verified as any client verifies a server: its
    certificate against `cafile` or the system's trust store, and its name. A token is minted for it, and on
    PostgreSQL the lock may name another machine.

    A server on this machine (a loopback address) is the exception: it is reached by an address its
    certificate does not name, and often holds a self-signed one, so its name is not checked, nor without
    `cafile` its certificate, which is said in a warning (once per address).
    """
    try:
        context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"--cafile {cafile}: cannot read a CA certificate from it: {_reason(error)}") from None
    if not _loopback(urlsplit(where).hostname or ""):
        return context
    context.check_hostname = False
    if cafile is None:
        context.verify_mode = ssl.CERT_NONE
        _warn_unverified(where)
    return context


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def _warn_unverified(where: str) -> None:
    logger.warning(
        "TLS certificate of the server at %s not verified: it listens on this machine (--cafile verifies it)", where
    )


# Into the database.


def _into_database(database: Backend, settings: Settings, backups: Sequence[Backup]) -> list[Imported]:
    """Merge in one transaction of the engine, holding the database's lock; a failure is one `StorageError`.

    Not the server's group-commit store, which retries a failed commit forever: a command must finish.
    """
    if not database.persistent:
        raise ConfigError(f"--db {settings.db} keeps nothing once this command ends: import through a running server")
    lock = database.lock()
    lock.acquire()
    try:
        lock.describe(command="import")  # whoever finds the lock held is told who writes, not "a server starting"
        changes = _merge_into(database.engine(settings), backups)
    finally:
        lock.release()
    via = f"database {redacted(settings.db)}"
    return [Imported(backup.name, changed, via) for backup, changed in zip(backups, changes, strict=True)]


def _merge_into(engine: Engine, backups: Sequence[Backup]) -> list[bool]:
    """Read each document, merge its backups, write what is new, all in one commit; whether each backup brought
    anything. One document is in memory at a time, and of the others only what they gain."""
    try:
        engine.open()
        try:
            by_document: dict[str, list[int]] = {}
            for index, backup in enumerate(backups):
                by_document.setdefault(backup.name, []).append(index)
            changes = [False] * len(backups)
            writes = []
            now = time.time()
            for name, indexes in by_document.items():
                doc: Doc = doc_from_records(name, engine.load(name))  # a crashing row is reported
                state_before = doc.get_state()
                for index in indexes:
                    changes[index] = _applied(doc, backups[index].read()) is not None
                if any(changes[index] for index in indexes):  # what it has beyond its state before, deletions too
                    writes.append(WriteOp("append", name, doc.get_update(state_before), now))
            if writes:
                engine.commit(writes)
            return changes
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
