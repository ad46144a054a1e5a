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
    POST /api/docs/<name>/restore?at=TIME
                                  {"restored": name, "at": ISO}: the document reads as it did at
                                  TIME again, by a new change every client gets at once (a CRDT
                                  change, merged with anyone's offline edits). 400 if TIME is in
                                  the future; 404 if unknown, or not yet existing or no history
                                  kept at TIME; 409 if it holds what cannot be restored
                                  (collab.sync.restore), if the result would pass the size limit,
                                  or if it was deleted or renamed meanwhile; 503 while
                                  RESTORE_THREADS restores are being worked out.
    GET /api/history/<name>[?limit=N&gap=DURATION&before=TIME]
                                  {"name", "moments": [{"at", "at_unix", "from", "kind", "changes",
                                  "bytes", "people", "restore_of"}, ...], "truncated"}: the newest
                                  N (200, at most 1000) moments whose `at` is before TIME (the `at`
                                  of the oldest one listed pages back), changes less than DURATION
                                  (5m) apart grouped and a restore always starting one
                                  (collab.sync.moments); `at` reads the document as of each.
                                  `people` and `restore_of` are what this process saw since it
                                  started (collab.sync.journal). 404 if unknown.

`<name>` is percent-encoded and may contain `/`. Without `at`, a document that
is open in a room is exported from memory, so it includes what is not yet on
disk. Times are ISO 8601 UTC; sizes are bytes stored. With access control on,
requests carry a token (`?token=` or `Authorization: Bearer`): read permission
on the document, and the listing shows only what the token covers (401/403);
deleting, renaming and restoring need write permission on every name involved: a rename's token must cover
both names, or `to_token` (a second token) covers the new one, since no token covers two unrelated names.

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
    InvalidRoomNameError,
    NotFoundError,
    ProtocolError,
    RestoreError,
    ServerBusyError,
    StorageError,
    http_status_for,
)
from ..filenames import file_name_for
from ..formats import FORMATS, check_existed, doc_from_records, doc_from_updates, render
from ..store import DocumentInfo, Store
from ..sync.moments import DEFAULT_GAP, DEFAULT_LIMIT, MAX_LIMIT, Moment, history_json, listed_moments
from ..sync.names import validate_room_name
from ..sync.room import EMPTY_STATE_VECTOR
from ..units import format_duration, format_time, parse_duration, parse_time
from .router import HttpRequest, Router, json_response, respond

if TYPE_CHECKING:  # the server hands them in; the API does not depend on the server's package
    from ..server.metrics import ServerMetrics
    from ..server.rooms import Rooms

__all__ = ["document_json", "document_name", "error_response", "install_api", "refused", "request_token"]

DOCS = "/api/docs"
HISTORY = "/api/history"
RENAME = "/rename"
RESTORE = "/restore"

EXPORT_THREADS = 2
"""Documents rendered at once, each in its own thread. Rendering holds the GIL in pycrdt's native
calls (up to ~0.2 s each for a 10 MB document), and every thread that renders takes turns with the
event loop, so more exports at once would only slow the rooms down; the rest wait their turn."""

STORE_TIMEOUT = 10.0
"""Seconds an HTTP request waits for the store before answering 503: while commits fail, a load waits for
them (so that it never misses an accepted update), and a request must not hang as long as an outage."""
RESTORE_TIMEOUT = 30.0
"""Seconds a restore may take, its reads, its work (a 10 MB document takes a few seconds) and its commit."""
HISTORY_IN_THREAD = 5_000
"""History points from which the grouping runs in a thread (100,000 points take ~0.1 s)."""


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


def refused(metrics: ServerMetrics, error: AuthError) -> Response:
    """The answer to a request whose token was refused, counted in `collab_auth_failures_total`."""
    metrics.auth_failures.inc(error.label)
    return error_response(http_status_for(error), str(error))


def install_api(router: Router, store: Store, rooms: Rooms, access: Access, metrics: ServerMetrics) -> None:
    """Register the API's routes on `router`."""

    def unavailable(error: StorageError | TimeoutError) -> Response:
        if isinstance(error, TimeoutError):
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE, f"the store did not answer within {STORE_TIMEOUT:g} s"
            )
        return error_response(http_status_for(error), f"document temporarily unavailable: {error}")

    async def list_documents(request: HttpRequest) -> Response:
        try:
            grant = access.check(request_token(request))
        except AuthError as error:
            return refused(metrics, error)
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
            name = document_name(request.path)
            fmt = request.query.get("format", "json")
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
            at = parse_time(request.query["at"], time.time()) if "at" in request.query else None
        except (ValueError, InvalidRoomNameError) as error:  # UnicodeDecodeError is a ValueError
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            access.check(request_token(request), name)
        except AuthError as error:
            return refused(metrics, error)
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

    async def changed(
        change: Awaitable[None], answer: dict[str, str], timeout: float = STORE_TIMEOUT, late: str | None = None
    ) -> Response:
        """`answer` once `change` (a delete, a rename, a restore) is done, or the error it raised.

        Past `timeout` it answers 503 (`late` says why, default: the store did not answer), but the change
        may still be done: it is not undone (its clients are closed).
        """
        try:
            async with asyncio.timeout(timeout):
                await change
        except CorruptDocumentError as error:
            return error_response(http_status_for(error), f"document cannot be read: {error}")
        except (
            NotFoundError,
            AlreadyExistsError,
            RestoreError,  # what the document holds, or what became of it meanwhile
            ServerBusyError,
        ) as error:
            return error_response(http_status_for(error), str(error))
        except ProtocolError:  # none of the changes takes a client's bytes: the server's own (logged), a bug
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (the server logged it)")
        except TimeoutError as error:
            if late is None:
                return unavailable(error)
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, late)
        except StorageError as error:
            return unavailable(error)
        return json_response(answer)

    async def delete_document(request: HttpRequest) -> Response:
        try:
            name = document_name(request.path)
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            access.check_write(request_token(request), name)
        except AuthError as error:
            return refused(metrics, error)
        return await changed(rooms.delete(name), {"deleted": name})

    async def change_document(request: HttpRequest) -> Response:
        """POST /api/docs/NAME/rename or /restore: the last part of the path says which."""
        for suffix, handler in ((RENAME, rename_document), (RESTORE, restore_document)):
            if request.path.endswith(suffix):
                return await handler(request, request.path[: -len(suffix)])
        choices = f"POST {DOCS}/NAME{RENAME}?to=NEW and {DOCS}/NAME{RESTORE}?at=TIME"
        return error_response(HTTPStatus.BAD_REQUEST, f"{choices} are the only POSTs here")

    async def rename_document(request: HttpRequest, path: str) -> Response:
        try:
            old = document_name(path)
            new = validate_room_name(request.query.get("to", ""))
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            access.check_write(request_token(request), old)
            access.check_write(request.query.get("to_token") or request_token(request), new)
        except AuthError as error:
            return refused(metrics, error)
        return await changed(rooms.rename(old, new), {"renamed": old, "to": new})

    async def restore_document(request: HttpRequest, path: str) -> Response:
        try:
            name = document_name(path)
            if "at" not in request.query:
                raise ValueError(f"no time: POST {DOCS}/NAME{RESTORE}?at=TIME (2h, 3d ago or ISO 8601)")
            now = time.time()
            at = parse_time(request.query["at"], now)
            if at > now:
                raise ValueError(f"{request.query['at']} is in the future: a restore goes back to an earlier time")
        except (ValueError, InvalidRoomNameError) as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            access.check_write(request_token(request), name)
        except AuthError as error:
            return refused(metrics, error)
        answer = {"restored": name, "at": format_time(at)}
        late = (
            f"the restore did not finish within {RESTORE_TIMEOUT:g} s (a large document, or a slow store); if it "
            "was applied, the document's clients have it: look before trying again"
        )
        return await changed(rooms.restore(name, at), answer, RESTORE_TIMEOUT, late)

    async def document_history(request: HttpRequest) -> Response:
        try:
            name = document_name(request.path, HISTORY)
            limit = _whole_number(request.query.get("limit", str(DEFAULT_LIMIT)), "limit", MAX_LIMIT)
            gap = parse_duration(request.query.get("gap", format_duration(DEFAULT_GAP)))
            before = parse_time(request.query["before"], time.time()) if "before" in request.query else None
        except (ValueError, InvalidRoomNameError) as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            access.check(request_token(request), name)
        except AuthError as error:
            return refused(metrics, error)
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                known = bool(await store.documents(name)) or name in rooms
                points = await store.history(name)
        except (StorageError, TimeoutError) as error:
            return unavailable(error)
        if not known:
            return error_response(HTTPStatus.NOT_FOUND, f"no document named {name!r}")
        restores = rooms.journal.restores(name)  # taken on the loop: the journal is the loop's

        def listed() -> tuple[list[Moment], bool]:
            return listed_moments(points, restores, gap=gap, limit=limit, before=before)

        if len(points) < HISTORY_IN_THREAD:
            moments, truncated = listed()
        else:
            async with exporting:
                moments, truncated = await asyncio.to_thread(listed)
        return json_response(history_json(name, moments, truncated, rooms.journal))

    router.route(DOCS, list_documents)
    router.route(DOCS + "/", get_document)
    router.route(DOCS + "/", delete_document, methods=("DELETE",))
    router.route(DOCS + "/", change_document, methods=("POST",))
    router.route(HISTORY + "/", document_history)


def document_name(path: str, prefix: str = DOCS) -> str:
    """The validated document name of a `<prefix>/<name>` path; raise `InvalidRoomNameError` saying why not."""
    encoded = path[len(prefix) + 1 :]
    if not encoded:
        raise InvalidRoomNameError(f"no document name: {prefix}/NAME, or GET {DOCS} for the list")
    try:
        name = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRoomNameError("the document name is not UTF-8 once percent-decoded") from None
    return validate_room_name(name)


def _whole_number(text: str, what: str, most: int) -> int:
    """`text` as a whole number from 1 to `most`; `ValueError` naming `what` otherwise (its digits counted first:
    `int` refuses more than 4,300 of them with a message of its own)."""
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()) or len(digits) > len(str(most)) or not 1 <= int(digits) <= most:
        raise ValueError(f"{what} must be a whole number from 1 to {most}, not {text[:20]!r}")
    return int(digits)


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
