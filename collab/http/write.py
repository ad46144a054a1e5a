"""The write API, on the server's port: change documents from an application's code, as a client would.

    POST /api/docs?name=NAME      {"name", "state_vector", "size"}, 201: a new document, empty or with
                                  the body as its first content: a Yjs update (Content-Type:
                                  application/octet-stream), else UTF-8 text for its `content`.
                                  409 if NAME exists (stored, or open in a room), as it does once a
                                  creation of NAME under way in this process, waited for first, is
                                  done (another process's may not be seen: both may answer 201).
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
                                  not UTF-8; 415 for application/octet-stream (an update goes to
                                  POST .../update); 409 if `content` is not a plain text (a map, XML,
                                  embedded objects).

`state_vector` is the document's Yjs state vector once the change is applied, base64: what a copy of it holds
that the server lacks is `Y.encodeStateAsUpdate(copy, sv)`. `size` is the bytes stored, as `GET /api/docs` lists it. A
write is answered once the store has it. A 503 says in `applied` whether the change took effect: true if the
store has not confirmed it within `DURABLE_TIMEOUT` (it is kept, and sending it again changes nothing, since an
update applies once and a text equal to the document's is no change), false if it was not applied (the name
being deleted or renamed, the store failing to load it, large writes busy: try again).

Bodies are up to --max-message-size bytes, sent with `Content-Length` (413 above, 411 for any
Transfer-Encoding: see `collab.http.head`). Each route's head check (`Router.route(..., check=)`) runs before
any of the body is read: a request that may not write (401 without a token, 403 for a read-only one or another
document's), or that names no document or the wrong media type, is refused without taking in its body, and a
page of another origin is refused before that (`OriginPolicy`). The transport bounds the bodies under way, in
bytes and in connections, and the time each may take (`collab.server.transport`).

Writes that work out a text, and creations, take the document's turn (`Rooms.turn`, with restores), one after
another: two PUTs at once give the text of the later one, not a merge of both, while what clients type
meanwhile still merges with each. Writes of `LARGE_WRITE` bytes or more are paced process-wide, as a WebSocket
connection is paced for the bytes it sends (`LARGE_WRITE_RATE`): one arriving sooner is 503 with
`Retry-After`, before its body is read when the head shows it.

A text's diff is worked out in a thread, from the room's bytes (a pycrdt Doc is not thread safe), by a client
id of its own; it is applied as a change concurrent with whatever came meanwhile, which it merges with as any
client's edit does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from http import HTTPStatus
from typing import TYPE_CHECKING, NamedTuple

from pycrdt import Text
from websockets.http11 import Response

from ..auth import Access, Grant
from ..errors import (
    AlreadyExistsError,
    AuthError,
    CollabError,
    CorruptDocumentError,
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
from ..sync.restore import fresh_client_id, with_article
from ..sync.room import EMPTY_STATE_VECTOR, EMPTY_UPDATE, Room
from ..sync.textdiff import edit_text, edits_for
from .api import DOCS, document_name, error_response, refused, request_token
from .router import HeadCheck, HttpRequest, Router, json_response

if TYPE_CHECKING:
    from ..server.metrics import ServerMetrics
    from ..server.rooms import Rooms

__all__ = ["TextChange", "install_write_api", "replaced_text"]

logger = logging.getLogger("collab.http")

UPDATE = "/update"
OCTET_STREAM = "application/octet-stream"
TEXT_FORMATS = ("txt", "md")

WRITE_TIMEOUT = 30.0
"""Seconds a write may take to be applied: its turn (`Rooms.turn`), its room's load (which waits while commits
fail) and, for a text, its diff (bounded to about a second, plus building the document: a few seconds for the
largest)."""
DURABLE_TIMEOUT = 10.0
"""Seconds a write waits for the store to confirm it, once applied."""
TEXT_THREADS = 2
"""Texts diffed at once, each in a thread (as `api.EXPORT_THREADS`: every one takes turns with the event loop)."""
LARGE_WRITE = 2**20
"""Bytes from which a write is paced (`LARGE_WRITE_RATE`). Below it a write costs the event loop under 0.1 s
(checking and merging costs at most 75 ns a byte: `collab.sync.limits`)."""
LARGE_WRITE_RATE = 2 * 2**20
"""Bytes of large writes taken per second, process-wide: what one WebSocket connection gets through at the
default --max-messages-per-second (500 tokens of 4 KiB each). A 64 MiB update, several seconds of the event
loop at worst, then keeps the next large write waiting for 32 s: however many send them, large writes take a
bounded share of the loop."""


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


class _Target(NamedTuple):
    """What a write request's head says: the document it writes, and the writer its token makes."""

    name: str
    writer: _Writer


class _Pace:
    """The pace of large writes (`LARGE_WRITE_RATE`): when the next may start."""

    __slots__ = ("free_at",)

    def __init__(self) -> None:
        self.free_at = 0.0
        """`time.monotonic()` from which the next large write may start."""

    def wait(self, size: int) -> float:
        """Seconds before a write of `size` bytes may start (0.0: now)."""
        return max(0.0, self.free_at - time.monotonic()) if size >= LARGE_WRITE else 0.0

    def take(self, size: int) -> float:
        """Start a write of `size` bytes if it may (0.0), else the seconds it must wait (and it is not taken)."""
        wait = self.wait(size)
        if not wait and size >= LARGE_WRITE:
            self.free_at = time.monotonic() + size / LARGE_WRITE_RATE
        return wait


def install_write_api(
    router: Router, store: Store, rooms: Rooms, access: Access, metrics: ServerMetrics, max_body: int
) -> None:
    """Register the write API's routes on `router`; `max_body`: the largest body read (--max-message-size)."""
    pace = _Pace()
    texts = asyncio.Semaphore(TEXT_THREADS)

    # What a request's head says, checked before its body is read (`head_check`) and again by its handler.

    def target(request: HttpRequest, name: str) -> _Target | Response:
        """`name` and the writer the request's token makes; the refusal (401, 403) unless it may write `name`."""
        try:
            grant = access.check_write(request_token(request), name)
        except AuthError as error:
            return refused(metrics, error)
        return _Target(name, _Writer(grant))

    def create_target(request: HttpRequest) -> _Target | Response:
        if _content_type(request) == "application/json":  # the shape of other APIs, not of this one: say which
            message = f"the name goes in the query (POST {DOCS}?name=NAME), the body is its text or a Yjs update"
            return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message)
        try:
            if "name" not in request.query:
                raise InvalidRoomNameError(f"no name: POST {DOCS}?name=NAME")
            name = validate_room_name(request.query["name"])
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        return target(request, name)

    def update_target(request: HttpRequest) -> _Target | Response:
        try:
            name = document_name(request.path[: -len(UPDATE)])
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        found = target(request, name)
        if not isinstance(found, Response) and _content_type(request) != OCTET_STREAM:
            message = f"send the update as {OCTET_STREAM} (curl --data-binary @FILE -H 'Content-Type: {OCTET_STREAM}')"
            return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message)
        return found

    def text_target(request: HttpRequest) -> _Target | Response:
        try:
            name = document_name(request.path)
            fmt = request.query.get("format", "txt")
            if fmt not in TEXT_FORMATS:
                raise ValueError(
                    f"PUT takes format txt or md, not {fmt!r}; a Yjs update goes to POST {DOCS}/NAME{UPDATE}"
                )
        except (InvalidRoomNameError, ValueError) as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        found = target(request, name)
        if not isinstance(found, Response) and _content_type(request) == OCTET_STREAM:
            message = f"PUT takes UTF-8 text (txt or md); a Yjs update goes to POST {DOCS}/NAME{UPDATE}"
            return error_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message)
        return found

    def head_check(target_of: Callable[[HttpRequest], _Target | Response]) -> HeadCheck:
        """The route's head check: `target_of`'s refusal, or the pace's if the declared body is large."""

        def check(request: HttpRequest) -> Response | None:
            found = target_of(request)
            if isinstance(found, Response):
                return found
            wait = pace.wait(int(request.headers.get("Content-Length", "0")))  # as the transport checked it
            return busy(wait) if wait else None

        return check

    # Applying, and answering.

    async def is_new(room: Room) -> bool:
        """Whether writing to `room` creates its document: nothing stored or accepted for it, nobody in it."""
        stored = await store.documents(room.name)  # first: what happens in the room meanwhile is seen
        return not stored and not room.size and not room.peers

    async def diffed(room: Room, new: str) -> TextChange:
        """What makes `room`'s text read `new` (`replaced_text`), worked out in a thread."""
        async with texts:  # the copy is taken inside: one waiting for a thread holds none
            current = room.diff(EMPTY_STATE_VECTOR)  # bytes, taken on the loop: the room's Doc is the loop's
            return await asyncio.to_thread(replaced_text, current, new)

    async def written(
        to: _Target,
        change: Callable[[Room], Awaitable[bytes]],
        size: int,
        *,
        theirs: bool = True,
        turn: AsyncExitStack | None = None,
    ) -> bytes | Response:
        """Apply the update `change(room)` makes to document `to.name` (`Rooms.write`): the state vector after
        it, or the answer saying why not. `size`: the body's, for the pace. `theirs`: the update is the
        client's (refused: its fault, 400), not one the server made (refused: a bug, 500). `turn`: where the
        document's turn is entered, held until the caller leaves it (None: none is taken)."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                if turn is not None:
                    await turn.enter_async_context(rooms.turn(to.name))
                wait = pace.take(size)
                if wait:
                    return busy(wait)
                return await rooms.write(to.name, to.writer, change)
        except CollabError as error:
            return refusal(to.name, error, theirs)
        except TimeoutError:
            message = (
                f"not written: the change was not applied within {WRITE_TIMEOUT:g} s"
                " (others of this document before it, or the store failing)"
            )
            return unavailable(message, applied=False)

    def refusal(name: str, error: CollabError, theirs: bool) -> Response:
        """The answer to a write refused: an update refused as a client's would be is counted and logged as a
        client's is; a change of the server's own that does not apply is a bug (500, logged)."""
        if isinstance(error, InvalidUpdateError) and not theirs:
            logger.error("a text's own change does not apply to its document", extra=fields(room=name), exc_info=error)
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (the server logged it)")
        match error:
            case ProtocolError() | LimitError():  # refused, too large, or busy (being deleted or renamed)
                metrics.rejected.inc(metric_label(error))
                logger.warning("refused a write", extra=fields(room=name, reason=str(error)))
                message = str(error)
            case CorruptDocumentError():
                message = f"document cannot be read: {error}"
            case StorageError():
                message = f"document temporarily unavailable: {error}"
            case _:
                message = str(error)
        status = http_status_for(error)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            return unavailable(message, applied=False)
        return error_response(status, message)

    def busy(wait: float) -> Response:
        message = f"large writes are paced ({LARGE_WRITE_RATE // 2**20} MiB/s): try again in {math.ceil(wait)} s"
        return unavailable(message, applied=False, retry_after=wait)

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
            return unavailable(message, applied=True)
        answer = {"name": name, "state_vector": base64.b64encode(state).decode(), "size": infos[0].size if infos else 0}
        return json_response(answer, HTTPStatus.CREATED if created else HTTPStatus.OK)

    # The routes.

    async def create_document(request: HttpRequest) -> Response:
        to = create_target(request)
        if isinstance(to, Response):
            return to
        binary = _content_type(request) == OCTET_STREAM
        try:
            initial = "" if binary else _utf8(request.body)
        except ValueError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))

        async def change(room: Room) -> bytes:
            if not await is_new(room):
                raise AlreadyExistsError.for_name(to.name)
            if not request.body:
                return EMPTY_UPDATE
            return request.body if binary else (await diffed(room, initial)).update  # a new one takes any text

        async with AsyncExitStack() as turn:  # held until it is stored: a creation after it finds it
            state = await written(to, change, len(request.body), theirs=binary, turn=turn)
            return state if isinstance(state, Response) else await answered(to.name, state, created=True)

    async def update_document(request: HttpRequest) -> Response:
        to = update_target(request)
        if isinstance(to, Response):
            return to
        if not request.body:
            return error_response(HTTPStatus.BAD_REQUEST, "no update: the body is empty")

        async def change(room: Room) -> bytes:
            return request.body

        state = await written(to, change, len(request.body))  # no turn: an update merges as it is
        return state if isinstance(state, Response) else await answered(to.name, state, created=False)

    async def replace_text(request: HttpRequest) -> Response:
        to = text_target(request)
        if isinstance(to, Response):
            return to
        try:
            new = _utf8(request.body)
        except ValueError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        created, cannot = False, ""

        async def change(room: Room) -> bytes:
            nonlocal created, cannot
            created = await is_new(room)
            made = await diffed(room, new)
            cannot = made.refusal
            return made.update

        async with AsyncExitStack() as turn:  # held until it is stored: the next PUT diffs against this one
            state = await written(to, change, len(request.body), theirs=False, turn=turn)
            if isinstance(state, Response):
                return state
            if cannot:  # nothing was changed
                return error_response(HTTPStatus.CONFLICT, f"document {to.name!r} cannot take a text: {cannot}")
            return await answered(to.name, state, created)

    router.route(DOCS, create_document, methods=("POST",), body=max_body, check=head_check(create_target))
    router.route(
        DOCS + "/", update_document, methods=("POST",), body=max_body, suffix=UPDATE, check=head_check(update_target)
    )
    router.route(DOCS + "/", replace_text, methods=("PUT",), body=max_body, check=head_check(text_target))


def unavailable(message: str, *, applied: bool, retry_after: float = 0.0) -> Response:
    """A 503 that says whether the change took effect (`applied`), and when to try again (`Retry-After`)."""
    response = json_response({"error": message, "applied": applied}, HTTPStatus.SERVICE_UNAVAILABLE)
    if retry_after:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


def replaced_text(current: bytes, new: str) -> TextChange:
    """The update that makes the `content` text of document `current` (a whole update, checked) read `new`: the
    smallest edits `textdiff` finds, made by a client id the document has not used; `EMPTY_UPDATE` if it reads
    so already. Refused, saying why, if `content` is a map, XML or an array, or holds embedded objects.

    No event loop: run it in a thread (it builds the document, and a diff takes up to about a second).
    """
    doc = doc_from_updates([current], client_id=fresh_client_id(current))
    text = doc.get(CONTENT_ROOT, type=Text)
    chunks = text.diff()
    if not any(isinstance(content, str) for content, _ in chunks):  # empty, or another type viewed as a text
        root = typed_roots(current).get(CONTENT_ROOT)
        if root is not None and not isinstance(root, Text):
            return TextChange(EMPTY_UPDATE, f"its {CONTENT_ROOT!r} is {with_article(type(root))}, not a text")
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
