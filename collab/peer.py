"""A connection as rooms see it, and how frames reach it: the relay's sending half.

collab writes its own WebSocket frames: with compression off no extension
transforms outgoing frames, so a message's frame is the same bytes for every
recipient. It is built once (`server_frame`) and each peer's frames of one
event-loop turn go out in one write (`Outbox`). This bypasses websockets'
send path (and its flow control) on purpose; `forget_handshake` slims what
websockets keeps per idle connection. Both lean on websockets 17 internals,
hence the pin in pyproject.toml; tests/test_relay.py checks the framing.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .logs import fields
from .server_metrics import ServerMetrics

__all__ = ["Outbox", "WebSocketPeer", "forget_handshake", "server_frame"]

logger = logging.getLogger("collab.server")


class WebSocketPeer:
    """A connection as a room sees it: an id for logs and a non-blocking `send`.

    The relay's hot path (profiled in docs/benchmarks.md). Each message becomes a WebSocket frame once,
    shared by every recipient (`server_frame`), and written straight to the transport: with compression
    off, no extension transforms frames, so what websockets' send_binary() would serialize per peer is
    the same bytes for all. Frames queued during one turn of the event loop go out together, one write
    per peer, when the turn ends (`Outbox`), not one system call per frame. A peer whose unsent bytes
    exceed `max_buffered` is dropped: it reads too slowly, and resyncs when it reconnects.
    """

    __slots__ = (
        "_metrics",
        "_out",
        "_outbox",
        "_ws",
        "dropped",
        "id",
        "last_heard",
        "max_buffered",
        "read_only",
        "told_read_only",
    )

    def __init__(
        self, ws: ServerConnection, id: str, metrics: ServerMetrics, max_buffered: int, outbox: Outbox
    ) -> None:
        self._ws = ws
        self._metrics = metrics
        self.id = id
        self.max_buffered = max_buffered
        self.read_only = False
        self.told_read_only = False
        self.dropped = False
        self.last_heard = 0.0
        """Event-loop time of the last frame received from this peer."""
        self._outbox = outbox
        self._out: list[bytes] | None = None
        """Frames queued this turn of the loop, or None when nothing is."""

    def send(self, frame: bytes) -> None:
        if self.dropped or self._ws.protocol.state is not State.OPEN:
            return
        out = self._out
        if out is None:
            self._out = out = []
            self._outbox.add(self)
        out.append(server_frame(frame))
        self._metrics.count_sent(frame)

    def flush(self) -> None:
        """Write what is queued now; dropped if the connection is no longer open, as `send` would."""
        out, self._out = self._out, None
        ws = self._ws
        if not out or self.dropped or ws.protocol.state is not State.OPEN:
            return
        try:
            ws.transport.writelines(out)
        except Exception as error:  # the transport is going away; its handler will clean up
            logger.debug("send failed", extra=fields(conn=self.id, error=error))
            return
        if ws.transport.get_write_buffer_size() > self.max_buffered:
            self._drop_slow_client()

    async def check_alive(self, timeout: float) -> None:
        """Ping; a peer that does not answer within `timeout` is gone (its TCP connection is cut)."""
        try:
            pong = await self._ws.ping()
            async with asyncio.timeout(timeout):
                await pong
        except ConnectionClosed:
            pass
        except TimeoutError:
            logger.info("no answer to a keepalive ping, dropping the connection", extra=fields(conn=self.id))
            self._ws.transport.abort()

    def _drop_slow_client(self) -> None:
        """Stop queueing for a client that does not keep up; it resyncs when it reconnects."""
        self.dropped = True
        self._metrics.rejected.inc("slow_client")
        logger.warning("closing a client that reads too slowly", extra=fields(conn=self.id, limit=self.max_buffered))
        asyncio.get_running_loop().create_task(self._ws.close(1013, "too slow: reconnect to resync"))

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


_NO_HEADERS = Headers()


def forget_handshake(ws: ServerConnection) -> None:
    """Slim an idle connection down once collab has read what it needs from its handshake.

    - The handshake's headers (about 3 KB), which websockets keeps for the connection's whole life but
      never reads after the handshake. `ws.request` itself must stay: websockets takes a missing request
      to mean "no handshake yet".
    - The deque of flow-control waiters (about 0.7 KB even when empty, as every deque): websockets only
      appends to it, removes from it and iterates it (asyncio.FlowControlMixin's pattern), which a list
      does the same for 56 bytes. collab's own frames bypass that flow control (see WebSocketPeer).
    - The per-connection closure around `_select_subprotocol`, only needed during the handshake.
    """
    if ws.request is not None:
        ws.request.headers = _NO_HEADERS
    ws.response = None
    ws.drain_waiters = []  # type: ignore[assignment]
    ws.protocol.__dict__.pop("select_subprotocol", None)
