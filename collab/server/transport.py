"""collab's own transport: an `asyncio.Protocol` per TCP connection, driving websockets' sans-I/O protocol.

websockets parses and builds the WebSocket protocol (`websockets.server.ServerProtocol`:
`receive_data`, `events_received`, `data_to_send`, `send_close`, `send_ping`, `accept`,
`send_response`); the rules of a y-websocket connection live in `collab.sync.connection`; this module
only moves bytes between them and the socket and keeps the timers. Per connection, in order:

1. The request head is read up to its blank line and checked (`http.head.check_head`): websockets
   answers a body, a pipelined request or a malformed line with silence or a failed assertion, so
   what it would not handle well is answered here (400, 404, 405, 411, 413, 431, 505) and the connection
   half-closed. A head that passes goes to websockets' parser (without the `Content-Length` of a body).
2. A plain request is answered by the router (`collab.http`), then the connection closes. A route that
   takes a body gets it whole first, exactly `Content-Length` bytes, read only once the origin check and
   the route's head check (`Router.check`: the token) have passed, and `100 Continue` is sent only then;
   a refusal goes out without reading any of it. Bodies held at once (being read or answered) are bounded
   in bytes (`BODY_BUDGET` largest messages) and count under `--max-connections`: past either, 503 with
   `Retry-After` before reading. A body stalled for `--handshake-timeout`, or arriving slower than
   `BODY_RATE` after it, is 408. An upgrade is accepted at once, in the same callback (no task: see the
   connect rate in docs/benchmarks.md).
3. The connection is admitted (room name, token) and joins its room: at once when the room is in
   memory, else after a load, while reading waits.
4. Each binary message goes to `Connection.receive`. When it says to wait (the rate limit), reading
   stops for that long (`pause_reading`): the kernel's buffers fill and TCP slows the sender.
5. A close, from either side or from an error, runs the close handshake; a client that does not
   complete it within `CLOSE_TIMEOUT` is cut.

Data frames do not go through websockets' send_binary(): collab owns the transport, and each message is
framed once for all its recipients (`outbox.server_frame`) and each connection's frames of one loop
turn go out in one write (`outbox.Outbox`). Idle connections cost no coroutine and no task: a
server-wide keepalive (`Endpoint.keepalive`) pings the silent ones.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import math
from collections.abc import Coroutine, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from websockets.datastructures import MultipleValuesError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ..auth import TOKEN_SUBPROTOCOL_PREFIX, Access, Grant
from ..errors import CollabError, ServerBusyError, close_reason_for
from ..http.head import MAX_HEAD, Head, check_head
from ..http.router import OriginPolicy, Router, respond
from ..logs import fields
from ..sync.connection import Connection, ConnectionRules
from .metrics import ServerMetrics
from .outbox import Backlogs, Outbox, server_frame
from .rooms import Rooms
from .sessions import Sessions

if TYPE_CHECKING:
    from ..sync.room import Room

__all__ = ["CLOSE_TIMEOUT", "Endpoint", "WebSocketConnection"]

logger = logging.getLogger("collab.server")

CLOSE_TIMEOUT = 5.0
"""Seconds a client has to complete the close handshake before its connection is cut."""

SUBPROTOCOL = Subprotocol("collab")
# Close codes a peer may end with without that being worth a warning.
NORMAL_CLOSURES = (1000, 1001, 1005)
_OPEN = State.OPEN
_BINARY, _TEXT, _CONT, _CLOSE = Opcode.BINARY, Opcode.TEXT, Opcode.CONT, Opcode.CLOSE

# Where a connection is before it is a WebSocket connection (`WebSocketConnection._head`).
_ANSWERING = b"answering"
"""A plain request's head was read; its response is being prepared; what the client sends meanwhile is dropped."""
_ANSWERED = b"answered"
"""A response other than 101 was sent (or the head refused): nothing more is read."""

BODY_RATE = 64 * 1024
"""Bytes per second a request body must arrive at, on average, once `--handshake-timeout` has passed: a 64 MiB
body may take 17 minutes, but only while it keeps coming (see `_Body.deadline`)."""
BODY_BUDGET = 4
"""Bodies of `--max-message-size` bytes the server holds at once, counted from the head that declares one
(its whole length, before any of it arrives) to its answer: 256 MiB at the defaults. Past it, a request with
a body is refused (503) before any of it is read."""
TIMER_SLACK = 0.001
"""Seconds early asyncio may run a timer (its clock resolution, rounded up): a deadline that close is reached."""
RETRY_AFTER = 5
"""Seconds a request refused for the body budget or the connection limit is told to wait (`Retry-After`)."""
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Body:
    """A request whose body is being read (`WebSocketConnection._head` meanwhile): what came of it so far."""

    __slots__ = ("_data", "heard", "length", "request", "size", "started")

    def __init__(self, request: Request, length: int, received: bytes, now: float) -> None:
        self.request = request
        self.length = length
        # BytesIO, not a bytearray: getvalue() hands over its buffer, where bytes(bytearray) would copy it.
        self._data = io.BytesIO()
        self.size = 0
        """Bytes of it received."""
        self.started = self.heard = now
        """When reading it began, and when the last of it arrived (event-loop time)."""
        self.take(received, now)  # what follows the body (a pipelined request) is dropped

    def take(self, data: bytes, now: float) -> bool:
        """Add what arrived of the body at `now`; whether it is complete."""
        if data:
            needed = self.length - self.size
            self.size += self._data.write(data[:needed] if len(data) > needed else data)
            self.heard = now
        return self.size == self.length

    def value(self) -> bytes:
        """The body, once complete (no copy)."""
        return self._data.getvalue()

    def deadline(self, idle: float) -> float:
        """When it is late: `idle` seconds after the last bytes came, or once it arrives slower than `BODY_RATE`
        on average after its first `idle` seconds, whichever is first."""
        return min(self.heard + idle, self.started + idle + self.size / BODY_RATE)

    def received(self) -> str:
        return f"{self.size} of {self.length} bytes received"


class CollabProtocol(ServerProtocol):
    """websockets' server protocol with collab's subprotocol choice (its documented override point)."""

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        """Browsers fail a connection whose offered subprotocols are all declined: accept one."""
        if SUBPROTOCOL in subprotocols:
            return SUBPROTOCOL
        return next((p for p in subprotocols if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)


class Endpoint:
    """What every connection of one listening socket shares, and the protocol factory for it."""

    def __init__(
        self,
        *,
        access: Access,
        origins: OriginPolicy,
        router: Router,
        rooms: Rooms,
        sessions: Sessions,
        metrics: ServerMetrics,
        rules: ConnectionRules,
        backlogs: Backlogs,
        max_message_size: int,
        max_connections: int,
        handshake_timeout: float,
    ) -> None:
        self.access = access
        self.origins = origins
        self.router = router
        self.rooms = rooms
        self.sessions = sessions
        self.metrics = metrics
        self.rules = rules
        self.backlogs = backlogs
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.outbox = Outbox()
        self.port = 0
        self.connections: set[WebSocketConnection] = set()
        """Every TCP connection, from accept to close."""
        self.peers: set[WebSocketConnection] = set()
        """The WebSocket connections, from the 101 response to close."""
        self.bodies: dict[WebSocketConnection, int] = {}
        """The connections holding a request body (being read, or answered), and its length: they count
        under `max_connections` as `peers` do."""
        self.body_bytes = 0
        """The lengths in `bodies`, summed: at most `body_budget`."""
        self.body_budget = BODY_BUDGET * max_message_size
        self.tasks: set[asyncio.Task[None]] = set()
        """HTTP answers and room loads in flight."""
        self._ids = itertools.count(1)
        self._all_closed: asyncio.Future[None] | None = None
        self.closing = False
        """Set when the server shuts down."""

    def __call__(self) -> WebSocketConnection:
        return WebSocketConnection(self)

    def next_id(self) -> str:
        return str(next(self._ids))

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def keepalive(self, now: float, interval: float) -> None:
        """Ping the connections silent for `interval`; cut those that did not answer the last ping."""
        silent_since = now - interval
        for peer in list(self.peers):
            if peer.pinged_at and peer.last_heard >= peer.pinged_at:
                peer.pinged_at = 0.0  # heard from since the ping (its pong, or anything else): alive
            if peer.pinged_at and peer.pinged_at <= silent_since:
                logger.info("no answer to a keepalive ping, dropping the connection", extra=fields(conn=peer.id))
                peer.abort()
            elif peer.last_heard < silent_since and not peer.pinged_at:
                peer.ping(now)

    def hold_body(self, connection: WebSocketConnection, length: int) -> Response | None:
        """Let `connection` read a body of `length` bytes (until `release_body`), or the 503 refusing it: the
        connection limit (WebSocket connections and bodies together) or the body budget is reached."""
        if len(self.peers) + len(self.bodies) >= self.max_connections:
            label, reason = "ServerBusyError", f"server is at its limit of {self.max_connections} connections"
        elif self.body_bytes + length > self.body_budget:
            label = "body_budget"
            reason = f"the request bodies under way fill the server's budget of {self.body_budget} bytes"
        else:
            self.bodies[connection] = length
            self.body_bytes += length
            return None
        self.metrics.rejected.inc(label)
        logger.info("refused a request body", extra=fields(reason=reason, length=length))
        return respond(
            HTTPStatus.SERVICE_UNAVAILABLE, f"{reason}: try again\n", headers={"Retry-After": str(RETRY_AFTER)}
        )

    def release_body(self, connection: WebSocketConnection) -> None:
        """The body `hold_body` let `connection` read is answered, or its connection gone."""
        self.body_bytes -= self.bodies.pop(connection, 0)

    def lost(self, connection: WebSocketConnection) -> None:
        self.connections.discard(connection)
        self.peers.discard(connection)
        self.release_body(connection)
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def shutdown(self, timeout: float) -> None:
        """Close every connection (1001), waiting up to `timeout` for the close handshakes and the HTTP answers
        under way; cut the rest. Requests that arrive meanwhile are answered 503."""
        self.closing = True
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            for connection in list(self.connections):
                connection.shutdown()
            try:
                async with asyncio.timeout(timeout):
                    await self._all_closed
            except TimeoutError:
                for connection in list(self.connections):
                    connection.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class WebSocketConnection(asyncio.Protocol):
    """One TCP connection: an HTTP request, or a WebSocket connection to a room (see the module docstring).

    The relay's hot path: `_queue` and `flush` (profiled in docs/benchmarks.md). A connection that
    leaves too much unread for too long is dropped (`Backlogs` has the rule): it resyncs when it reconnects.
    """

    __slots__ = (
        "_endpoint",
        "_error",
        "_fragments",
        "_head",
        "_marks",
        "_out",
        "_queued",
        "_timer",
        "_transport",
        "_written",
        "_ws",
        "conn",
        "dropped",
        "id",
        "last_heard",
        "pinged_at",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._ws = CollabProtocol(max_size=endpoint.max_message_size)
        self._head: bytearray | _Body | bytes | None = bytearray()
        """The request head so far; then its body being read, `_ANSWERING` or `_ANSWERED`; None once a WebSocket
        connection."""
        self.conn: Connection | None = None
        """The y-websocket rules of this connection, from the 101 response on."""
        self.id = ""
        self._queued: list[bytes] | None = None
        """Messages received while joining or held back by the rate limit, handled when that ends."""
        self._fragments: tuple[bool, bytearray] | None = None
        """A fragmented message being received: whether it is text, and its data so far."""
        self._timer: asyncio.TimerHandle | None = None
        """The one timer a connection needs at a time: handshake timeout, end of a hold, close timeout."""
        self._error: BaseException | None = None
        self.last_heard = 0.0
        """Event-loop time of the last bytes received (pushed ahead while reading is held back)."""
        self.pinged_at = 0.0
        """When the unanswered keepalive ping was sent; 0.0 when none is."""
        self.dropped = False
        """Set for a client too slow to keep up: nothing more is written to it but the close."""
        self._out: list[bytes] | None = None
        """Frames queued this turn of the loop, or None when nothing is."""
        self._written = 0
        """Bytes handed to the transport since this connection's backlog began (counted only while it has one)."""
        self._marks: list[tuple[float, int]] | None = None
        """While bytes wait unsent: (time, `_written` then), one per sweep, the oldest at most a grace old."""

    @property
    def grant(self) -> Grant | None:
        """For `Sessions`: what the connection's token allows."""
        return self.conn.grant if self.conn is not None else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport's methods without deriving from it.
        self._transport = cast(asyncio.Transport, transport)
        endpoint = self._endpoint
        endpoint.connections.add(self)
        loop = asyncio.get_running_loop()
        self.last_heard = loop.time()
        self._timer = loop.call_later(endpoint.handshake_timeout, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        head = self._head
        if head is None:
            now = asyncio.get_running_loop().time()
            if now > self.last_heard:  # not while held back, when it is ahead (see _handle)
                self.last_heard = now  # any bytes: a client uploading one big message is not silent
            ws = self._ws
            ws.receive_data(data)
            events = ws.events_received()
            if events:
                self._frames(events, now)
            if ws.state is not _OPEN and self.conn is not None:
                self.conn.closing = True  # websockets refused a frame (1002, 1009) or answered a close
            self._write_protocol_data()  # pongs, the close handshake, a refused frame's close
        elif isinstance(head, bytearray):
            self._read_head(head, data)
        elif isinstance(head, _Body) and head.take(data, asyncio.get_running_loop().time()):
            self._answer_with(head.request, head.value())
        # else: a plain request being answered, or answered: what follows the head (and its body) is dropped

    def eof_received(self) -> bool | None:
        if self._head is _ANSWERING:
            return True  # a client that half-closed after its request (nc -N) still gets the answer
        if isinstance(self._head, _Body):
            body = self._head
            self._respond(respond(HTTPStatus.BAD_REQUEST, f"the body ended early: {body.received()}\n"))
            return True
        if self._head is None:
            self._ws.receive_eof()
            self._write_protocol_data()
        return None  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._out = self._queued = None
        endpoint = self._endpoint
        endpoint.lost(self)
        conn = self.conn
        if conn is not None:
            conn.closing = True
            endpoint.sessions.discard(self)
            if conn.room is not None:
                endpoint.rooms.leave(conn.room, conn)
            self._log_close()
            conn.room = None  # Sessions may keep this connection until its token expires: not the room

    # The request head and the handshake.

    def _read_head(self, head: bytearray, data: bytes) -> None:
        start = max(0, len(head) - 3)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(head) > MAX_HEAD:
                self._refuse(respond(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n"))
            return
        end += 4
        checked = check_head(bytes(head[:end]), self._endpoint.router)  # or the refusal to answer instead
        if isinstance(checked, Response):
            self._refuse(checked)
            return
        if checked.upgrade and len(head) > end:
            # A client must wait for the 101 before sending frames (RFC 6455 section 4.1).
            self._refuse(respond(HTTPStatus.BAD_REQUEST, "data sent before the handshake response\n"))
            return
        self._head = _ANSWERING
        if self._timer is not None:  # the head is in: answering it is not the handshake's time
            self._timer.cancel()
            self._timer = None
        ws = self._ws
        ws.receive_data(checked.parsed)
        requests = [event for event in ws.events_received() if isinstance(event, Request)]
        if not requests:  # websockets could not parse what check_head let through: answer, do not just hang up
            ws.data_to_send()  # its end of stream, without an answer
            self._refuse(respond(HTTPStatus.BAD_REQUEST, "malformed request\n"))
            return
        request = requests[0]
        if checked.body:
            request.headers["Content-Length"] = str(checked.body)  # as sent (websockets was shown none)
        self._request(request, checked, bytes(head[end:]))

    def _request(self, request: Request, checked: Head, received: bytes) -> None:
        """Answer a request whose head passed: refused (shutdown, origin, its route's head check, the body
        budget) before any of its body is read; else its body read, then handled; or accept its upgrade.
        `received`: what came after its head so far."""
        endpoint = self._endpoint
        try:
            origin = request.headers.get("Origin")
            allowed = endpoint.origins.allows(origin, request.headers.get("Host"), endpoint.port)
        except MultipleValuesError as error:  # a header read with .get() sent twice: the client's fault
            self._respond(respond(HTTPStatus.BAD_REQUEST, f"duplicated header: {error}\n"))
            return
        if endpoint.closing:
            self._respond(respond(HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n"))
        elif not allowed:
            endpoint.metrics.auth_failures.inc("origin")
            logger.warning("refused a request from another origin", extra=fields(origin=origin, path=_logged(request)))
            self._respond(respond(HTTPStatus.FORBIDDEN, "origin not allowed (see --allowed-origin)\n"))
        elif checked.upgrade:
            response = self._ws.accept(request)
            if response.status_code != 101:
                self._respond(response)
            else:
                self._ws.send_response(response)
                self._write_protocol_data()
                self._open(request)
        elif (refusal := self._refusal(request, checked.body)) is not None:
            self._respond(refusal)  # what the client sends of its body meanwhile is dropped, never read
        elif checked.body:
            self._read_body(request, checked.body, received, checked.expect_continue)
        else:
            self._answer_with(request, b"")

    def _refusal(self, request: Request, length: int) -> Response | None:
        """What refuses a plain request before its body of `length` bytes is read: its route's head check
        (`Router.check`), or the body budget and connection limit (`Endpoint.hold_body`); None if it goes on."""
        try:
            refusal = self._endpoint.router.check(request)
        except MultipleValuesError as error:  # a header the check reads with .get() sent twice
            return respond(HTTPStatus.BAD_REQUEST, f"duplicated header: {error}\n")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # a bug: this request alone fails
            logger.exception("HTTP head check failed", extra=fields(path=_logged(request)))
            return respond(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        if refusal is None and length:
            refusal = self._endpoint.hold_body(self, length)
        return refusal

    def _read_body(self, request: Request, length: int, received: bytes, expect_continue: bool) -> None:
        """Read the body of `request` until it is whole (`data_received`), or answer 408 if it stalls or comes
        too slowly (`_Body.deadline`). `expect_continue`: the client waits for "100 Continue" to send it."""
        loop = asyncio.get_running_loop()
        body = _Body(request, length, received, loop.time())
        if body.size == length:
            self._answer_with(request, body.value())
            return
        self._head = body
        assert self._transport is not None
        if expect_continue and not body.size:
            self._transport.write(CONTINUE)
        self._timer = loop.call_at(body.deadline(self._endpoint.handshake_timeout), self._body_late)

    def _body_late(self) -> None:
        """At the body's deadline as it was when this was scheduled: 408 if it is still late, else wait on."""
        self._timer = None
        body = self._head
        if not isinstance(body, _Body):
            return
        idle = self._endpoint.handshake_timeout
        loop = asyncio.get_running_loop()
        now, deadline = loop.time(), body.deadline(idle)
        if deadline - now > TIMER_SLACK:  # more came since
            self._timer = loop.call_at(deadline, self._body_late)
            return
        if now + TIMER_SLACK >= body.heard + idle:
            why = f"nothing of the body came for {idle:g} s"
        else:
            why = f"the body comes slower than {BODY_RATE // 1024} KiB/s"
        logger.info("request body not received in time", extra=fields(path=_logged(body.request), reason=why))
        self._respond(respond(HTTPStatus.REQUEST_TIMEOUT, f"{why}: {body.received()}\n"))

    def _answer_with(self, request: Request, body: bytes) -> None:
        """Hand a request, and its body, to the router; what the client sends from now on is dropped."""
        self._head = _ANSWERING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._endpoint.spawn(self._answer(request, body), name="http")

    async def _answer(self, request: Request, body: bytes) -> None:
        try:
            response = await self._endpoint.router.handle(request, body)
        except MultipleValuesError as error:
            response = respond(HTTPStatus.BAD_REQUEST, f"duplicated header: {error}\n")
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # a bug, or a pycrdt panic while rendering: this request alone fails
            logger.exception("HTTP handler failed", extra=fields(path=_logged(request)))
            response = respond(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        self._respond(response)

    def _respond(self, response: Response) -> None:
        """Send a response other than 101; the connection then closes."""
        if self._transport is None or self._head is _ANSWERED:
            return
        self._head = _ANSWERED
        self._endpoint.release_body(self)
        self._ws.send_response(response)
        self._write_protocol_data()

    def _refuse(self, response: Response) -> None:
        """Answer a head websockets is not shown, then half-close, as `_respond` does for one it parsed."""
        assert self._transport is not None
        self._head = _ANSWERED
        reason = response.body.decode().strip()
        logger.info("refused a request", extra=fields(status=response.status_code, reason=reason))
        self._transport.write(response.serialize())
        self._end_of_data()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._transport is not None and self._head is not None:
            logger.info("handshake not completed in time, dropping the connection")
            self._transport.abort()

    # Opening: admission, then the room.

    def _open(self, request: Request) -> None:
        endpoint = self._endpoint
        self._head = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.id = endpoint.next_id()
        conn = self.conn = Connection(self.id, self._queue, endpoint.rules, endpoint.metrics, self.close)
        endpoint.peers.add(self)
        try:
            if len(endpoint.peers) + len(endpoint.bodies) > endpoint.max_connections:
                raise ServerBusyError(f"server is at its limit of {endpoint.max_connections} connections")
            offered = [
                p.strip() for header in request.headers.get_all("Sec-WebSocket-Protocol") for p in header.split(",")
            ]
            name = conn.admit(request.path, offered, endpoint.access)
            if conn.grant is not None:
                endpoint.sessions.add(self, name)  # closed at expiry or revocation
            room = endpoint.rooms.join_loaded(name, conn)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # a bug or a pycrdt panic included: that connection alone closes
            self.fail(error)
            return
        if room is not None:
            self._joined(room)
            return
        self.last_heard = math.inf  # not silent, just not read while its room loads (see keepalive)
        self._hold_reading()
        endpoint.spawn(self._join(name), name=f"join {name}")

    async def _join(self, name: str) -> None:
        conn = self.conn
        assert conn is not None
        try:
            room = await self._endpoint.rooms.join(name, conn)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # StorageError, ServerBusyError, a pycrdt panic while loading
            self.fail(error)
            return
        if self._transport is None or conn.closing:  # gone while the room loaded
            self._endpoint.rooms.leave(room, conn)
            return
        self._joined(room)
        self._drain()

    def _joined(self, room: Room) -> None:
        conn = self.conn
        assert conn is not None
        self.last_heard = now = asyncio.get_running_loop().time()
        conn.joined(room, now)
        if logger.isEnabledFor(logging.DEBUG):
            peer = self._transport.get_extra_info("peername") if self._transport else None
            logger.debug("joined", extra=fields(conn=self.id, room=room.name, peer=peer, read_only=conn.read_only))

    # Receiving.

    def _frames(self, events: Sequence[Request | Response | Frame], now: float) -> None:
        conn = self.conn
        assert conn is not None
        # Once the connection is open, websockets' events are frames (received frames hold bytes).
        for frame in cast("list[Frame]", events):
            opcode = frame.opcode
            if opcode is _BINARY or opcode is _TEXT or opcode is _CONT:
                # Not the protocol's state: websockets has parsed every frame of this read, so a client's
                # close after its last update has already moved it on; those updates still count.
                if conn.closing:
                    continue  # after a close was decided or received: discarded
                if not frame.fin or opcode is _CONT:
                    message = self._reassemble(frame)
                    if message is None:
                        continue
                    text, data = message
                else:
                    text, data = opcode is _TEXT, cast(bytes, frame.data)
                if text:
                    self._handle_text()
                elif self._queued is not None:
                    self._queued.append(data)
                else:
                    self._handle(data, now)
            elif opcode is _CLOSE:
                self._handle_held()  # what came before the close counts, held back or not
                conn.closing = True  # websockets has answered it; nothing more goes out

    def _reassemble(self, frame: Frame) -> tuple[bool, bytes] | None:
        """A fragmented message's frames, joined (websockets has checked their order and total size)."""
        if frame.opcode is not _CONT:
            self._fragments = (frame.opcode is _TEXT, bytearray(frame.data))
            return None
        assert self._fragments is not None
        text, data = self._fragments
        data += frame.data
        if not frame.fin:
            return None
        self._fragments = None
        return text, bytes(data)

    def _handle(self, message: bytes, now: float, hold: bool = True) -> bool:
        """Hand one message to the rules; True when reading must stop (held back, or closing).

        `hold=False`: the rate limit's wait is ignored (the connection is closing).
        """
        conn = self.conn
        assert conn is not None
        try:
            wait = conn.receive(message, now)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # and so pycrdt's PanicException (a BaseException) on a Rust panic
            self.fail(error)
            return True
        if wait and hold:
            self._hold_reading()
            self.last_heard = now + wait  # silence while we do not listen is no sign of death
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(wait, self._drain)
            return True
        return False

    def _handle_held(self) -> None:
        """Handle at once what waits in `_queued` (the connection is closing: there is no later)."""
        queued, self._queued = self._queued, None
        if queued:
            now = asyncio.get_running_loop().time()
            for message in queued:
                self._handle(message, now, hold=False)

    def _handle_text(self) -> None:
        assert self.conn is not None
        try:
            self.conn.receive_text()
        except CollabError as error:
            self.fail(error)

    def _hold_reading(self) -> None:
        """Read nothing more for now: what already arrived waits in `_queued`, TCP holds the rest."""
        self._queued = []
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def _drain(self) -> None:
        """Handle, in order, what was received while joining or held back; then read again."""
        self._timer = None
        queued, self._queued = self._queued, None
        if queued is None or self._transport is None:
            return
        now = asyncio.get_running_loop().time()
        for index, message in enumerate(queued):
            if self._handle(message, now):
                if self._queued is not None:  # held back again: the rest waits its turn
                    self._queued[:0] = queued[index + 1 :]
                return
        if not self._transport.is_reading():
            self._transport.resume_reading()

    # Sending.

    def _queue(self, message: bytes) -> None:
        """For the connection's rules and its room: queue one message, written at the end of this loop turn."""
        if self.dropped:
            return
        out = self._out
        if out is None:
            self._out = out = []
            self._endpoint.outbox.add(self)
        out.append(server_frame(message))
        self._endpoint.metrics.count_sent(message)

    def flush(self) -> None:
        """Write what is queued now; dropped if the connection is no longer open, as `_queue` would."""
        out, self._out = self._out, None
        transport = self._transport
        if not out or self.dropped or transport is None or self._ws.state is not _OPEN:
            return
        transport.writelines(out)
        buffered = transport.get_write_buffer_size()
        if buffered:  # rarely: the kernel usually takes everything at once
            self._backlogged(buffered, sum(map(len, out)))
        elif self._marks is not None:
            self._marks = None  # it caught up: nothing waits, however long it waited before

    def _write_protocol_data(self) -> None:
        """Write what websockets has queued: a response, pongs, close frames, or the end of the stream."""
        transport = self._transport
        for data in self._ws.data_to_send():
            if transport is None:
                return
            if data:
                transport.write(data)
            else:
                self._end_of_data()

    def _end_of_data(self) -> None:
        """Half-close (the client then closes its side), and cut the connection if it does not in time."""
        transport = self._transport
        assert transport is not None
        if not transport.is_reading():
            transport.resume_reading()  # to see the client's end of the stream
        if transport.can_write_eof():
            transport.write_eof()  # not close(): unread bytes of a body would turn it into a reset
        else:
            transport.close()
        self._arm_close_timer()

    def ping(self, now: float) -> None:
        """A keepalive ping; `Endpoint.keepalive` cuts the connection if nothing is heard before the next."""
        if self._ws.state is not _OPEN:
            return
        self.pinged_at = now
        self._ws.send_ping(b"")
        self._write_protocol_data()

    # Closing.

    def fail(self, error: BaseException) -> None:
        """Close with the code `error` earns (an auth failure is explained in an auth message first)."""
        if self._error is None:
            self._error = error
        reason = self.conn.close_for(error) if self.conn is not None else close_reason_for(error)
        self.close(reason.code, reason.reason)

    def close(self, code: int, reason: str, *, keep_received: bool = False) -> None:
        """Start the close handshake: what is queued goes out first, then the close frame.

        `keep_received`: first handle the messages held back by the rate limit (a shutdown); else, as after
        an error or for an expired token, they are dropped.
        """
        ws = self._ws
        transport = self._transport
        if transport is None or ws.state is not _OPEN:
            return
        if keep_received:
            self._handle_held()
        self.flush()
        if self.conn is not None:
            self.conn.closing = True
        ws.send_close(code, reason)
        self._write_protocol_data()
        self._queued = None
        if not transport.is_reading():
            transport.resume_reading()  # to read the client's answering close frame
        self._arm_close_timer()

    def shutdown(self) -> None:
        """For a server shutdown: a WebSocket connection is closed (1001), an answered request's closed once
        its answer is out, anything else cut."""
        if self._head is None:
            self.close(1001, "server shutting down", keep_received=True)
        elif self._transport is not None:
            if self._head is _ANSWERED:
                self._transport.close()
            elif self._head is not _ANSWERING:  # an answer under way is awaited (Endpoint.shutdown)
                self._transport.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm_close_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            level = logging.INFO if self._head is None else logging.DEBUG  # a WebSocket, or a plain request
            logger.log(level, "no close handshake from the client, cutting the connection", extra=fields(conn=self.id))
            self._transport.abort()

    # The slow-client rule (see `Backlogs`).

    def _backlogged(self, buffered: int, wrote: int) -> None:
        """Bytes wait unsent after a flush: track them, and drop the connection if `Backlogs` says so."""
        now = asyncio.get_running_loop().time()
        backlogs = self._endpoint.backlogs
        if self._marks is None:
            self._written = buffered  # count from here: everything buffered was written by now
            self._marks = [(now, buffered)]
            backlogs.peers.add(self)
        else:
            self._written += wrote
        if backlogs.too_slow(self, buffered, now):
            self._drop_slow_client()

    def check_backlog(self, now: float) -> bool:
        """For `Backlogs.sweep`: note how much was written by `now`; False once nothing waits any more."""
        marks = self._marks
        transport = self._transport
        if marks is None or self.dropped or transport is None or self._ws.state is not _OPEN:
            self._marks = None
            return False
        buffered = transport.get_write_buffer_size()
        if not buffered:
            self._marks = None
            return False
        marks.append((now, self._written))
        backlogs = self._endpoint.backlogs
        grace_ago = now - backlogs.grace
        while len(marks) > 1 and marks[1][0] <= grace_ago:
            del marks[0]
        if backlogs.too_slow(self, buffered, now):
            self._drop_slow_client()
            return False
        return True

    def unread_for(self, since: float, buffered: int) -> int:
        """Bytes written at or before `since` that the client has still not read (0 if unknown)."""
        marks = self._marks
        if not marks or marks[0][0] > since:
            return 0
        sent = self._written - buffered
        return max(0, marks[0][1] - sent)

    def _drop_slow_client(self) -> None:
        """Stop queueing for a client that does not keep up; it resyncs when it reconnects."""
        self.dropped = True
        self._marks = None
        backlogs = self._endpoint.backlogs
        self._endpoint.metrics.rejected.inc("slow_client")
        logger.warning(
            "closing a client that reads too slowly",
            extra=fields(conn=self.id, limit=backlogs.max_buffered, grace=backlogs.grace),
        )
        # The close frame waits behind the backlog; the close timer cuts a client that reads nothing.
        self.close(1013, "too slow: reconnect to resync")

    # Logging.

    def _log_close(self) -> None:
        conn = self.conn
        error = self._error
        where = {"conn": self.id, "room": conn.room.name if conn is not None and conn.room is not None else None}
        ws = self._ws
        ws.receive_eof()  # the connection is gone: websockets settles its close code
        closed = ws.close_exc
        sent, received = closed.sent, closed.rcvd
        if error is not None:
            code = close_reason_for(error).code
            if isinstance(error, CollabError):
                logger.warning("connection closed", extra=fields(**where, code=code, reason=str(error)))
            else:
                logger.error("unexpected error, connection closed", extra=fields(**where, code=code), exc_info=error)
        elif sent is not None and not closed.rcvd_then_sent and _refused_a_frame(closed.__cause__):
            # websockets refused a frame (too big, malformed) and closed with this code.
            logger.warning("connection closed", extra=fields(**where, code=sent.code, reason=sent.reason))
        elif sent is not None and not closed.rcvd_then_sent:  # collab closed it, and logged why
            logger.debug("connection closed", extra=fields(**where, code=sent.code))
        else:
            code = received.code if received is not None else 1006
            reason = received.reason if received is not None else ""
            level = logging.DEBUG if code in NORMAL_CLOSURES else logging.WARNING
            logger.log(level, "connection closed", extra=fields(**where, code=code, reason=reason))


def _refused_a_frame(cause: BaseException | None) -> bool:
    """Whether websockets' parser stopped on a frame it refused (not on the stream ending too early)."""
    return cause is not None and not isinstance(cause, EOFError)


def _logged(request: Request) -> str:
    """A request's path as logs show it: without its query, which may carry a token."""
    return request.path.partition("?")[0]
