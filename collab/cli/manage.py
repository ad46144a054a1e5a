"""`collab delete`, `collab rename` and `collab restore`: change which documents a database holds, and what.

With a server running on the database (a cluster counts), the change goes through its HTTP API
(`DELETE /api/docs/<name>`, `POST /api/docs/<name>/rename?to=`, `POST /api/docs/<name>/restore?at=`): the
server closes the room's clients (4410, 4411) or sends them the restore, and tells the other processes of
its cluster, which a direct write could not. Without one, the database is changed directly, holding its
lock so that no server starts meanwhile (a restore through the same rooms a server has, with no one in them).

`Documents` decides which of the two once, when it is made, so that a command can say what stops it (a server
that wants tokens, no secret to mint them) before it asks anyone to confirm anything.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from ..auth import Permission, mint_token
from ..config import Settings
from ..errors import (
    AlreadyExistsError,
    CollabError,
    ForbiddenError,
    InvalidRoomNameError,
    NotFoundError,
    StorageError,
    UnauthenticatedError,
)
from ..server.rooms import Rooms
from ..store import Store
from ..store.engines import Backend, locate, open_store, redacted
from .export import select_names
from .importer import server_address, server_secret, server_tls

__all__ = ["PREVIEW", "Documents", "preview", "select_documents"]

SERVER_TIMEOUT = 60.0
"""Seconds one request waits for the server; the server gives up on its store after 10 s (503)."""

PREVIEW = 20
"""Names a confirmation lists before "... and N more"."""

GLOB_CHARACTERS = frozenset("*?[")


def select_documents(available: list[str], patterns: list[str]) -> list[str]:
    """The stored names `patterns` (names or shell globs, as `collab export` takes them) choose, in order.

    `NotFoundError` for a plain name that is not stored, or a glob that matches nothing: a delete that
    silently skipped a mistyped name would leave the document its user meant to remove.
    """
    stored = set(available)
    for pattern in patterns:
        if GLOB_CHARACTERS.isdisjoint(pattern) and pattern not in stored:
            raise NotFoundError(f"no document named {pattern!r}")
    return select_names(available, patterns)


def preview(names: list[str], limit: int = PREVIEW) -> list[str]:
    """The lines that show `names` before a confirmation: at most `limit` names, then how many more."""
    lines = [f"  {name}" for name in names[:limit]]
    if len(names) > limit:
        lines.append(f"  ... and {len(names) - limit} more")
    return lines


@dataclass(frozen=True, slots=True)
class _Server:
    """The HTTP API of the server holding the database's lock, with the secret to mint tokens if it wants them."""

    url: str
    """http:// or https://, host and port."""
    secret: bytes | None

    @classmethod
    def of(cls, settings: Settings, holder: dict[str, Any]) -> _Server:
        """`DatabaseInUseError` as `server_address` says; `ConfigError` if it wants tokens and no secret is set."""
        where = urlsplit(server_address(settings, holder))  # ws:// or wss://, what the server recorded
        secret = server_secret(settings, holder)
        scheme = "https" if where.scheme == "wss" else "http"
        return cls(f"{scheme}://{where.netloc}", secret)

    def call(self, method: str, path: str, scope: str) -> None:
        """`method` on `path`; the error its answer stands for unless it is 200. `scope`: what the token covers."""
        parts = urlsplit(self.url)
        tls = parts.scheme == "https"
        connection = (
            http.client.HTTPSConnection(parts.netloc, timeout=SERVER_TIMEOUT, context=server_tls(self.url))
            if tls
            else http.client.HTTPConnection(parts.netloc, timeout=SERVER_TIMEOUT)
        )
        headers = {}
        if self.secret is not None:
            token = mint_token(self.secret, scope, Permission.WRITE, ttl=SERVER_TIMEOUT * 2)
            headers["Authorization"] = f"Bearer {token}"  # not ?token=: a query may end up in access logs
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            status, body = response.status, response.read()
        except TimeoutError:
            raise CollabError(f"the server at {self.url} did not answer within {SERVER_TIMEOUT:g} s") from None
        except (OSError, http.client.HTTPException) as error:
            raise CollabError(f"cannot reach the server at {self.url}: {_reason(error)}") from None
        finally:
            connection.close()
        if status != 200:
            raise _refusal(status, _message(body))


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__


def _message(body: bytes) -> str:
    """What the server said: the API's {"error": ...}, or the text of anything else (a proxy's page)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()
    return str(answer.get("error", answer)) if isinstance(answer, dict) else str(answer)


def _refusal(status: int, message: str) -> CollabError:
    """The error an HTTP status of the API stands for, so that the exit code is what a direct write gives."""
    match status:
        case 400:
            return InvalidRoomNameError(message)
        case 401:
            return UnauthenticatedError(f"the server refused the token: {message}")
        case 403:
            return ForbiddenError(f"the server refused the token: {message}")
        case 404:
            return NotFoundError(message)
        case 409:
            return AlreadyExistsError(message)
        case 503:
            return StorageError(f"the server cannot do it now: {message}")
        case _:
            return CollabError(f"the server answered {status}: {message}")


class Documents:
    """The documents of `settings.db`, changed through its running server or, without one, directly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database: Backend = locate(settings.db)
        holder = self.database.running_server()
        self._server = None if holder is None else _Server.of(settings, holder)

    @property
    def via(self) -> str:
        """'server http://…' or 'database PATH', for the summary line."""
        if self._server is not None:
            return f"server {self._server.url}"
        return f"database {redacted(self.settings.db)}"

    def stored(self) -> list[str]:
        """Every stored document's name; `StorageError` if there is no database (none is created)."""
        with self.database.reader() as reader:
            return [info.name for info in reader.documents()]

    def delete(self, names: list[str], done: Callable[[str, NotFoundError | None], None]) -> None:
        """Delete each of `names` in turn, calling `done(name, None)` after each, or `done(name, error)` for one
        that is gone already (deleted meanwhile): the others are still deleted. Any other error stops it."""
        server = self._server

        async def each(store: Store | None) -> None:
            for name in names:
                try:
                    if server is not None:
                        server.call("DELETE", f"/api/docs/{quote(name, safe='')}", name)
                    else:
                        assert store is not None
                        await store.delete(name)
                except NotFoundError as error:
                    done(name, error)
                else:
                    done(name, None)

        asyncio.run(each(None) if server is not None else self._directly("delete", each))

    def rename(self, old: str, new: str) -> None:
        """`NotFoundError` if `old` is not a document, `AlreadyExistsError` if `new` is one; nothing changed then."""
        server = self._server
        if server is None:
            with self.database.reader() as reader:  # no database: say so rather than create an empty one
                if not reader.documents(old):
                    raise NotFoundError(f"no document named {old!r}")
            asyncio.run(self._directly("rename", lambda store: store.rename(old, new)))
            return
        path = f"/api/docs/{quote(old, safe='')}/rename?to={quote(new, safe='')}"
        if server.secret is not None:  # a token for each name: none covers two unrelated ones
            path += "&to_token=" + mint_token(server.secret, new, Permission.WRITE, ttl=SERVER_TIMEOUT * 2)
        server.call("POST", path, old)

    def restore(self, name: str, at: float) -> None:
        """Make `name` read as it did at Unix time `at`, by a new change (`Rooms.restore`).

        `NotFoundError` if it is not a document, or was none yet at `at` (`HistoryError`: no state so old is
        kept); `RestoreError` if it holds what cannot be restored.
        """
        server = self._server
        if server is None:
            with self.database.reader() as reader:  # no database: say so rather than create an empty one
                if not reader.documents(name):
                    raise NotFoundError(f"no document named {name!r}")
            asyncio.run(self._directly("restore", lambda store: self._restore_on(store, name, at)))
            return
        # To the microsecond, which ISO 8601 as `format_time` writes it (milliseconds) would round away.
        moment = datetime.fromtimestamp(at, UTC).isoformat()
        server.call("POST", f"/api/docs/{quote(name, safe='')}/restore?at={quote(moment, safe='')}", name)

    async def _restore_on(self, store: Store, name: str, at: float) -> None:
        rooms = Rooms(
            store, compact_after=self.settings.compact_after, max_document_size=self.settings.max_document_size
        )
        try:
            await rooms.restore(name, at)
        finally:
            await rooms.close()  # what a server does as it stops: its rooms compacted into the store

    async def _directly(self, command: str, change: Callable[[Store], Awaitable[None]]) -> None:
        """`change` on the database's own store, holding its lock so that no server starts meanwhile.

        The group-commit store, started and closed here, as `Store.delete` and `Store.rename` are its: they
        commit the writes queued before them (none here) and are not retried, so a failure ends the command.
        """
        lock = self.database.lock()
        lock.acquire()
        try:
            lock.describe(command=command)  # whoever finds the lock held is told who writes, not "a server starting"
            store = open_store(self.settings)
            await store.start()
            try:
                await change(store)
            finally:
                await store.close()
        finally:
            lock.release()
