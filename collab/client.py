"""A y-websocket client around a pycrdt Doc: for applications, bots, scripts and tests.

    from pycrdt import Text
    from collab.client import Client

    async with Client("wss://collab.example.com/notes/plan", token=TOKEN) as client:   # synced here
        content = client.doc.get("content", type=Text)
        content += "hello\\n"                       # sent to the server at once
        await client.wait_for_change(timeout=60)   # someone else typed

It speaks the protocol the stock JavaScript provider speaks: sync step 1 on
connect, step 2 in answer to the server's step 1, awareness. Local changes to
`client.doc` are sent as updates; what the server sends is applied to it.

Opening. `async with Client(url)` (or `await client.start()`) connects and
returns once the first sync is done, so the document holds the server's
content. It raises at once what no retry can fix: `RefusedError` for a refusal
(its `code` is the close code, 4401 a bad token, 4403 a token for another
document; or the HTTP status of a refused upgrade, 403 a foreign origin), and
the TLS or URL error of a connection that cannot work
(`ssl.SSLCertVerificationError` for a certificate it does not trust). It gives
up with `TimeoutError` after `sync_timeout` seconds (30) of trying.

Reconnecting. A connection lost in a way another attempt may fix (the server
going away or restarting, 1001 and 1012; 1011 and 1013, try again later; 1014;
1006, no close frame; a refused, reset or timed-out TCP connection; an HTTP
500, 502, 503 or 504) is opened again after a delay that doubles from 0.5 s up
to `Backoff.max_delay` (30 s), jittered to between half and all of it so that
the clients of a restarted server do not all come back at once. The new
connection resyncs: the client sends its state vector and the server's step 2
brings what it missed, and the client answers the server's step 1 with what the
server lacks, edits made while disconnected included. It publishes its presence
again. Anything else ends the client: 1000, a fault of the client's own (1002,
1003, 1007, 1008, 1009) and every 4000-4999 application code (4401, 4403; 4410
the document was deleted, 4411 renamed). `reconnect=Backoff(max_attempts=5)`
gives up after 5 attempts in a row that failed to sync (`ClosedError`, the last
failure as its cause); `reconnect=False` makes one attempt.

State. `client.state` is a `State`: CONNECTING (the first attempt), CONNECTED
(open, not yet synced), SYNCED, RECONNECTING (lost: waiting out the backoff,
trying again) and CLOSED (not connected, not trying: before `start`, after
`close`, or stopped, `client.error` saying why). `on_state=callback` is called
with each new state; `await client.wait_state(State.SYNCED)` waits for one.

Waiting. Every wait takes a timeout (TimeoutError) and raises what stopped the
client if it stops meanwhile (`RefusedError`, `ClosedError`, ...); a client
that is reconnecting is waited for.

- `wait_synced()`: until the current connection is synced.
- `wait_for_change()`: until the server brought a change this method has not
  reported yet (none is missed between two calls; the first sync's content is
  not a change, what a resync brings is).
- `wait_for_awareness()`: the same for other clients' presence; returns `others`.
- `wait_until(predicate)`: until `predicate()` holds, re-checked after every
  message and every state change.

Tokens. `token=` sends the token as the `token.<TOKEN>` WebSocket subprotocol,
which collab reads like `?token=` in the URL (either works), and which stays
out of URLs and access logs.

TLS. A `wss://` URL verifies the server's certificate with Python's default
trust store; `cafile=` trusts a private CA (or a self-signed certificate)
instead, `ssl=` takes an `ssl.SSLContext` of the caller's own. Verification is
never skipped silently: a context given with `CERT_NONE` is logged.

Presence. `set_awareness(state)` publishes the client's own (None: gone);
`awareness` holds every state the server told the current connection about,
the client's own once echoed, and `others` all but its own.

`connect()` is the one-connection primitive that tests of the server use: it
opens one connection, sends sync step 1 and returns without waiting, and never
reconnects; `wait_closed()` then returns the close code and reason the server
ended it with.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import CERT_NONE, SSLContext, SSLEOFError, SSLError, create_default_context
from types import TracebackType
from typing import Any, Self

from pycrdt import Doc, TransactionEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import broadcast
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.protocol import State as WebSocketState

from .auth import TOKEN_SUBPROTOCOL_PREFIX
from .errors import ClosedError, ProtocolError, RefusedError
from .sync.protocol import (
    Auth,
    Awareness,
    AwarenessEntry,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    awareness_message,
    parse_frame,
)

__all__ = ["Backoff", "Client", "ClosedError", "RefusedError", "State", "retryable_close"]

logger = logging.getLogger("collab.client")

RETRYABLE_CLOSES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
"""Close codes after which the same connection may work again (RFC 6455 7.4.1 and the IANA registry): going
away, abnormal closure (no close frame), internal error, service restart, try again later, bad gateway."""

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
"""HTTP statuses of a refused upgrade that a server or proxy on its way back gives (websockets' choice too)."""

SUBPROTOCOL = "collab"
"""Offered with a token, so that the server answers with it and never echoes the token back."""


def retryable_close(code: int | None) -> bool:
    """Whether a connection that ended with close `code` is worth opening again."""
    return code in RETRYABLE_CLOSES


class State(enum.Enum):
    """Where a client is; see the module docstring."""

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
    """Attempts in a row that may fail to sync before the client gives up (None: it never does)."""

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.max_delay:
            raise ValueError(f"need 0 < initial <= max_delay, not {self.initial} and {self.max_delay}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (or None), not {self.max_attempts}")

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` (1 or more) attempts in a row that failed: between half and all of
        `initial * factor ** (failures - 1)`, at most `max_delay`. `draw()` is in [0, 1)."""
        ceiling = min(self.max_delay, self.initial * self.factor ** min(failures - 1, 64))
        return ceiling * (0.5 + draw() / 2)


def _stop_for(failure: Exception) -> BaseException | None:
    """None if another attempt may succeed after a connection attempt failed with `failure` (OSError,
    TimeoutError, websockets' InvalidHandshake, SSLError...); else the error the client stops with."""
    match failure:
        case InvalidStatus(response=response):
            if response.status_code in RETRYABLE_STATUSES:
                return None
            return RefusedError(response.status_code, _refusal_reason(response))
        case SSLEOFError():
            return None  # the connection was cut during the TLS handshake, as a server going down does
        case SSLError():
            return failure  # a certificate not trusted, TLS spoken to a plain port: retrying gives the same
        case OSError() | TimeoutError():
            return None  # refused, reset, unreachable, timed out
        case _:
            return failure  # an invalid URI, a peer that does not speak HTTP (ws:// to a TLS port)...


def _refusal_reason(response: Response) -> str:
    """The first line of a refused upgrade's body (collab's says why), else the status's reason phrase."""
    body = (response.body or b"").decode(errors="replace").strip()
    try:
        said = json.loads(body)
        if isinstance(said, dict) and isinstance(said.get("error"), str):
            body = said["error"]
    except ValueError:
        pass
    return body.splitlines()[0][:200] if body else response.reason_phrase


class Client:
    """One room's document, kept in sync with a server; see the module docstring."""

    def __init__(
        self,
        url: str,
        doc: Doc | None = None,
        *,
        token: str | None = None,
        ssl: SSLContext | None = None,
        cafile: str | Path | None = None,
        reconnect: Backoff | bool = True,
        sync_timeout: float = 30.0,
        on_state: Callable[[State], object] | None = None,
        **connect_options: Any,
    ) -> None:
        """`connect_options` go to websockets' `connect` (`open_timeout`, `additional_headers`, ...)."""
        self.url = url
        self.doc: Doc = doc if doc is not None else Doc()
        self.synced = asyncio.Event()
        """Set while the current connection is synced (cleared when a new one opens); `wait_synced` raises instead
        of waiting forever when the server refuses the client."""
        self.awareness: dict[int, Any] = {}
        """Presence states of every client the server told the current connection about (ours once echoed)."""
        self.permission_denied: str | None = None
        """The reason of the server's last auth message (a refused token, a read-only one's edits dropped)."""
        self.received_frames = 0
        self.state = State.CLOSED
        self.error: BaseException | None = None
        """Why the client stopped, once it has (None: it runs, or `close()` stopped it)."""
        self.backoff: Backoff | None
        """How the client reconnects; None: it does not."""
        if isinstance(reconnect, Backoff):
            self.backoff = reconnect
        else:
            self.backoff = Backoff() if reconnect else None
        self.sync_timeout = sync_timeout
        self._on_state = on_state
        self._connect_options = {"max_size": None, "compression": None, **connect_options}
        self._configure_tls(ssl, cafile)
        if token is not None:
            offered = self._connect_options.get("subprotocols") or [SUBPROTOCOL]
            self._connect_options["subprotocols"] = [*offered, TOKEN_SUBPROTOCOL_PREFIX + token]
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._changed = asyncio.Event()
        self._applying_remote = False
        self._step2_received = 0
        self._step2_on_connection = 0
        self._ever_synced = False
        self._last_failure: BaseException | None = None
        self._remote_changes = self._reported_changes = 0
        self._presence_changes = self._reported_presence = 0
        self._awareness_clock = 0
        self._local_state: str = "null"
        self._subscription: Any = self.doc.observe(self._on_change)

    def _configure_tls(self, context: SSLContext | None, cafile: str | Path | None) -> None:
        secure = self.url.startswith("wss:")
        if context is not None and cafile is not None:
            raise ValueError("pass ssl= or cafile=, not both: cafile= makes the context")
        if (context is not None or cafile is not None) and not secure:
            raise ValueError(f"ssl= and cafile= are for wss:// URLs, not {self.url}")
        if cafile is not None:
            context = create_default_context(cafile=str(cafile))
        if context is not None:
            if context.verify_mode == CERT_NONE:
                logger.info("TLS certificates are not verified for %s: the ssl context given says so", self.url)
            self._connect_options["ssl"] = context

    @property
    def client_id(self) -> int:
        return self.doc.client_id

    @property
    def ws(self) -> ClientConnection:
        """The current (or last) WebSocket connection."""
        if self._ws is None:
            raise RuntimeError("client is not connected")
        return self._ws

    @property
    def others(self) -> dict[int, Any]:
        """Other clients' presence states, by client id."""
        return {client_id: state for client_id, state in self.awareness.items() if client_id != self.client_id}

    @property
    def close_code(self) -> int | None:
        """The close code of the current (or last) connection; None while it is open."""
        return self._ws.close_code if self._ws else None

    @property
    def close_reason(self) -> str | None:
        return self._ws.close_reason if self._ws else None

    # Opening and closing.

    async def start(self, timeout: float | None = None) -> Self:
        """Connect (reconnecting as `reconnect` says) and wait for the first sync, at most `timeout` seconds
        (default `sync_timeout`); on failure the client is closed and the error raised."""
        if self._task is not None:
            raise RuntimeError("the client was started already")
        self._closing = False
        self._set_state(State.CONNECTING)
        self._task = asyncio.create_task(self._run(), name=f"collab client {self.url}")
        limit = self.sync_timeout if timeout is None else timeout
        try:
            await self.wait_synced(limit)
        except TimeoutError:
            await self.close()
            last = "" if self._last_failure is None else f"; the last attempt: {self._last_failure}"
            raise TimeoutError(f"{self.url}: not synced within {limit:g} s{last}") from None
        except BaseException:
            await self.close()
            raise
        return self

    async def connect(self) -> Self:
        """Open one connection and send sync step 1; return once it is open, without waiting for the sync and
        without ever reconnecting (for tests of what a server does with one connection). An HTTP refusal raises
        `RefusedError`, anything else what websockets raised."""
        if self._task is not None:
            raise RuntimeError("the client was started already")
        self._closing = False
        self._set_state(State.CONNECTING)
        try:
            ws = await connect(self.url, **self._connect_options)
        except InvalidStatus as refusal:
            self._stop(RefusedError(refusal.response.status_code, _refusal_reason(refusal.response)))
            raise self._stopped() from None
        except BaseException as error:
            self._stop(error)
            raise
        self._opened(ws)
        self._task = asyncio.create_task(self._serve_once(ws), name=f"collab client {self.url}")
        return self

    async def close(self) -> None:
        """Close the connection (if open) and stop reconnecting; waits then raise `ClosedError`."""
        self._closing = True
        task = self._task
        if self._ws is not None and self.state in (State.CONNECTED, State.SYNCED):
            await self._ws.close()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if self.state is not State.CLOSED:
            self._set_state(State.CLOSED)
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # Presence.

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Publish our presence (None: we are leaving); sent again on every reconnect."""
        self._awareness_clock += 1
        self._local_state = json.dumps(state)
        self._send(awareness_message([AwarenessEntry(self.client_id, self._awareness_clock, self._local_state)]))

    # Waiting.

    async def wait_synced(self, timeout: float | None = 10.0) -> None:
        """Wait until the current connection is synced; raise what stopped the client if it stops first."""
        await self.wait_state(State.SYNCED, timeout=timeout)

    async def wait_state(self, *states: State, timeout: float | None = 10.0) -> State:
        """Wait until the client is in one of `states`; return it. If it stops first (unless CLOSED is among
        them), raise what stopped it."""
        await self._wait(lambda: self.state in states, timeout, stop=State.CLOSED not in states)
        return self.state

    async def wait_for_change(self, timeout: float | None = 10.0) -> None:
        """Wait until the server brought a change to the document that this method has not reported yet."""
        await self.wait_until(lambda: self._remote_changes > self._reported_changes, timeout)
        self._reported_changes = self._remote_changes

    async def wait_for_awareness(self, timeout: float | None = 10.0) -> dict[int, Any]:
        """Wait until another client's presence changed (came, moved, left) since this method last returned;
        return `others`."""
        await self.wait_until(lambda: self._presence_changes > self._reported_presence, timeout)
        self._reported_presence = self._presence_changes
        return self.others

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = 10.0) -> None:
        """Wait until `predicate()` holds, re-checking after every received frame and state change; raise what
        stopped the client if it stops first and the predicate still does not hold."""
        await self._wait(predicate, timeout, stop=True)

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None, *, stop: bool) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if stop and self.state is State.CLOSED:
                    raise self._stopped()
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Wait until the client stops (for `connect()`: until its connection closes); return the last close code
        and reason."""
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=timeout)
            if not done:
                raise TimeoutError(f"{self.url}: still {self.state.value} after {timeout:g} s")
        return self.close_code, self.close_reason

    async def resync(self, timeout: float = 10.0) -> None:
        """Ask the server for what we lack and wait for its answer.

        The server handles a connection's messages in order, so once this returns
        it has handled everything we sent before.
        """
        answered = self._step2_received
        self._send(SyncStep1(self.doc.get_state()).encode())
        await self.wait_until(lambda: self._step2_received > answered, timeout)

    def send_raw(self, frame: bytes | str) -> None:
        """Send any frame as is: for tests of what the server does with bad input."""
        broadcast([self.ws], frame)

    # The connections.

    async def _run(self) -> None:
        """Open connections until one ends in a way no retry fixes, `close()` is called or the backoff gives up."""
        failures = 0
        try:
            while True:
                failure: BaseException
                try:
                    ws = await connect(self.url, **self._connect_options)
                except Exception as error:  # each kind is sorted by _stop_for
                    if (stop := _stop_for(error)) is not None:
                        self._stop(stop)
                        return
                    synced, failure = False, error
                else:
                    synced = await self._serve(ws)
                    code, reason = ws.close_code, ws.close_reason or ""
                    if self._closing:
                        return
                    if not retryable_close(code):
                        self._stop(self._ended(code, reason))
                        return
                    failure = ClosedError(f"the connection closed ({code} {reason})".rstrip(), code, reason)
                self._last_failure = failure
                failures = 0 if synced else failures + 1
                backoff = self.backoff
                if backoff is None:
                    self._stop(failure)  # one attempt: what it ended with, as it is
                    return
                if backoff.max_attempts is not None and failures >= backoff.max_attempts:
                    self._stop(self._gave_up(failure, failures))
                    return
                self._set_state(State.RECONNECTING)
                delay = backoff.delay(max(failures, 1))
                logger.info("%s: %s; connecting again in %.1f s", self.url, failure, delay)
                await asyncio.sleep(delay)  # the backoff itself: nothing to wait for but time
        except Exception as bug:
            logger.exception("the client of %s stopped on an unexpected error", self.url)
            self._stop(bug)

    async def _serve_once(self, ws: ClientConnection) -> None:
        """`connect()`'s one connection, to its end."""
        await self._read(ws)
        if not self._closing:
            self._stop(self._ended(ws.close_code, ws.close_reason or ""))

    async def _serve(self, ws: ClientConnection) -> bool:
        """One connection of `_run`, to its end; whether it synced."""
        try:
            self._opened(ws)
            await self._read(ws)
        finally:
            if ws.state is not WebSocketState.CLOSED:
                ws.transport.abort()  # cancelled by close() while opening: nothing to say goodbye to
        return self._step2_on_connection > 0

    def _opened(self, ws: ClientConnection) -> None:
        """A new connection: greet the server (our state vector, our presence) as the stock provider does."""
        self._ws = ws
        self.synced.clear()
        self.awareness.clear()  # the server tells a new connection who is there
        self._step2_on_connection = 0
        self._set_state(State.CONNECTED)
        self._send(SyncStep1(self.doc.get_state()).encode())
        if self._local_state != "null":
            # The server broadcast our previous connection's removal at clock + 1: clock + 2 is newer everywhere.
            self._awareness_clock += 2
            self._send(awareness_message([AwarenessEntry(self.client_id, self._awareness_clock, self._local_state)]))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self.received_frames += 1
                self._receive(frame)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self._changed.set()

    def _ended(self, code: int | None, reason: str) -> ClosedError:
        """What a connection the server ended with `code` stops the client with."""
        reason = reason or self.permission_denied or ""
        if code in (None, 1000, 1005) or retryable_close(code):  # normal, or one-shot (connect())
            return ClosedError(f"the server closed the connection ({code} {reason})".rstrip(" "), code, reason)
        return RefusedError(code, reason)

    def _gave_up(self, failure: BaseException, failures: int) -> ClosedError:
        code, reason = (failure.code, failure.reason) if isinstance(failure, ClosedError) else (None, "")
        message = f"gave up on {self.url} after {failures} attempt(s) in a row that failed; the last: {failure}"
        error = ClosedError(message, code, reason)
        error.__cause__ = failure
        return error

    def _stop(self, error: BaseException) -> None:
        self.error = error
        self._set_state(State.CLOSED)

    def _stopped(self) -> BaseException:
        """What a wait raises once the client stopped."""
        if self._task is None and not self._closing:
            return ClosedError("the client is not started: use `async with Client(...)` or `await client.start()`")
        if self.error is None:
            return ClosedError("the client is closed", self.close_code, self.close_reason or "")
        return self.error.with_traceback(None)

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        self.state = state
        self._changed.set()
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                logger.exception("on_state callback failed on %s", state.value)

    # Messages.

    def _send(self, frame: bytes) -> None:
        """Send if connected; what is not sent meanwhile reaches the server with the next connection's sync."""
        if self._ws is not None and self._ws.state is WebSocketState.OPEN:
            broadcast([self._ws], frame)

    def _on_change(self, event: TransactionEvent) -> None:
        if self._applying_remote:
            self._remote_changes += 1
        else:
            self._send(Update(event.update).encode())

    def _apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying_remote = False

    def _receive(self, frame: bytes | str) -> None:
        """Handle one frame; one that cannot be used is logged and skipped, and the reader goes on.

        A reader that died of a frame it could not parse (an awareness clock of 2**53) left the
        connection open but deaf: `synced` never set, `collab import` waiting forever.
        """
        if isinstance(frame, str):
            logger.warning("ignored a text frame from the server: the protocol is binary")
            return
        try:
            for message in parse_frame(frame):
                self._handle(message)
        except ProtocolError as error:
            logger.warning("ignored a frame from the server that is not valid: %s", error)
        except Exception:
            logger.exception("ignored a frame from the server that could not be applied")

    def _handle(self, message: object) -> None:
        match message:
            case SyncStep1(state_vector=state_vector):
                self._send(SyncStep2(self.doc.get_update(state_vector)).encode())
            case SyncStep2(update=update):
                self._apply_remote(update)
                self._step2_received += 1
                self._step2_on_connection += 1
                if not self._ever_synced:  # what the first sync brings is the document, not a change to it
                    self._ever_synced = True
                    self._reported_changes, self._reported_presence = self._remote_changes, self._presence_changes
                self.synced.set()
                if self.state is State.CONNECTED:
                    self._set_state(State.SYNCED)
            case Update(update=update):
                self._apply_remote(update)
            case Awareness(entries=entries):
                for entry in entries:
                    if entry.is_removal:
                        self.awareness.pop(entry.client_id, None)
                    else:
                        self.awareness[entry.client_id] = json.loads(entry.state)
                    if entry.client_id != self.client_id:
                        self._presence_changes += 1
            case QueryAwareness():
                if self._local_state != "null":
                    entry = AwarenessEntry(self.client_id, self._awareness_clock, self._local_state)
                    self._send(awareness_message([entry]))
            case Auth(reason=reason):
                self.permission_denied = reason
