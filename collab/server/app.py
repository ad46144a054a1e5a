"""The network edge: a `websockets` server, one ordered receive loop per connection.

A WebSocket upgrade to `/<room>` joins that room; a plain GET is answered over
HTTP on the same port by `self.http` (see `collab.http`). Before a connection
gets any document data it passes the limits (`--max-connections`, the room's
own) and, when access control is on, the token check, which `sessions` keeps
up for as long as it lives (expiry, revocation). Everything it sends is
then parsed (`protocol.parse_frame`) and handed to its room in order; any
`CollabError` closes that connection alone, with the code
`errors.close_reason_for` picks. `run()` adds signals and a graceful,
flushing shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import ssl
from collections.abc import Callable, Sequence
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..auth import TOKEN_SUBPROTOCOL_PREFIX, Access, token_from_subprotocols
from ..config import Settings
from ..errors import (
    AuthError,
    CollabError,
    ConfigError,
    LimitError,
    ProtocolError,
    ServerBusyError,
    StorageError,
    UnsupportedDataError,
    close_reason_for,
)
from ..http.api import install_api
from ..http.router import HttpRequest, OriginPolicy, Router, respond
from ..http.static import install_web
from ..logs import fields
from ..metrics import render
from ..store.history import Retention
from ..store.lockfile import DatabaseLock
from ..store.revocations import RevocationReader
from ..store.sqlite import SQLiteStore
from ..sync.limits import Throttle, bytes_cost, frame_cost
from ..sync.names import room_name_from_path
from ..sync.protocol import Auth, Message, SyncStep2, Update, parse_frame
from ..sync.room import EMPTY_UPDATE, Room
from .metrics import ServerMetrics
from .outbox import Backlogs, Outbox, WebSocketPeer, forget_handshake
from .rooms import Rooms
from .sessions import Sessions
from .transport import CollabConnection

__all__ = ["CollabServer", "run"]

logger = logging.getLogger("collab.server")

# Close codes a peer may end with without that being worth a warning.
NORMAL_CLOSURES = (1000, 1001, 1005)
SUBPROTOCOL = Subprotocol("collab")
READ_ONLY_NOTICE = "read-only access: your edits are not saved or shared"
READY_TIMEOUT = 2.0


class CollabServer:
    """collab's server: the store, the rooms and the listening socket."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.access = Access(settings.secret(), settings.public_key())
        self.origins = OriginPolicy(
            settings.allowed_origin, restrict_by_default=not self.access.enabled, tls=settings.certfile is not None
        )
        if (settings.certfile is None) != (settings.keyfile is None):
            raise ConfigError("TLS needs both --certfile and --keyfile")
        self.store = SQLiteStore(
            settings.db,
            commit_interval=settings.commit_interval,
            synchronous=settings.sqlite_synchronous,
            busy_timeout=settings.sqlite_busy_timeout,
            retention=Retention(
                recent_for=settings.history_recent,
                hourly_for=settings.history_hourly,
                daily_for=settings.history_daily,
            ),
        )
        self.lock = DatabaseLock(settings.db)
        self.metrics = ServerMetrics(self)
        self.rooms = Rooms(
            self.store,
            unload_after=settings.unload_after,
            compact_after=settings.compact_after,
            max_rooms=settings.max_rooms,
            max_room_connections=settings.max_room_connections,
            max_document_size=settings.max_document_size,
            rejected=self.metrics.rejected,
        )
        self.peers: set[WebSocketPeer] = set()
        # Above the largest document plus the largest message: a newcomer downloading the one while the
        # other is relayed to it is never over the ceiling (see Backlogs).
        ceiling = (settings.max_document_size or settings.max_message_size) + settings.max_message_size
        self._backlogs = Backlogs(settings.max_buffered, settings.slow_client_grace, ceiling + settings.max_buffered)
        self._sweeper: asyncio.Task[None] | None = None
        self._server: Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._outbox = Outbox()
        self.sessions = Sessions(self.access, RevocationReader(settings.db), self._end_session)
        self._closing: set[asyncio.Task[None]] = set()
        self.http = Router()
        self.http.route("/healthz", self._healthz)
        self.http.route("/readyz", self._readyz)
        self.http.route("/metrics", self._metrics)
        install_api(self.http, self.store, self.rooms, self.access, self.metrics)
        install_web(self.http)
        self.port = 0
        """The port listened on, known once started (useful with port 0)."""

    @property
    def scheme(self) -> str:
        return "wss" if self.settings.certfile else "ws"

    async def start(self) -> None:
        """Open the store, then listen; raises `StorageError` or `ConfigError` saying what is wrong."""
        tls = self._tls_context()
        self.lock.acquire()
        try:
            await self.store.start()
        except BaseException:
            self.lock.release()
            raise
        try:
            await self.sessions.start()  # revocations stored so far hold from the first connection on
        except BaseException:
            await self.store.close()
            self.lock.release()
            raise
        try:
            self._server = await serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                ssl=tls,
                process_request=self._process_request,
                create_connection=CollabConnection,  # checks each request head first (see collab.connection)
                select_subprotocol=self._select_subprotocol,
                max_size=self.settings.max_message_size,
                # One server-wide keepalive (_keepalive_forever) rather than a task per connection.
                ping_interval=None,
                open_timeout=self.settings.handshake_timeout,
                # Yjs updates are small and mostly incompressible; deflate would cost more CPU than it saves.
                compression=None,
            )
        except OSError as error:
            await self.store.close()
            self.lock.release()
            raise ConfigError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {error.strerror}"
            ) from error
        self.port = self._server.sockets[0].getsockname()[1]
        if self.settings.keepalive > 0:
            self._keepalive = asyncio.create_task(self._keepalive_forever(), name="collab-keepalive")
        self._sweeper = asyncio.create_task(self._sweep_backlogs_forever(), name="collab-slow-clients")
        self.lock.describe(
            url=f"{self.scheme}://{connectable_host(self.settings.host)}:{self.port}", auth=self.access.enabled
        )
        http = "https" if tls else "http"
        logger.info(
            "listening on %s://%s:%d",
            http,
            self.settings.host,
            self.port,
            extra=fields(database=self.settings.db, access_control=self.access.enabled),
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.certfile is None or self.settings.keyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.certfile, self.settings.keyfile)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"cannot load TLS certificate {self.settings.certfile}: {error}") from error
        return context

    async def stop(self) -> None:
        """Close every connection (1001), then make every accepted update durable."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        server.close(close_connections=True)
        await server.wait_closed()
        await self.sessions.close()
        await self.rooms.close()
        await self.store.close()
        self.lock.release()
        logger.info("stopped; everything is on disk")

    # HTTP.

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return await self._route(request)
        except MultipleValuesError as error:  # a header read with .get() sent twice: the client's fault
            return respond(HTTPStatus.BAD_REQUEST, f"duplicated header: {error}\n")

    async def _route(self, request: Request) -> Response | None:
        origin = request.headers.get("Origin")
        if not self.origins.allows(origin, request.headers.get("Host"), self.port):
            self.metrics.auth_failures.inc("origin")
            logger.warning("refused a request from another origin", extra=fields(origin=origin, path=request.path))
            return respond(HTTPStatus.FORBIDDEN, "origin not allowed (see --allowed-origin)\n")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await self.http.handle(request)
        return None

    def _select_subprotocol(self, connection: ServerConnection, offered: Sequence[str]) -> Subprotocol | None:
        """Browsers fail a connection whose offered subprotocols are all declined: accept one."""
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        return next((Subprotocol(p) for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)), None)

    async def _healthz(self, request: HttpRequest) -> Response:
        return respond(HTTPStatus.OK, "ok\n")

    async def _readyz(self, request: HttpRequest) -> Response:
        """Ready when the store can take a write lock now and its last commit succeeded."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.store.check_writable()
        except (StorageError, TimeoutError) as error:
            return respond(HTTPStatus.SERVICE_UNAVAILABLE, f"store not writable: {error or 'timed out'}\n")
        if self.store.failing:
            return respond(HTTPStatus.SERVICE_UNAVAILABLE, "store not writable: commits are failing\n")
        return respond(HTTPStatus.OK, "ready\n")

    async def _metrics(self, request: HttpRequest) -> Response:
        return respond(HTTPStatus.OK, render(self.metrics.all()), "text/plain; version=0.0.4; charset=utf-8")

    # WebSocket connections.

    async def _keepalive_forever(self) -> None:
        """Ping the connections that have been silent for a keepalive interval; drop the dead ones.

        The stock client renews its awareness every 15 s, so most connections are never pinged; one task
        for all instead of websockets' task per connection saves about 1 KB per idle connection.
        """
        interval = self.settings.keepalive
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            silent_since = loop.time() - interval
            silent = [peer for peer in self.peers if peer.last_heard < silent_since]
            await asyncio.gather(*(peer.check_alive(interval) for peer in silent))

    async def _sweep_backlogs_forever(self) -> None:
        """Drop clients that leave too much unread for too long (see `Backlogs`); visits only those behind."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(Backlogs.SWEEP_INTERVAL)
            self._backlogs.sweep(loop.time())

    async def _handle(self, ws: ServerConnection) -> None:
        peer = WebSocketPeer(ws, str(next(self._ids)), self.metrics, self._backlogs, self._outbox)
        self.peers.add(peer)
        room: Room | None = None
        error: BaseException | None = None
        try:
            if len(self.peers) > self.settings.max_connections:
                raise ServerBusyError(f"server is at its limit of {self.settings.max_connections} connections")
            request_path = ws.request.path if ws.request else ""
            name = room_name_from_path(request_path)
            grant = self.access.check(self._token(ws, request_path), name)
            peer.grant = grant
            if grant is not None:
                self.sessions.add(peer, ws, name, grant)  # closed at expiry or revocation
            peer.read_only = grant is not None and not grant.can_write
            forget_handshake(ws)  # everything needed from the headers is read by now
            room = await self.rooms.join(name, peer)
            logger.debug(
                "joined", extra=fields(conn=peer.id, room=name, peer=ws.remote_address, read_only=peer.read_only)
            )
            # The receive loop, inline and with recv() rather than `async for`: a coroutine of its own or
            # websockets' async iterator would cost every idle connection a suspended frame (~0.3 KB each).
            loop = asyncio.get_running_loop()
            peer.last_heard = loop.time()
            rate = self.settings.max_messages_per_second
            close_after = self.settings.throttle_close_after
            throttle = Throttle(rate, 2 * rate, peer.last_heard, close_after) if rate > 0 else None
            count_received = self.metrics.count_received
            recv = ws.recv
            wait = 0.0
            while True:
                frame = await recv()  # ConnectionClosed ends the loop
                peer.last_heard = now = loop.time()
                if type(frame) is not bytes:
                    raise UnsupportedDataError("text frames are not part of the y-websocket protocol")
                messages = parse_frame(frame)
                count_received(messages)
                if throttle is not None:
                    wait = throttle.charge(frame_cost(messages, len(room.peers) - 1), now, bytes_cost(messages))
                if peer.read_only:
                    messages = self._drop_updates(peer, messages)
                room.receive(peer, messages)
                if wait:
                    # Too fast: read nothing more from it for a while. websockets' receive queue (max_queue
                    # frames) fills, it stops reading the socket, and TCP backpressure slows the sender.
                    peer.last_heard = now + wait  # silence while we do not listen is no sign of death
                    await hold_back(ws, wait)
        except ConnectionClosed:
            pass
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as caught:  # and so pycrdt's PanicException (a BaseException) on a Rust panic
            error = caught
            peer.flush()  # what was sent before the error goes out before the close frame
            await self._refuse(ws, caught)
        finally:
            self.peers.discard(peer)
            self.sessions.discard(peer)
            if room is not None:
                self.rooms.leave(room, peer)
            self._log_close(peer, room, ws, error)

    def _drop_updates(self, peer: WebSocketPeer, messages: list[Message]) -> list[Message]:
        """A read-only peer's updates go nowhere; it is told so once and stays connected."""
        if peer.dropped:  # being closed (see _end_session): nothing it sends counts any more
            return []
        kept = [message for message in messages if type(message) is not Update and type(message) is not SyncStep2]
        if len(kept) < len(messages):
            edits = [m for m in messages if type(m) in (Update, SyncStep2) and m.update != EMPTY_UPDATE]  # type: ignore[union-attr]
            if edits:
                self.metrics.rejected.inc("read_only", amount=len(edits))
                if not peer.told_read_only:
                    peer.told_read_only = True
                    peer.send(Auth(READ_ONLY_NOTICE).encode())
        return kept

    @staticmethod
    def _token(ws: ServerConnection, request_path: str) -> str | None:
        query = parse_qs(urlsplit(request_path).query)
        if "token" in query:
            return query["token"][-1]
        offered = ws.request.headers.get_all("Sec-WebSocket-Protocol") if ws.request else []
        return token_from_subprotocols([p.strip() for header in offered for p in header.split(",")])

    def _end_session(self, peer: WebSocketPeer, ws: ServerConnection, error: AuthError) -> None:
        """Close a live connection whose token expired or was revoked, as `_refuse` would at connect.

        The auth message goes out first; then nothing the peer sends counts (its receive loop sees it
        `dropped` and read-only) while the close handshake runs.
        """
        self.metrics.auth_failures.inc(error.label)
        peer.send(Auth(f"permission denied: {error}").encode())
        peer.flush()
        peer.read_only = peer.told_read_only = peer.dropped = True
        closing = asyncio.get_running_loop().create_task(ws.close(*close_reason_for(error)))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _refuse(self, ws: ServerConnection, error: BaseException) -> None:
        """Close with the code the error earns; an auth failure is explained in an auth message first."""
        code, reason = close_reason_for(error)
        if isinstance(error, AuthError):
            self.metrics.auth_failures.inc(error.label)
            try:
                await ws.send(Auth(f"permission denied: {error}").encode())
            except ConnectionClosed:
                return
        elif isinstance(error, ProtocolError | LimitError):
            self.metrics.rejected.inc(type(error).__name__)
        closing = asyncio.create_task(ws.close(code, reason))
        # Discard what the client sent before it saw our close frame: with the receive queue
        # full, websockets stops reading and would never see the client's answering close.
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        await closing

    @staticmethod
    def _log_close(peer: WebSocketPeer, room: Room | None, ws: ServerConnection, error: BaseException | None) -> None:
        where = {"conn": peer.id, "room": room.name if room else None}
        if error is not None and not isinstance(error, CollabError):
            code = close_reason_for(error).code
            logger.error("unexpected error, connection closed", extra=fields(**where, code=code), exc_info=error)
        elif error is not None:
            code = close_reason_for(error).code
            logger.warning("connection closed", extra=fields(**where, code=code, reason=str(error)))
        elif ws.close_code not in NORMAL_CLOSURES:
            logger.warning("connection closed", extra=fields(**where, code=ws.close_code, reason=ws.close_reason))
        else:
            logger.debug("connection closed", extra=fields(**where, code=ws.close_code))


async def hold_back(ws: ServerConnection, seconds: float) -> None:
    """Wait `seconds` without reading `ws`, or less if it closes meanwhile (a shutdown need not wait)."""
    try:
        async with asyncio.timeout(seconds):
            await ws.wait_closed()
    except TimeoutError:
        pass


def connectable_host(host: str) -> str:
    """Where a local command reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host


async def serve_until_signalled(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    server = CollabServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        logger.info("shutting down: closing connections and flushing")
    finally:
        await server.stop()


def run(settings: Settings) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve_until_signalled(settings))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's own (None).

    uvloop (libuv, in C) runs the same code with cheaper socket reads and writes, callbacks and timers:
    in scripts/bench's saturate, the server's CPU per relayed update fell by about a third (see
    docs/benchmarks.md).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
