"""The JSON HTTP API, on the server's port: the read side the web page and scripts use.

    GET /api/docs                 {"documents": [{"name", "size", "log_length", "history_size",
                                                  "created_at", "updated_at"}, ...]}
    GET /api/docs/<name>?format=txt|md|json|ydoc[&at=TIME]
                                  one document, as `collab export` writes it (default json);
                                  TIME is 2h / 3d (ago) or ISO 8601. 404 if unknown,
                                  or if it did not exist yet at TIME.
    DELETE /api/docs/<name>       {"deleted": name}: the document and its history are removed; its
                                  clients are closed with 4410. 404 if unknown.
    POST /api/docs/<name>/rename?to=NEW[&to_token=TOKEN]
                                  {"renamed": name, "to": NEW}: history kept; its clients are
                                  closed with 4411. 404 if unknown, 409 if NEW exists.

`<name>` is percent-encoded and may contain `/`. Without `at`, a document that
is open in a room is exported from memory, so it includes what is not yet on
disk. Times are ISO 8601 UTC; sizes are bytes stored. With access control on,
requests carry a token (`?token=` or `Authorization: Bearer`): read permission
on the document, and the listing shows only what the token covers (401/403);
deleting and renaming need write permission on every name involved: a rename's token must cover both
names, or `to_token` (a second token) covers the new one, since no token covers two unrelated names.

Decoding and rendering a document runs in a thread: a 10 MB document takes
about a second to render as JSON, and every room on the server would wait that
long if it ran on the event loop (tests/test_export.py measures the relay
meanwhile). pycrdt's Doc is not thread-safe, so only bytes cross: a room's
update is taken on the loop and a fresh Doc is built from it in the thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from websockets.http11 import Response

from ..auth import Access
from ..errors import (
    AlreadyExistsError,
    AuthError,
    CorruptDocumentError,
    ForbiddenError,
    InvalidRoomNameError,
    NotFoundError,
    ServerBusyError,
    StorageError,
    http_status_for,
)
from ..filenames import file_name_for
from ..formats import FORMATS, check_existed, doc_from_records, doc_from_updates, render
from ..store import DocumentInfo, Store
from ..sync.names import validate_room_name
from ..sync.room import EMPTY_STATE_VECTOR
from ..units import format_time, parse_time
from .router import HttpRequest, Router, json_response, respond

if TYPE_CHECKING:  # the server hands them in; the API does not depend on the server's package
    from ..server.metrics import ServerMetrics
    from ..server.rooms import Rooms

__all__ = ["document_json", "install_api"]

DOCS = "/api/docs"
RENAME = "/rename"

EXPORT_THREADS = 2
"""Documents rendered at once, each in its own thread. Rendering holds the GIL in pycrdt's native
calls (up to ~0.2 s each for a 10 MB document), and every thread that renders takes turns with the
event loop, so more exports at once would only slow the rooms down; the rest wait their turn."""

STORE_TIMEOUT = 10.0
"""Seconds an HTTP request waits for the store before answering 503: while commits fail, a load waits for
them (so that it never misses an accepted update), and a request must not hang as long as an outage."""


def document_json(info: DocumentInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "size": info.size,
        "log_length": info.log_length,
        "history_size": info.history_size,
        "created_at": format_time(info.created_at),
        "updated_at": format_time(info.updated_at),
    }


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def request_token(request: HttpRequest) -> str | None:
    if "token" in request.query:
        return request.query["token"]
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def install_api(router: Router, store: Store, rooms: Rooms, access: Access, metrics: ServerMetrics) -> None:
    """Register the API's routes on `router`."""

    def unavailable(error: StorageError | TimeoutError) -> Response:
        if isinstance(error, TimeoutError):
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE, f"the store did not answer within {STORE_TIMEOUT:g} s"
            )
        return error_response(http_status_for(error), f"document temporarily unavailable: {error}")

    def refused(error: AuthError) -> Response:
        metrics.auth_failures.inc(error.label)
        return error_response(http_status_for(error), str(error))

    async def list_documents(request: HttpRequest) -> Response:
        try:
            grant = access.check(request_token(request))
        except AuthError as error:
            return refused(error)
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                infos = await store.documents()
        except (StorageError, TimeoutError) as error:
            return unavailable(error)
        visible = [info for info in infos if access.allows(grant, info.name)]
        return json_response({"documents": [document_json(info) for info in visible]})

    exporting = asyncio.Semaphore(EXPORT_THREADS)

    async def get_document(request: HttpRequest) -> Response:
        try:
            name = _document_name(request.path)
            fmt = request.query.get("format", "json")
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
            at = parse_time(request.query["at"], time.time()) if "at" in request.query else None
        except (ValueError, InvalidRoomNameError) as error:  # UnicodeDecodeError is a ValueError
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            access.check(request_token(request), name)
        except AuthError as error:
            return refused(error)
        try:
            body = await _export(store, rooms, name, fmt, at, exporting)
        except CorruptDocumentError as error:  # retrying will not help: 500, naming the row
            return error_response(http_status_for(error), f"document cannot be read: {error}")
        except (StorageError, TimeoutError) as error:
            return unavailable(error)
        except NotFoundError as error:  # HistoryError too: no state kept for that moment
            return error_response(http_status_for(error), str(error))
        extension, content_type = FORMATS[fmt]
        headers = {}
        if fmt == "ydoc":
            headers["Content-Disposition"] = (
                f"attachment; filename*=UTF-8''{quote(file_name_for(name, extension), safe='')}"
            )
        return respond(200, body, content_type, headers)

    def may_write(token: str | None, name: str) -> None:
        """Raise `AuthError` unless `token` may write `name`."""
        grant = access.check(token, name)
        if grant is not None and not grant.can_write:
            raise ForbiddenError(f"a read-only token cannot change {name!r}", "read_only")

    async def changed(change: Awaitable[None], answer: dict[str, str]) -> Response:
        """`answer` once `change` (a delete or a rename) is done, or the error it raised.

        A timeout answers 503, but the change may still be done: it is not undone (its clients are closed).
        """
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                await change
        except (NotFoundError, AlreadyExistsError, ServerBusyError) as error:
            return error_response(http_status_for(error), str(error))
        except (StorageError, TimeoutError) as error:
            return unavailable(error)
        return json_response(answer)

    async def delete_document(request: HttpRequest) -> Response:
        try:
            name = _document_name(request.path)
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            may_write(request_token(request), name)
        except AuthError as error:
            return refused(error)
        return await changed(rooms.delete(name), {"deleted": name})

    async def rename_document(request: HttpRequest) -> Response:
        try:
            if not request.path.endswith(RENAME):
                raise InvalidRoomNameError(f"POST {DOCS}/NAME{RENAME}?to=NEW is the only POST here")
            old = _document_name(request.path[: -len(RENAME)])
            new = validate_room_name(request.query.get("to", ""))
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            may_write(request_token(request), old)
            may_write(request.query.get("to_token") or request_token(request), new)
        except AuthError as error:
            return refused(error)
        return await changed(rooms.rename(old, new), {"renamed": old, "to": new})

    router.route(DOCS, list_documents)
    router.route(DOCS + "/", get_document)
    router.route(DOCS + "/", delete_document, methods=("DELETE",))
    router.route(DOCS + "/", rename_document, methods=("POST",))


def _document_name(path: str) -> str:
    """The validated document name of a `/api/docs/<name>` path; raise `InvalidRoomNameError` saying why not."""
    encoded = path[len(DOCS) + 1 :]
    if not encoded:
        raise InvalidRoomNameError(f"no document name: GET {DOCS}/NAME, or {DOCS} for the list")
    try:
        name = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRoomNameError("the document name is not UTF-8 once percent-decoded") from None
    return validate_room_name(name)


async def _export(
    store: Store, rooms: Rooms, name: str, fmt: str, at: float | None, threads: asyncio.Semaphore
) -> bytes:
    """Document `name` now (from its room if loaded) or at `at`, rendered in `fmt` in a thread.

    Raises `NotFoundError` if there is no such document, or none yet at `at`; `HistoryError` if no
    state is kept for `at`; `StorageError` (`CorruptDocumentError`) if it cannot be read; `TimeoutError`
    if the store does not answer within `STORE_TIMEOUT` (its commits failing, a load waits for them). Only
    the rendering holds one of the `threads`: a slow store does not hold up exports of rooms in memory.
    """
    async with asyncio.timeout(STORE_TIMEOUT):
        infos = await store.documents(name)
    info = infos[0] if infos else None
    if info is not None and at is not None:
        check_existed(info, at)
    room = rooms.get(name) if at is None else None
    if room is not None:
        # Bytes, taken on the loop: the room's Doc belongs to the loop (and may not be built yet: diff
        # answers from the stored bytes then). Rendering types the roots of the Doc it reads, so the
        # thread renders a copy of its own.
        update = room.diff(EMPTY_STATE_VECTOR)
        async with threads:
            return await asyncio.to_thread(lambda: render(doc_from_updates([update]), fmt, info, name))
    async with asyncio.timeout(STORE_TIMEOUT):
        records = await store.load(name, at)
    if not records:
        raise NotFoundError(f"no document named {name!r}")
    # A row that would crash pycrdt: CorruptDocumentError, from the thread.
    async with threads:
        return await asyncio.to_thread(lambda: render(doc_from_records(name, records), fmt, info, name))
