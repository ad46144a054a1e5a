"""Several collab processes sharing rooms: what the rooms and the server need of a relay.

Every process that holds a room keeps its own merged document and answers its
own joiners; between processes only what a room accepted from its own peers
travels (updates and awareness, as y-websocket frames), never a sync reply: a
stale process merging another's step 2 as news is how peers have persisted
truncated documents. The store stays the only durable truth: each update is
stored once, by the process that received it; the relay is for speed.

    Publisher  what a room hands what it accepted from its peers (`publish`: never blocks, never fails)
    Relay      the server's side: start, the retained recent frames of a room and the position after
               them, follow a room from that position, which processes are alive, health for /readyz
    Listener   what a relay calls back, on the event loop (`Rooms` implements it): a frame another
               process published, a gap (something may have been missed: reload from the store), a
               process that stopped beating (drop its clients' presence)

`redis_relay.RedisRelay` is the implementation (one Redis stream per room, read from the last seen id, so a
lost message is detected, never silent); `workers` runs several processes on one port. This module imports
nothing with I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from ..metrics import Metric

__all__ = ["Listener", "Publisher", "Relay", "Relayed", "Retained"]


class Relayed(NamedTuple):
    """One frame another process published for a room."""

    origin: str
    """The process that accepted it (see `Relay.process`)."""
    frame: bytes
    """A y-websocket frame: updates or awareness, as that process's own peers sent them (check it again)."""
    subject: str | None = None
    """For awareness: the token `sub` of the connection that owns its entries there (None: none)."""


class Retained(NamedTuple):
    """What a relay still holds of a room, for a process that starts holding it (`Relay.retained`)."""

    frames: list[Relayed]
    """Oldest first: what other processes published for the room within the retention (this process's own frames
    are in the store already)."""
    position: str
    """Where to `follow` the room from so that nothing after `frames` is missed."""


class Publisher(Protocol):
    """Where a room sends what it accepted from its own peers, for the other processes."""

    def publish(self, name: str, frame: bytes, subject: str | None = None) -> None:
        """Queue `frame` for the other processes holding `name`; never blocks. `subject`: for awareness, the
        token `sub` of the connection owning its entries, so that the others apply the same ownership rules.

        A frame that cannot be sent (Redis down, the queue full) is not lost silently: the relay tells the
        other processes afterwards that they missed something, and they reload the room from the store.
        """
        ...


class Listener(Protocol):
    """What a relay calls, on the event loop; `collab.server.rooms.Rooms` implements it."""

    def relayed(self, name: str, message: Relayed) -> None:
        """A frame another process published for a followed room (never this process's own)."""
        ...

    def gap(self, name: str) -> None:
        """Frames of the followed room `name` may have been lost: merge the store's copy in."""
        ...

    def gone(self, process: str) -> None:
        """Process `process` stopped beating (killed, cut off): its clients are gone too."""
        ...

    def ended(self, name: str, code: int, reason: str) -> None:
        """Another process deleted or renamed `name`: close its clients here with `code` and `reason`."""
        ...


class Relay(Publisher, Protocol):
    """The server's side of a relay."""

    @property
    def process(self) -> str:
        """This process's name among the others: in every frame it publishes and in its log lines."""
        ...

    async def start(self, listener: Listener) -> None:
        """Connect and start delivering to `listener`; serves on (and says so) if Redis is not reachable yet."""
        ...

    async def retained(self, name: str) -> Retained:
        """What is retained for `name`, and where it ends.

        Never raises: while Redis cannot be reached the room is served from the store alone, and once it
        can be again the room counts as having had a gap (`Listener.gap`).
        """
        ...

    def follow(self, name: str, position: str) -> None:
        """Deliver what is published for `name` after `position` (from `retained`) until `unfollow`."""
        ...

    def unfollow(self, name: str) -> None: ...

    async def end(self, name: str, code: int, reason: str) -> None:
        """Tell the other processes that `name` is deleted or renamed (`Listener.ended`), then wait long enough
        for them to have closed it and queued what they held of it for their store."""
        ...

    def is_alive(self, process: str) -> bool:
        """Whether `process` has beaten lately (presence retained from a dead process is not shown)."""
        ...

    @property
    def problem(self) -> str | None:
        """Why other processes may not be getting this one's frames now (for /readyz), or None."""
        ...

    def metrics(self) -> Iterable[Metric]: ...

    async def close(self) -> None:
        """Send what is queued (bounded in time), say this process is gone, disconnect."""
        ...
