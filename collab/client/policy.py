"""What a `Client` does after a failure, with no I/O: try again (and after how long) or stop, and with what error.

The rules are those the package docstring states: retry what another attempt may fix (a server going away or
restarting, a cut or refused connection, an HTTP 5xx of a proxy), stop at once on what it never fixes (a
refusal, an untrusted certificate, a URL that cannot work), and wait between attempts as `Backoff` says.
"""

from __future__ import annotations

import enum
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLEOFError, SSLError
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.http11 import Response

from ..errors import RefusedError

__all__ = [
    "RETRYABLE_CLOSES",
    "RETRYABLE_STATUSES",
    "Backoff",
    "State",
    "cut_in_handshake",
    "redacted_url",
    "refusal_reason",
    "retryable_close",
    "stop_for",
]

RETRYABLE_CLOSES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
"""Close codes after which the same connection may work again (RFC 6455 7.4.1 and the IANA registry): going
away, abnormal closure (no close frame), internal error, service restart, try again later, bad gateway."""

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
"""HTTP statuses of a refused upgrade that a server or proxy on its way back gives (websockets' choice too)."""

SECRET_PARAMETERS = frozenset({"token"})
"""Query parameters whose value `redacted_url` hides: collab reads a token from `?token=`."""


def retryable_close(code: int | None) -> bool:
    """Whether a connection that ended with close `code` is worth opening again."""
    return code in RETRYABLE_CLOSES


class State(enum.Enum):
    """Where a client is; see the package docstring."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    SYNCED = "synced"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a client waits between connection attempts: doubling, jittered, capped; `reconnect=Backoff(...)`."""

    initial: float = 0.5
    """Seconds before the first new attempt (before jitter)."""
    max_delay: float = 30.0
    """The longest wait between two attempts."""
    factor: float = 2.0
    max_attempts: int | None = None
    """Attempts in a row that may fail before the client gives up (None: it never does)."""
    stable_after: float = 10.0
    """Seconds a connection must stay synced to count as a success, which starts the delays from `initial`
    again. A server that syncs and then closes at once (1011, 1013) is an attempt that failed: reset on every
    sync, the delay stayed at `initial` and each client came back about three times a second, forever."""

    def __post_init__(self) -> None:
        if not all(math.isfinite(value) for value in (self.initial, self.max_delay, self.factor, self.stable_after)):
            raise ValueError("initial, max_delay, factor and stable_after must be finite numbers")
        if not 0 < self.initial <= self.max_delay:
            raise ValueError(f"need 0 < initial <= max_delay, not {self.initial} and {self.max_delay}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (or None), not {self.max_attempts}")
        if self.stable_after < 0:
            raise ValueError(f"stable_after must be 0 or more, not {self.stable_after}")

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` (1 or more) attempts in a row that failed: between half and all of
        `initial * factor ** (failures - 1)`, at most `max_delay`. `draw()` is in [0, 1)."""
        steps = max(failures - 1, 0)
        if self.factor > 1:  # no more doublings than reach max_delay: factor ** steps overflowed a float past it
            steps = min(steps, math.ceil(math.log(self.max_delay / self.initial, self.factor)))
        ceiling = min(self.max_delay, self.initial * self.factor**steps)
        return ceiling * (0.5 + draw() / 2)


def stop_for(failure: Exception) -> BaseException | None:
    """None if another attempt may succeed after a connection attempt failed with `failure` (OSError,
    TimeoutError, websockets' InvalidHandshake, SSLError...); else the error the client stops with.

    A connection cut during the HTTP handshake (`cut_in_handshake`) is retried here: a server killed while
    answering, a load balancer with no backend. The client first checks that it is no ws:// URL pointed at a
    TLS port, which cuts the connection the same way.
    """
    match failure:
        case InvalidStatus(response=response):
            if response.status_code in RETRYABLE_STATUSES:
                return None
            return RefusedError(response.status_code, refusal_reason(response))
        case SSLEOFError():
            return None  # the connection was cut during the TLS handshake, as a server going down does
        case SSLError():
            return failure  # a certificate not trusted, TLS spoken to a plain port: retrying gives the same
        case OSError() | TimeoutError():
            return None  # refused, reset, unreachable, timed out
        case _ if cut_in_handshake(failure):
            return None
        case _:
            return failure  # a peer that does not speak HTTP, an upgrade the server answered wrongly...


def cut_in_handshake(failure: BaseException) -> bool:
    """Whether `failure` is websockets' InvalidMessage for a connection that ended (or was reset) before the
    server's HTTP answer was read, rather than for an answer that is no HTTP."""
    return isinstance(failure, InvalidMessage) and isinstance(failure.__cause__, EOFError | OSError)


def refusal_reason(response: Response) -> str:
    """The first line of a refused upgrade's body (collab's says why), else the status's reason phrase."""
    body = (response.body or b"").decode(errors="replace").strip()
    try:
        said = json.loads(body)
        if isinstance(said, dict) and isinstance(said.get("error"), str):
            body = said["error"]
    except (ValueError, RecursionError):
        pass
    return body.splitlines()[0][:200] if body else response.reason_phrase


def redacted_url(url: str) -> str:
    """`url` fit for a log line, an error or a task name: a `?token=` value and a password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that does not parse>"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if any(name in SECRET_PARAMETERS for name, _ in parse_qsl(query, keep_blank_values=True)):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(name, "***" if name in SECRET_PARAMETERS else value) for name, value in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
