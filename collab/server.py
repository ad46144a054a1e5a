"""The network edge: a `websockets` server, one ordered receive loop per connection.

A WebSocket upgrade to `/<room>` joins that room; a plain GET is answered over
HTTP on the same port by `self.http` (see `collab.http`). Everything a connection sends is parsed
(`protocol.parse_frame`) and handed to its room in order; any `CollabError`
closes that connection alone, with the code `errors.close_reason_for` picks.
`run()` adds signal handling and a graceful, flushing shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from collections.abc import Callable
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .api import install_api
from .config import Settings
from .errors import CollabError, UnsupportedDataError, close_reason_for
from .http import HttpRequest, Router, respond
from .names import room_name_from_path
from .protocol import parse_frame
from .room import Room
from .rooms import Rooms
from .store.sqlite import SQLiteStore

__all__ = ["CollabServer", "WebSocketPeer", "run"]

logger = logging.getLogger("collab.server")

# Close codes a peer may end with without that being worth a warning.
NORMAL_CLOSURES = (1000, 1001, 1005)


class WebSocketPeer:
    """A connection as a room sees it: an id for logs and a non-blocking `send`.

    The relay's hot path (profiled in docs/benchmarks.md). Each message becomes a WebSocket frame once,
    shared by every recipient (`server_frame`), and written straight to the transport: with compression
    off, no extension transforms frames, so what websockets' send_binary() would serialize per peer is
    the same bytes for all. Frames queued during one turn of the event loop go out together, one write
    per peer, when the turn ends (`Outbox`), not one system call per frame.
    """

    __slots__ = ("_out", "_outbox", "_ws", "id")

    def __init__(self, ws: ServerConnection, id: str, outbox: Outbox | None = None) -> None:
        self._ws = ws
        self.id = id
        self._outbox = outbox or Outbox()
        self._out: list[bytes] | None = None
        """Frames queued this turn of the loop, or None when nothing is."""

    def send(self, frame: bytes) -> None:
        if self._ws.protocol.state is not State.OPEN:
            return
        out = self._out
        if out is None:
            self._out = out = []
            self._outbox.add(self)
        out.append(server_frame(frame))

    def flush(self) -> None:
        """Write what is queued now; dropped if the connection is no longer open, as `send` would."""
        out, self._out = self._out, None
        ws = self._ws
        if not out or ws.protocol.state is not State.OPEN:
            return
        try:
            ws.transport.writelines(out)
        except Exception as error:  # the transport is going away; its handler will clean up
            logger.debug("conn=%s send failed: %s", self.id, error)


class Outbox:
    """A server's peers with queued frames, flushed by one callback at the next turn of the loop."""

    __slots__ = ("peers",)

    def __init__(self) -> None:
        self.peers: list[WebSocketPeer] = []

    def add(self, peer: WebSocketPeer) -> None:
        if not self.peers:
            asyncio.get_running_loop().call_soon(self.flush)
        self.peers.append(peer)

    def flush(self) -> None:
        peers, self.peers = self.peers, []
        for peer in peers:
            peer.flush()


class _FrameCache:
    """The last message's frame: a room hands the same bytes object to each of its peers in turn."""

    __slots__ = ("frame", "message")

    def __init__(self) -> None:
        self.message = b""
        self.frame = b"\x82\x00"  # the empty message's frame, so that the cache is never wrong


_last = _FrameCache()


def server_frame(message: bytes) -> bytes:
    """A final, unmasked binary frame carrying `message` (RFC 6455 section 5.2), made once per message."""
    if message is _last.message:
        return _last.frame
    length = len(message)
    if length < 126:
        header = bytes((0x82, length))
    elif length < 1 << 16:
        header = b"\x82\x7e" + length.to_bytes(2, "big")
    else:
        header = b"\x82\x7f" + length.to_bytes(8, "big")
    _last.message, _last.frame = message, header + message
    return _last.frame


class CollabServer:
    """collab's server: the store, the rooms and the listening socket."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = SQLiteStore(
            settings.db,
            commit_interval=settings.commit_interval,
            synchronous=settings.sqlite_synchronous,
            busy_timeout=settings.sqlite_busy_timeout,
        )
        self.rooms = Rooms(self.store, unload_after=settings.unload_after, compact_after=settings.compact_after)
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self._outbox = Outbox()
        self.http = Router()
        self.http.route("/healthz", self._healthz)
        install_api(self.http, self.store)
        self.port = 0
        """The port listened on, known once started (useful with port 0)."""

    async def start(self) -> None:
        await self.store.start()
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            max_size=self.settings.max_message_size,
            # Yjs updates are small and mostly incompressible; deflate would cost more CPU than it saves.
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "listening on http://%s:%d (database %s)", self.settings.host, self.port, self.settings.db
        )

    async def stop(self) -> None:
        """Close every connection (1001), then make every accepted update durable."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=True)
        await server.wait_closed()
        await self.rooms.close()
        await self.store.close()
        logger.info("stopped; everything is on disk")

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return await self.http.handle(request)

    async def _healthz(self, request: HttpRequest) -> Response:
        return respond(HTTPStatus.OK, "ok\n")

    async def _handle(self, ws: ServerConnection) -> None:
        peer = WebSocketPeer(ws, str(next(self._ids)), self._outbox)
        room: Room | None = None
        error: BaseException | None = None
        try:
            name = room_name_from_path(ws.request.path if ws.request else "")
            forget_handshake(ws)
            room = await self.rooms.join(name, peer)
            logger.debug("conn=%s joined room=%r from %s", peer.id, name, ws.remote_address)
            async for frame in ws:
                if type(frame) is str:
                    raise UnsupportedDataError("text frames are not part of the y-websocket protocol")
                room.receive(peer, parse_frame(frame))
        except ConnectionClosed:
            pass
        except Exception as caught:
            error = caught
            code, reason = close_reason_for(caught)
            peer.flush()  # what was sent before the error goes out before the close frame
            await ws.close(code, reason)
        finally:
            if room is not None:
                self.rooms.leave(room, peer)
            self._log_close(peer, room, ws, error)

    @staticmethod
    def _log_close(peer: WebSocketPeer, room: Room | None, ws: ServerConnection, error: BaseException | None) -> None:
        where = f"conn={peer.id} room={room.name if room else None!r}"
        if error is not None and not isinstance(error, CollabError):
            logger.error("%s: unexpected error, closed with %d", where, close_reason_for(error).code, exc_info=error)
        elif error is not None:
            logger.warning("%s closed with %d: %s", where, close_reason_for(error).code, error)
        elif ws.close_code not in NORMAL_CLOSURES:
            logger.warning("%s closed with %s %s", where, ws.close_code, ws.close_reason)
        else:
            logger.debug("%s closed with %s", where, ws.close_code)


_NO_HEADERS = Headers()


def forget_handshake(ws: ServerConnection) -> None:
    """Release the handshake's headers (about 3 KB per connection), which websockets keeps for the
    connection's whole life but never reads after the handshake. Call it once collab has what it needs
    from them. `ws.request` itself must stay: websockets takes a missing request to mean "no handshake yet".
    """
    if ws.request is not None:
        ws.request.headers = _NO_HEADERS
    ws.response = None


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
