"""Live connections' tokens: each connection is closed when its token expires or is revoked.

A token is checked when a connection opens; this keeps it checked while the
connection lives. Expiries wait in one heap for the whole server, with one
`loop.call_at` timer for the earliest: about 0.25 KB per authenticated idle
connection, where a timer handle each would cost 0.7 KB under uvloop and a
task each more (measured with 100,000). One task polls the database for new
revocations (`store.revocations`) every `POLL_INTERVAL` and checks the live
connections only when something was revoked. How a connection is closed is
the server's business: `end(connection, error)` is called at most once per connection.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..auth import Access, Grant
from ..errors import AuthError, StorageError, UnauthenticatedError
from ..logs import fields
from ..store.revocations import POLL_INTERVAL

if TYPE_CHECKING:
    from ..store.engines import RevocationFeed

__all__ = ["Sessions"]

logger = logging.getLogger("collab.server")

MAX_TIMER_DELAY = 60.0
"""The expiry timer looks again at least this often: the wall clock may have been set forward meanwhile."""


class Watched(Protocol):
    """A live connection as sessions see it."""

    @property
    def id(self) -> str: ...

    @property
    def grant(self) -> Grant | None: ...


End = Callable[[Watched, AuthError], None]


class Sessions:
    """The authenticated connections of one server, their expiry timers, and the revocation poll."""

    def __init__(self, access: Access, reader: RevocationFeed, end: End) -> None:
        self.access = access
        self.reader = reader
        self.end = end
        self._live: dict[Watched, str] = {}
        self._expiries: list[tuple[float, int, Watched]] = []
        """A heap of (expiry, tie-breaker, peer); entries of peers no longer live are skipped, and pruned."""
        self._stale = 0
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._poll: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Read every revocation stored so far (before any connection is accepted), then keep polling."""
        if not self.access.enabled:
            return
        self.access.revocations.add(await asyncio.to_thread(self.reader.read_new))
        self._poll = asyncio.create_task(self._poll_forever(), name="collab-revocations")

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            try:
                await self._poll
            except asyncio.CancelledError:
                pass
            self._poll = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._live.clear()
        self._expiries.clear()
        await asyncio.to_thread(self.reader.close)

    def add(self, peer: Watched, name: str) -> None:
        """Watch a connection that its grant let into `name` until `discard`."""
        grant = peer.grant
        assert grant is not None, "only connections with a token have a session"
        self._live[peer] = name
        heapq.heappush(self._expiries, (grant.expires_at, next(self._order), peer))
        if self._expiries[0][2] is peer:
            self._arm()

    def discard(self, peer: Watched) -> None:
        if self._live.pop(peer, None) is None:
            return
        # Its heap entry stays until it comes up; rebuild once stale entries are half the heap, so that
        # closed connections are not held for as long as their tokens would have lasted.
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._expiries):
            self._expiries = [entry for entry in self._expiries if entry[2] in self._live]
            heapq.heapify(self._expiries)
            self._stale = 0

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._expiries:
            return
        loop = asyncio.get_running_loop()
        delay = min(self._expiries[0][0] - time.time(), MAX_TIMER_DELAY)
        self._timer = loop.call_at(loop.time() + delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = time.time()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, _, peer = heapq.heappop(expiries)
            name = self._live.pop(peer, None)
            if name is None:
                self._stale = max(0, self._stale - 1)
                continue
            logger.info("token expired, closing the connection", extra=fields(conn=peer.id, room=name))
            self.end(peer, UnauthenticatedError("token expired", "expired"))
        self._arm()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                new = await asyncio.to_thread(self.reader.read_new)
            except StorageError as error:
                if not self._failing:  # once per outage, not twice a second
                    logger.error("cannot read revocations; retrying", extra=fields(error=error))
                self._failing = True
                continue
            if self._failing:
                logger.info("reading revocations again")
                self._failing = False
            if new:
                self.access.revocations.add(new)
                self._close_revoked()

    def _close_revoked(self) -> None:
        revoked = [(peer, name) for peer, name in self._live.items() if not self.access.allows(peer.grant, name)]
        for peer, name in revoked:
            self.discard(peer)
            logger.info("token revoked, closing the connection", extra=fields(conn=peer.id, room=name))
            self.end(peer, UnauthenticatedError("token revoked", "revoked"))
