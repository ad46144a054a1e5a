"""How frames reach clients: each message framed once for all its recipients, one write per client per turn.

collab writes its own WebSocket frames: with compression off no extension
transforms outgoing frames, so a message's frame is the same bytes for every
recipient. It is built once (`server_frame`) and each connection's frames of
one event-loop turn go out in one write (`Outbox`). `Backlogs` holds the
slow-client rule. collab owns the transport (`collab.server.transport`), so
this is its own send path, not a bypass of a library's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["Backlogged", "Backlogs", "Flushable", "Outbox", "server_frame"]

logger = logging.getLogger("collab.server")


class Backlogged(Protocol):
    """A connection with bytes waiting unsent in its transport (see `Backlogs`)."""

    def unread_for(self, since: float, buffered: int) -> int: ...

    def check_backlog(self, now: float) -> bool: ...


class Flushable(Protocol):
    def flush(self) -> None: ...


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
        self.peers: set[Backlogged] = set()

    def too_slow(self, peer: Backlogged, buffered: int, now: float) -> bool:
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
        self.peers: list[Flushable] = []

    def add(self, peer: Flushable) -> None:
        if not self.peers:
            asyncio.get_running_loop().call_soon(self.flush)
        self.peers.append(peer)

    def flush(self) -> None:
        peers, self.peers = self.peers, []
        for peer in peers:
            try:
                peer.flush()
            except Exception:  # one connection's failure must not leave the others' frames unsent, forever
                logger.exception("flushing a connection failed")


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
