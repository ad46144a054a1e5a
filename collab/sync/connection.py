"""One client's connection as the y-websocket rules see it: messages and the clock in, decisions out.

No asyncio and no sockets (in the spirit of h11 and websockets' `protocol.py`): the server's transport
(`collab.server.transport`) moves the bytes and keeps the timers, this holds the rules. A connection
goes through these states, each a method that either returns what to do next or raises the
`CollabError` whose close code ends it (`close_for` turns that into the close to send):

    ADMITTING ──admit()──▶ JOINING ──joined(room)──▶ OPEN ──close_for(error)──▶ CLOSING
                  │                                   │
                  └── raises: 4400, 4401, 4403, 1013  └── receive(): raises 1002, 1003, 1007, 1008, 1009, 1011

`admit` checks the room name and the token (`Access`), once, from the request path and the offered
subprotocols. `receive` takes one binary message: it is parsed (`protocol.parse_frame`), counted, priced
against the connection's budget (`limits.Throttle`), stripped of edits when the token is read-only, and
handed to the room; it answers how long the transport must stop reading (0.0 almost always). What the
room and the connection send goes to `output`, one y-websocket message at a time. The connection is
also the `Peer` rooms send to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from ..auth import Access, Grant, token_from_subprotocols
from ..errors import (
    AuthError,
    CloseReason,
    LimitError,
    ProtocolError,
    UnsupportedDataError,
    close_reason_for,
    metric_label,
)
from .limits import Throttle, bytes_cost, frame_cost
from .names import room_name_from_path
from .protocol import Auth, Message, SyncStep2, Update, parse_frame
from .room import EMPTY_UPDATE

if TYPE_CHECKING:
    from ..metrics import Counter
    from .room import Room

__all__ = ["READ_ONLY_NOTICE", "Connection", "ConnectionMetrics", "ConnectionRules", "request_token"]

READ_ONLY_NOTICE = "read-only access: your edits are not saved or shared"


@dataclass(frozen=True, slots=True)
class ConnectionRules:
    """The per-connection limits, shared by every connection of a server."""

    max_messages_per_second: float = 500.0
    """Budget of a connection (awareness: entries); bursts of twice that; 0: no limit (see `limits`)."""
    throttle_close_after: float = 600.0
    """Seconds of uninterrupted throttling before the connection is closed (0: never)."""


class ConnectionMetrics(Protocol):
    """What a connection counts (the server's metrics)."""

    @property
    def rejected(self) -> Counter: ...

    @property
    def auth_failures(self) -> Counter: ...

    def count_received(self, messages: list[Message]) -> None: ...


def request_token(path: str, offered_subprotocols: Sequence[str]) -> str | None:
    """The token a connection request carries: `?token=` in its URL, else a `token.` subprotocol."""
    query = parse_qs(path.partition("?")[2])  # not urlsplit: the path was validated, whatever it holds
    if "token" in query:
        return query["token"][-1]
    return token_from_subprotocols(offered_subprotocols)


class Connection:
    """One connection's rules, and the `Peer` its room sends to (see the module docstring)."""

    __slots__ = (
        "_close",
        "_metrics",
        "_output",
        "_throttle",
        "_told_read_only",
        "closing",
        "grant",
        "id",
        "read_only",
        "room",
    )

    def __init__(
        self,
        id: str,
        output: Callable[[bytes], None],
        rules: ConnectionRules,
        metrics: ConnectionMetrics,
        close: Callable[[int, str], None] | None = None,
    ) -> None:
        """`output(message)`: queue one y-websocket message for the client, without blocking; `close(code,
        reason)`: start closing the connection (the transport's), for a room that ends (`Room.end`)."""
        self.id = id
        self._output = output
        self._close = close
        self._metrics = metrics
        rate = rules.max_messages_per_second
        self._throttle = Throttle(rate, 2 * rate, 0.0, rules.throttle_close_after) if rate > 0 else None
        self.grant: Grant | None = None
        """What the connection's token allows; None when access control is off."""
        self.read_only = False
        self._told_read_only = False
        self.room: Room | None = None
        """The room joined; None while admitting and joining."""
        self.closing = False
        """Set once a close is decided: nothing more is sent or received."""

    # ADMITTING

    def admit(self, path: str, offered_subprotocols: Sequence[str], access: Access) -> str:
        """The name of the room the request asks for, if its token may open it.

        Raises `InvalidRoomNameError`, `UnauthenticatedError` or `ForbiddenError`.
        """
        name = room_name_from_path(path)
        self.grant = access.check(request_token(path, offered_subprotocols), name)
        self.read_only = self.grant is not None and not self.grant.can_write
        return name

    # JOINING

    def joined(self, room: Room, now: float) -> None:
        """The room has taken the connection in (and greeted it); its messages go there from now on."""
        self.room = room
        if self._throttle is not None:
            self._throttle.stamp = now

    # OPEN

    def receive(self, message: bytes, now: float) -> float:
        """Handle one binary WebSocket message received at `now`; return the seconds to read nothing more.

        Raises the `CollabError` that must close the connection (or any error from pycrdt, which
        `close_for` maps to 1011).
        """
        room = self.room
        if self.closing:
            return 0.0
        if room is None:
            raise RuntimeError("receive() before joined(): the transport must hold messages while joining")
        messages = parse_frame(message)
        self._metrics.count_received(messages)
        wait = 0.0
        if self._throttle is not None:
            wait = self._throttle.charge(frame_cost(messages, len(room.peers) - 1), now, bytes_cost(messages))
        if self.read_only:
            messages = self._drop_edits(messages)
        room.receive(self, messages, now)
        return wait

    def receive_text(self) -> None:
        """A text message: not part of the protocol."""
        raise UnsupportedDataError("text frames are not part of the y-websocket protocol")

    def _drop_edits(self, messages: list[Message]) -> list[Message]:
        """A read-only connection's edits go nowhere; it is told so once and stays connected."""
        kept = [message for message in messages if type(message) is not Update and type(message) is not SyncStep2]
        if len(kept) < len(messages):
            edits = sum(
                1
                for message in messages
                if (type(message) is Update or type(message) is SyncStep2) and message.update != EMPTY_UPDATE
            )
            if edits:
                self._metrics.rejected.inc("read_only", amount=edits)
                if not self._told_read_only:
                    self._told_read_only = True
                    self.send(Auth(READ_ONLY_NOTICE).encode())
        return kept

    def send(self, frame: bytes) -> None:
        """For the room: queue a message for the client, unless the connection is closing."""
        if not self.closing:
            self._output(frame)

    def close(self, code: int, reason: str) -> None:
        """For the room: close the connection with `code` (its document was deleted or renamed)."""
        if not self.closing:
            self.closing = True
            if self._close is not None:
                self._close(code, reason)

    # CLOSING

    def close_for(self, error: BaseException) -> CloseReason:
        """The close `error` earns; an auth failure is first explained in an auth message."""
        if not self.closing:
            if isinstance(error, AuthError):
                self._metrics.auth_failures.inc(error.label)
                self._output(Auth(f"permission denied: {error}").encode())
            elif isinstance(error, ProtocolError | LimitError):
                self._metrics.rejected.inc(metric_label(error))
            self.closing = True
        return close_reason_for(error)
