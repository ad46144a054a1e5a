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

from ..auth import Grant
from ..logs import fields
from .metrics import ServerMetrics

__all__ = ["Backlogs", "Outbox", "WebSocketPeer", "forget_handshake", "server_frame"]

logger = logging.getLogger("collab.server")

SLOW_CLOSE_TIMEOUT = 5.0
"""Seconds a dropped slow client has to complete the close handshake before its connection is cut."""


class WebSocketPeer:
    """A connection as a room sees it: an id for logs and a non-blocking `send`.

    The relay's hot path (profiled in docs/benchmarks.md). Each message becomes a WebSocket frame once,
    shared by every recipient (`server_frame`), and written straight to the transport: with compression
    off, no extension transforms frames, so what websockets' send_binary() would serialize per peer is
    the same bytes for all. Frames queued during one turn of the event loop go out together, one write
    per peer, when the turn ends (`Outbox`), not one system call per frame. A peer that leaves too much
    unread for too long is dropped (`Backlogs` has the rule): it resyncs when it reconnects.
    """

    __slots__ = (
        "_backlogs",
        "_marks",
        "_metrics",
        "_out",
        "_outbox",
        "_written",
        "_ws",
        "dropped",
        "grant",
        "id",
        "last_heard",
        "read_only",
        "told_read_only",
    )

    def __init__(
        self, ws: ServerConnection, id: str, metrics: ServerMetrics, backlogs: Backlogs, outbox: Outbox
    ) -> None:
        self._ws = ws
        self._metrics = metrics
        self.id = id
        self._backlogs = backlogs
        self._written = 0
        """Bytes handed to the transport since this peer's backlog began (counted only while it has one)."""
        self._marks: list[tuple[float, int]] | None = None
        """While bytes wait unsent: (time, `_written` then), one per sweep, the oldest at most a grace old."""
        self.read_only = False
        self.grant: Grant | None = None
        """What the connection's token allows; None when access control is off."""
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
        buffered = ws.transport.get_write_buffer_size()
        if buffered:  # rarely: the kernel usually takes everything at once
            self._backlogged(buffered, sum(map(len, out)))
        elif self._marks is not None:
            self._marks = None  # it caught up: nothing waits, however long it waited before

    def _backlogged(self, buffered: int, wrote: int) -> None:
        """Bytes wait unsent after a flush: track them, and drop the peer if `Backlogs` says so."""
        now = asyncio.get_running_loop().time()
        if self._marks is None:
            self._written = buffered  # count from here: everything buffered was written by now
            self._marks = [(now, buffered)]
            self._backlogs.peers.add(self)
        else:
            self._written += wrote
        if self._backlogs.too_slow(self, buffered, now):
            self._drop_slow_client()

    def check_backlog(self, now: float) -> bool:
        """For `Backlogs.sweep`: note how much was written by `now`; False once nothing waits any more."""
        marks = self._marks
        if marks is None or self.dropped or self._ws.protocol.state is not State.OPEN:
            self._marks = None
            return False
        buffered = self._ws.transport.get_write_buffer_size()
        if not buffered:
            self._marks = None
            return False
        marks.append((now, self._written))
        grace_ago = now - self._backlogs.grace
        while len(marks) > 1 and marks[1][0] <= grace_ago:
            del marks[0]
        if self._backlogs.too_slow(self, buffered, now):
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

    async def check_alive(self, timeout: float) -> None:
        """Ping; a peer that does not answer within `timeout` is gone (its TCP connection is cut)."""
        try:
            # Sending the ping is timed too: it waits for the transport to drain, which a client that
            # reads nothing never lets happen (and the keepalive awaits every peer's check together).
            async with asyncio.timeout(timeout):
                pong = await self._ws.ping()
                await pong
        except ConnectionClosed:
            pass
        except TimeoutError:
            logger.info("no answer to a keepalive ping, dropping the connection", extra=fields(conn=self.id))
            self._ws.transport.abort()

    def _drop_slow_client(self) -> None:
        """Stop queueing for a client that does not keep up; it resyncs when it reconnects."""
        self.dropped = True
        self._marks = None
        self._metrics.rejected.inc("slow_client")
        logger.warning(
            "closing a client that reads too slowly",
            extra=fields(conn=self.id, limit=self._backlogs.max_buffered, grace=self._backlogs.grace),
        )
        asyncio.get_running_loop().create_task(self._close_or_abort(1013, "too slow: reconnect to resync"))

    async def _close_or_abort(self, code: int, reason: str) -> None:
        """Close; cut the connection if the close handshake is not done within `SLOW_CLOSE_TIMEOUT`.

        websockets' close() first waits for the transport to drain, which it never does for a client that
        reads nothing: without the cut, such a connection kept its backlog (tens of MB) forever.
        """
        try:
            async with asyncio.timeout(SLOW_CLOSE_TIMEOUT):
                await self._ws.close(code, reason)
        except TimeoutError:
            logger.info("no close handshake from a slow client, cutting the connection", extra=fields(conn=self.id))
            self._ws.transport.abort()


class Backlogs:
    """The slow-client rule, and the peers with bytes waiting unsent in their transport.

    A client is dropped (1013) when more than `max_buffered` bytes queued for it have waited unread for
    longer than `grace` seconds, or at once when more than `ceiling` bytes wait, however new. What is
    counted is what the client has not read for long, not the size of one frame: a full-speed reader
    takes a relayed 60 MB update, and a newcomer a 40 MB document, however long the write buffer stays
    above `max_buffered` while they read it, as long as they keep reading. A client that stops reading
    is dropped `grace` (plus up to one `SWEEP_INTERVAL`) after it stopped. The ceiling, above the largest
    document plus the largest message, bounds the memory one client can pin in the meantime.

    `sweep`, run every `SWEEP_INTERVAL` by the server, visits only the peers with a backlog, so it costs
    nothing for the many that keep up.
    """

    SWEEP_INTERVAL = 1.0

    __slots__ = ("ceiling", "grace", "max_buffered", "peers")

    def __init__(self, max_buffered: int, grace: float, ceiling: int) -> None:
        self.max_buffered = max_buffered
        self.grace = grace
        self.ceiling = ceiling
        self.peers: set[WebSocketPeer] = set()

    def too_slow(self, peer: WebSocketPeer, buffered: int, now: float) -> bool:
        if buffered > self.ceiling:
            return True
        if buffered <= self.max_buffered:
            return False
        return peer.unread_for(now - self.grace, buffered) > self.max_buffered

    def sweep(self, now: float) -> None:
        """Note each backlogged peer's progress; drop those too slow; forget those that caught up."""
        self.peers = {peer for peer in self.peers if peer.check_backlog(now)}


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
