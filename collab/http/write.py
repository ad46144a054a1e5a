"""The write API, on the server's port: change documents from an application's code, as a client would.

    POST /api/docs?name=NAME      {"name", "state_vector", "size"}, 201: a new document, empty or with
                                  the body as its first content: a Yjs update (Content-Type:
                                  application/octet-stream), else UTF-8 text for its `content`.
                                  409 if NAME exists (stored, or open in a room).
    POST /api/docs/<name>/update  {"name", "state_vector", "size"}: the body, one Yjs v1 update
                                  (Content-Type: application/octet-stream, else 415), is checked as
                                  a client's update is, then every connected client gets it at once
                                  and it is stored. Creates the document if there is none, as a
                                  client's first edit does. 400 if it does not decode or apply, 413
                                  if it would grow the document past --max-document-size.
    PUT /api/docs/<name>?format=txt|md
                                  {"name", "state_vector", "size"}, 200 (201 if it created the
                                  document): the body, UTF-8 text (txt or md: both are the text of
                                  `content`), becomes the text of the `content` root, by the
                                  smallest edits a diff finds (collab.sync.textdiff), so that what
                                  others type meanwhile elsewhere in the text survives. 400 if it is
                                  not UTF-8; 409 if `content` is not a plain text (a map, XML,
                                  embedded objects).

`state_vector` is the document's Yjs state vector once the change is applied, base64: what a copy of it holds
that the server lacks is `Y.encodeStateAsUpdate(copy, sv)`. `size` is the bytes stored, as `GET /api/docs` lists it. A
write is answered once the store has it (503 if it has not confirmed it within `DURABLE_TIMEOUT`: the change is
applied and kept, and sending it again changes nothing, since an update applies once and a text equal to the
document's is no change). Bodies are up to --max-message-size bytes, sent with `Content-Length` (413 above, 411
for chunked, 408 if they do not arrive in time: see `collab.http.head`), and a page of another origin may
not send them (`OriginPolicy`). Writing needs write permission on the document (401 without a token, 403 for
a read-only one or another document's); a document being deleted or renamed is 503 (try again), as a join is.

A text's diff is worked out in a thread, from the room's bytes (a pycrdt Doc is not thread safe), by a client
id of its own; it is applied as a change concurrent with whatever came meanwhile, which it merges with as any
client's edit does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, NamedTuple

from pycrdt import Text, get_state
from websockets.http11 import Response

from ..auth import Access, Grant
from ..errors import (
    AlreadyExistsError,
    AuthError,
    CorruptDocumentError,
    ForbiddenError,
    InvalidRoomNameError,
    InvalidUpdateError,
    LimitError,
    ProtocolError,
    StorageError,
    http_status_for,
    metric_label,
)
from ..formats import CONTENT_ROOT, doc_from_updates, typed_roots
from ..logs import fields
from ..store import Store
from ..sync.names import validate_room_name
from ..sync.room import EMPTY_STATE_VECTOR, EMPTY_UPDATE, Room
from ..sync.textdiff import edit_text, edits_for
from ..sync.yupdate import MAX_CLIENT_ID, check_state_vector
from .api import document_name, error_response, refused, request_token
from .router import HttpRequest, Router, json_response

if TYPE_CHECKING:
    from ..server.metrics import ServerMetrics
    from ..server.rooms import Rooms

__all__ = ["TextChange", "install_write_api", "replaced_text"]

logger = logging.getLogger("collab.http")

DOCS = "/api/docs"
UPDATE = "/update"
OCTET_STREAM = "application/octet-stream"
TEXT_FORMATS = ("txt", "md")

WRITE_TIMEOUT = 30.0
"""Seconds a write may take to be applied: its room's load (which waits while commits fail) and, for a text, its
diff (bounded to about a second, plus building the document: a few seconds for the largest)."""
DURABLE_TIMEOUT = 10.0
"""Seconds a write waits for the store to confirm it, once applied."""
TEXT_THREADS = 2
"""Texts diffed at once, each in a thread (as `api.EXPORT_THREADS`: every one takes turns with the event loop)."""
CLIENT_ID_ATTEMPTS = 100
"""Random client ids tried for a text's change (as `collab.sync.restore` does: one try almost always does)."""


class TextChange(NamedTuple):
    """What replacing a document's text takes (`replaced_text`)."""

    update: bytes
    """The change; `EMPTY_UPDATE` if the text reads so already, or if it cannot be replaced."""
    refusal: str = ""
    """Why the document's `content` cannot take a text (it is not a plain text); "" if it can."""


class _Writer:
    """An HTTP request writing to a room, as the room sees it: a peer that is never in it, so it is sent nothing."""

    __slots__ = ("grant", "id")

    def __init__(self, grant: Grant | None) -> None:
        self.id = "http"
        self.grant = grant

    def send(self, frame: bytes) -> None:
        """Nothing: the request is answered over HTTP."""

    def close(self, code: int, reason: str) -> None:
        """Nothing: the request is answered over HTTP."""


def install_write_api(
    router: Router, store: Store, rooms: Rooms, access: Access, metrics: ServerMetrics, max_body: int
) -> None:
    """Register the write API's routes on `router`; `max_body`: the largest body read (--max-message-size)."""

    def writer_for(request: HttpRequest, name: str) -> _Writer:
        """The writer a request's token makes; `AuthError` unless it may write `name`."""
        grant = access.check(request_token(request), name)
        if grant is not None and not grant.can_write:
            raise ForbiddenError(f"a read-only token cannot change {name!r}", "read_only")
        return _Writer(grant)

    async def is_new(room: Room) -> bool:
        """Whether writing to `room` creates its document: nothing stored or accepted for it, nobody in it."""
        return not room.size and not room.peers and not await store.documents(room.name)

    texts = asyncio.Semaphore(TEXT_THREADS)

    async def diffed(room: Room, new: str) -> TextChange:
        """What makes `room`'s text read `new` (`replaced_text`), worked out in a thread."""
        current = room.diff(EMPTY_STATE_VECTOR)  # bytes, taken on the loop: the room's Doc is the loop's
        async with texts:
            return await asyncio.to_thread(replaced_text, current, new)

    async def written(
        name: str, writer: _Writer, change: Callable[[Room], Awaitable[bytes]], *, theirs: bool = True
    ) -> bytes | Response:
        """Apply the update `change(room)` makes to `name` (`Rooms.write`): the state vector after it, or the
        answer saying why not. `theirs`: the update is the client's (refused: its fault, 400), not one the
        server made (refused: a bug, 500)."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                return await rooms.write(name, writer, change)
        except InvalidUpdateError as error:
            if not theirs:
                logger.exception("a text's own change does not apply to its document", extra=fields(room=name))
                return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (the server logged it)")
            return refused_write(name, error)
        except (ProtocolError, LimitError) as error:  # too large, or busy (being deleted or renamed)
            return refused_write(name, error)
        except AlreadyExistsError as error:
            return error_response(http_status_for(error), str(error))
        except CorruptDocumentError as error:
            return error_response(http_status_for(error), f"document cannot be read: {error}")
        except StorageError as error:
            return error_response(http_status_for(error), f"document temporarily unavailable: {error}")
        except TimeoutError:
            message = f"not written: the change was not applied within {WRITE_TIMEOUT:g} s (is the store failing?)"
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, message)

    def refused_write(name: str, error: ProtocolError | LimitError) -> Response:
        """The answer to an update refused as a client's would be, counted and logged as a client's is."""
        metrics.rejected.inc(metric_label(error))
        logger.warning("refused a write", extra=fields(room=name, reason=str(error)))
        return error_response(http_status_for(error), str(error))

    async def answered(name: str, state: bytes, created: bool) -> Response:
        """The answer to a write applied, once the store has it: 201 if it `created` the document, which is
        then stored even if empty, so that it is listed."""
        try:
            async with asyncio.timeout(DURABLE_TIMEOUT):
                await store.flush()
                infos = await store.documents(name)
                if created and not infos:  # nothing in it yet: one empty update
                    store.append(name, EMPTY_UPDATE)
                    await store.flush()
                    infos = await store.documents(name)
        except (StorageError, TimeoutError):
            message = (
                f"applied (the document's clients have it) but not confirmed stored within {DURABLE_TIMEOUT:g} s;"
                " the store keeps retrying, and sending it again changes nothing"
            )
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, message)
        answer = {"name": name, "state_vector": base64.b64encode(state).decode(), "size": infos[0].size if infos else 0}
        return json_response(answer, HTTPStatus.CREATED if created else HTTPStatus.OK)

    creating: set[str] = set()
    """Names a POST /api/docs is creating: a second one meanwhile is 409, as it will be once the first is done."""

    async def create_document(request: HttpRequest) -> Response:
        content_type = _content_type(request)
        if content_type == "application/json":  # the shape of other APIs, not of this one: say which it is
            message = f"the name goes in the query (POST {DOCS}?name=NAME), the body is its text or a Yjs update"
            return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message)
        binary = content_type == OCTET_STREAM
        try:
            if "name" not in request.query:
                raise InvalidRoomNameError(f"no name: POST {DOCS}?name=NAME")
            name = validate_room_name(request.query["name"])
            initial = "" if binary else _utf8(request.body)
        except (InvalidRoomNameError, ValueError) as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            writer = writer_for(request, name)
        except AuthError as error:
            return refused(metrics, error)

        async def change(room: Room) -> bytes:
            if not await is_new(room):
                raise AlreadyExistsError.for_name(name)
            if not request.body:
                return EMPTY_UPDATE
            return request.body if binary else (await diffed(room, initial)).update  # a new one takes any text

        if name in creating:
            return error_response(HTTPStatus.CONFLICT, f"a document named {name!r} is being created")
        creating.add(name)
        try:
            state = await written(name, writer, change, theirs=binary)
        finally:
            creating.discard(name)
        return state if isinstance(state, Response) else await answered(name, state, created=True)

    async def update_document(request: HttpRequest) -> Response:
        try:
            name = document_name(request.path[: -len(UPDATE)])
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            writer = writer_for(request, name)
        except AuthError as error:
            return refused(metrics, error)
        if _content_type(request) != OCTET_STREAM:
            message = f"send the update as {OCTET_STREAM} (curl --data-binary @FILE -H 'Content-Type: {OCTET_STREAM}')"
            return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message)
        if not request.body:
            return error_response(HTTPStatus.BAD_REQUEST, "no update: the body is empty")

        async def change(room: Room) -> bytes:
            return request.body

        state = await written(name, writer, change)
        return state if isinstance(state, Response) else await answered(name, state, created=False)

    async def replace_text(request: HttpRequest) -> Response:
        try:
            name = document_name(request.path)
            fmt = request.query.get("format", "txt")
            if fmt not in TEXT_FORMATS:
                raise ValueError(
                    f"PUT takes format txt or md, not {fmt!r}; a Yjs update goes to POST {DOCS}/NAME{UPDATE}"
                )
            new = _utf8(request.body)
        except (InvalidRoomNameError, ValueError) as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            writer = writer_for(request, name)
        except AuthError as error:
            return refused(metrics, error)
        created, refusal = False, ""

        async def change(room: Room) -> bytes:
            nonlocal created, refusal
            created = await is_new(room)
            made = await diffed(room, new)
            refusal = made.refusal
            return made.update

        state = await written(name, writer, change, theirs=False)
        if isinstance(state, Response):
            return state
        if refusal:  # nothing was changed
            return error_response(HTTPStatus.CONFLICT, f"document {name!r} cannot take a text: {refusal}")
        return await answered(name, state, created)

    router.route(DOCS, create_document, methods=("POST",), body=max_body)
    router.route(DOCS + "/", update_document, methods=("POST",), body=max_body, suffix=UPDATE)
    router.route(DOCS + "/", replace_text, methods=("PUT",), body=max_body)


def replaced_text(current: bytes, new: str) -> TextChange:
    """The update that makes the `content` text of document `current` (a whole update, checked) read `new`: the
    smallest edits `textdiff` finds, made by a client id the document has not used; `EMPTY_UPDATE` if it reads
    so already. Refused, saying why, if `content` is a map, XML or an array, or holds embedded objects.

    No event loop: run it in a thread (it builds the document, and a diff takes up to about a second).
    """
    doc = doc_from_updates([current], client_id=_unused_client_id(current))
    text = doc.get(CONTENT_ROOT, type=Text)
    chunks = text.diff()
    if not any(isinstance(content, str) for content, _ in chunks):  # empty, or another type viewed as a text
        root = typed_roots(current).get(CONTENT_ROOT)
        if root is not None and not isinstance(root, Text):
            return TextChange(EMPTY_UPDATE, f"its {CONTENT_ROOT!r} is a {type(root).__name__}, not a text")
    if any(not isinstance(content, str) for content, _ in chunks):
        return TextChange(
            EMPTY_UPDATE, f"its {CONTENT_ROOT!r} text holds embedded objects, which plain text cannot say"
        )
    made: list[bytes] = []
    subscription = doc.observe(lambda event: made.append(event.update))
    try:
        with doc.transaction():
            edit_text(text, new, edits_for(len(current)))
    finally:
        doc.unobserve(subscription)
    return TextChange(made[0] if made else EMPTY_UPDATE)


def _unused_client_id(update: bytes) -> int:
    """A client id the document has no change from: a change must not continue anyone's clock."""
    used = check_state_vector(get_state(update))
    for _ in range(CLIENT_ID_ATTEMPTS):
        client_id = 1 + secrets.randbelow(min(2**32, MAX_CLIENT_ID) - 1)
        if client_id not in used:
            return client_id
    raise RuntimeError("found no client id the document has not used")


def _content_type(request: HttpRequest) -> str:
    """The request's media type, lower-cased, without its parameters ("" if it names none)."""
    return request.headers.get("Content-Type", "").partition(";")[0].strip().lower()


def _utf8(body: bytes) -> str:
    """A body as text; `ValueError` saying so unless it is UTF-8."""
    try:
        return body.decode()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"the body is not UTF-8 text (byte {error.start}); a Yjs update goes as {OCTET_STREAM}"
        ) from None
