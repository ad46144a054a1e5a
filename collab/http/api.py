"""The JSON HTTP API, on the server's port: the read side the web page and scripts use.

    GET /api/docs                 {"documents": [{"name", "size", "log_length", "history_size",
                                                  "created_at", "updated_at"}, ...]}
    GET /api/docs/<name>?format=txt|md|json|ydoc[&at=TIME]
                                  one document, as `collab export` writes it (default json);
                                  TIME is 2h / 3d (ago) or ISO 8601. 404 if unknown.

`<name>` is percent-encoded and may contain `/`. Without `at`, a document that
is open in a room is exported from memory, so it includes what is not yet on
disk. Times are ISO 8601 UTC; sizes are bytes stored. With access control on,
requests carry a token (`?token=` or `Authorization: Bearer`): read permission
on the document, and the listing shows only what the token covers (401/403).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from pycrdt import Doc
from websockets.http11 import Response

from ..auth import Access
from ..errors import AuthError, ForbiddenError, HistoryError, InvalidRoomNameError, StorageError
from ..filenames import file_name_for
from ..formats import FORMATS, doc_from_records, doc_from_updates, render
from ..store import DocumentInfo, Store
from ..store.history import format_time, parse_time
from ..sync.names import validate_room_name
from .router import HttpRequest, Router, json_response, respond

if TYPE_CHECKING:  # the server hands them in; the API does not depend on the server's package
    from ..server.metrics import ServerMetrics
    from ..server.rooms import Rooms

__all__ = ["document_json", "install_api"]

DOCS = "/api/docs"


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

    def refused(error: AuthError) -> Response:
        metrics.auth_failures.inc(error.label)
        return error_response(403 if isinstance(error, ForbiddenError) else 401, str(error))

    async def list_documents(request: HttpRequest) -> Response:
        try:
            grant = access.check(request_token(request))
        except AuthError as error:
            return refused(error)
        infos = await store.documents()
        visible = [info for info in infos if access.allows(grant, info.name)]
        return json_response({"documents": [document_json(info) for info in visible]})

    async def get_document(request: HttpRequest) -> Response:
        try:
            name = validate_room_name(unquote(request.path[len(DOCS) + 1 :], errors="strict"))
            fmt = request.query.get("format", "json")
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
            at = parse_time(request.query["at"], time.time()) if "at" in request.query else None
        except (ValueError, InvalidRoomNameError) as error:  # UnicodeDecodeError is a ValueError
            return error_response(400, str(error))
        try:
            access.check(request_token(request), name)
        except AuthError as error:
            return refused(error)
        try:
            doc, info = await _document(store, rooms, name, at)
        except HistoryError as error:
            return error_response(404, str(error))
        except StorageError as error:
            return error_response(503, f"document temporarily unavailable: {error}")
        if doc is None:
            return error_response(404, f"no document named {name!r}")
        extension, content_type = FORMATS[fmt]
        headers = {}
        if fmt == "ydoc":
            headers["Content-Disposition"] = (
                f"attachment; filename*=UTF-8''{quote(file_name_for(name, extension), safe='')}"
            )
        return respond(200, render(doc, fmt, info, name), content_type, headers)

    router.route(DOCS, list_documents)
    router.route(DOCS + "/", get_document)


async def _document(store: Store, rooms: Rooms, name: str, at: float | None) -> tuple[Doc | None, DocumentInfo | None]:
    """The document now (from its room if loaded) or at `at`; None if it does not exist."""
    infos = await store.documents(name)
    info = infos[0] if infos else None
    room = rooms.get(name) if at is None else None
    if room is not None:
        room.flush()
        # A copy: rendering types the roots of the Doc it reads, and the room's must stay untouched.
        return doc_from_updates([room.doc.get_update()]), info
    records = await store.load(name, at)
    if not records:
        return None, info
    return doc_from_records(name, records), info  # a row that would crash pycrdt: CorruptDocumentError
