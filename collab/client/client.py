"""`Client`: one room's document kept in sync with a server over reconnecting WebSocket connections.

The package docstring (`collab.client`) is the reference; this module is its I/O. What to do after a failure
is decided in `policy`, presence is kept in `presence`; here connections are opened, read and greeted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import CERT_NONE, SSLContext, create_default_context
from types import TracebackType
from typing import Any, Self

from pycrdt import Doc, TransactionEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import broadcast
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus, InvalidURI
from websockets.protocol import State as WebSocketState
from websockets.uri import WebSocketURI, parse_uri

from ..auth import TOKEN_SUBPROTOCOL_PREFIX
from ..errors import ClosedError, ProtocolError, RefusedError
from ..sync.protocol import Auth, Awareness, QueryAwareness, SyncStep1, SyncStep2, Update, parse_frame
from .policy import Backoff, State, cut_in_handshake, redacted_url, refusal_reason, retryable_close, stop_for
from .presence import RENEWAL_INTERVAL, Presence

__all__ = ["MAX_SIZE", "MAX_UNSENT", "Client"]

logger = logging.getLogger("collab.client")

SUBPROTOCOL = "collab"
"""Offered with a token, so that the server answers with it and never echoes the token back."""

MAX_SIZE = 256 * 2**20
"""The largest message accepted from the server (websockets' `max_size`): a sync step 2 holds the whole
document, so this is four times collab's default --max-message-size, and a server cannot make the client hold
more than this in one message."""

MAX_UNSENT = 128 * 2**20
"""Bytes waiting in the write buffer, unread by the server, above which the client drops the connection
rather than queue more (twice collab's default --max-message-size, so that one large edit fits under it)."""

TLS_PROBE_TIMEOUT = 5.0
"""Seconds the check that a ws:// URL points at a TLS port may take."""


@dataclass(eq=False)
class _Link:
    """One connection, and where its sync stands."""

    ws: ClientConnection
    asked: int = 0
    """Sync step 1 messages sent on it; the server answers each with a step 2, in order."""
    answers: int = 0
    """Sync step 2 messages received on it."""
    answered: bool = False
    """Whether we answered the server's step 1: what it lacked of ours (offline edits) is on its way."""
    synced_at: float | None = None
    """Loop time of its first step 2."""
    deadline: asyncio.Timeout | None = None
    """Until its first step 2 (rescheduled to never then)."""
    dropped: str | None = None
    """Why this client dropped it (no sync in time, a server that does not read): worth trying again."""
    ended: bool = False
    """Read to its end: nothing more will arrive on it."""


class Client:
    """One room's document, kept in sync with a server; see the `collab.client` docstring."""

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
        presence_interval: float = RENEWAL_INTERVAL,
        max_unsent: int = MAX_UNSENT,
        **connect_options: Any,
    ) -> None:
        """`connect_options` go to websockets' `connect` (`open_timeout`, `additional_headers`, `max_size`...)."""
        self.url = url
        self._shown = redacted_url(url)
        try:
            self._uri: WebSocketURI = parse_uri(url)
        except InvalidURI:
            raise ValueError(f"{self._shown} is not a WebSocket URL (ws://HOST[:PORT]/NAME or wss://...)") from None
        if not sync_timeout > 0 or not presence_interval > 0 or not max_unsent > 0:
            raise ValueError("sync_timeout, presence_interval and max_unsent must be more than 0")
        self.doc: Doc = doc if doc is not None else Doc()
        self.synced = asyncio.Event()
        """Set while the current connection is synced; cleared as soon as it is lost. For old callers: waiting on
        it hangs when the server refuses the client, where `wait_synced()` raises."""
        self.permission_denied: str | None = None
        """The reason of the server's last auth message: a read-only token's edits are dropped ("read-only
        access: ..."), or why a token was refused. The connection stays open for the first."""
        self.received_frames = 0
        """Frames received on every connection so far (for tests that count what the server sends)."""
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
        self.presence_interval = presence_interval
        self.max_unsent = max_unsent
        self._on_state = on_state
        self._connect_options = {"max_size": MAX_SIZE, "compression": None, **connect_options}
        self._configure_tls(ssl, cafile)
        if token is not None:
            offered = self._connect_options.get("subprotocols") or [SUBPROTOCOL]
            self._connect_options["subprotocols"] = [*offered, TOKEN_SUBPROTOCOL_PREFIX + token]
        self._presence = Presence(self.doc.client_id)
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: int | None = None
        self._closing = False
        self._changed = asyncio.Event()
        self._applying_remote = False
        self._ever_synced = False
        self._last_failure: BaseException | None = None
        self._remote_changes = self._reported_changes = 0
        self._reported_presence = 0
        self._subscription: Any = self.doc.observe(self._on_change)

    def _configure_tls(self, context: SSLContext | None, cafile: str | Path | None) -> None:
        if context is not None and cafile is not None:
            raise ValueError("pass ssl= or cafile=, not both: cafile= makes the context")
        if (context is not None or cafile is not None) and not self._uri.secure:
            raise ValueError(f"ssl= and cafile= are for wss:// URLs, not {self._shown}")
        if cafile is not None:
            context = create_default_context(cafile=str(cafile))
        if context is not None:
            if context.verify_mode == CERT_NONE or not context.check_hostname:
                what = "certificates are not verified" if context.verify_mode == CERT_NONE else "names are not checked"
                logger.warning("TLS %s for %s: the ssl context given says so", what, self._shown)
            self._connect_options["ssl"] = context

    @property
    def client_id(self) -> int:
        return self.doc.client_id

    @property
    def awareness(self) -> dict[int, Any]:
        """Presence states of every client the current connection was told about (ours once echoed); empty
        while no connection is open."""
        return self._presence.states

    @property
    def others(self) -> dict[int, Any]:
        """Other clients' presence states, by client id."""
        return self._presence.others()

    @property
    def ws(self) -> ClientConnection:
        """The current (or last) WebSocket connection: low level, for tests (`ws.transport.abort()`)."""
        if self._link is None:
            raise RuntimeError("client is not connected")
        return self._link.ws

    @property
    def close_code(self) -> int | None:
        """The close code of the current (or last) connection; None while it is open."""
        return self._link.ws.close_code if self._link else None

    @property
    def close_reason(self) -> str | None:
        return self._link.ws.close_reason if self._link else None

    # Opening and closing.

    async def start(self, timeout: float | None = None) -> Self:
        """Connect (reconnecting as `reconnect` says) and wait for the first sync, at most `timeout` seconds
        (default `sync_timeout`); on failure the client is closed and the error raised."""
        self._begin()
        self._task = asyncio.create_task(self._run(), name=f"collab client {self._shown}")
        limit = self.sync_timeout if timeout is None else timeout
        try:
            await self.wait_synced(limit)
        except TimeoutError:
            await self.close()
            last = "" if self._last_failure is None else f"; the last attempt: {self._last_failure}"
            raise TimeoutError(f"{self._shown}: not synced within {limit:g} s{last}") from None
        except BaseException:
            await self.close()
            raise
        return self

    async def connect(self) -> Self:
        """Low level, for tests of what a server does with one connection: open one connection and send sync
        step 1; return once it is open, without waiting for the sync, with no sync deadline, never reconnecting.
        An HTTP refusal raises `RefusedError`, anything else what websockets raised."""
        self._begin()
        try:
            ws = await connect(self.url, **self._connect_options)
        except InvalidStatus as refusal:
            self._stop(RefusedError(refusal.response.status_code, refusal_reason(refusal.response)))
            raise self._stopped() from None
        except BaseException as error:
            self._stop(error)
            raise
        link = _Link(ws)
        self._opened(link)
        self._task = asyncio.create_task(self._serve_once(link), name=f"collab client {self._shown}")
        return self

    def _begin(self) -> None:
        if self._task is not None or self.state is not State.CLOSED or self._subscription is None:
            raise RuntimeError("the client was started already: make a new one")
        self._thread = threading.get_ident()
        self._closing = False
        self._set_state(State.CONNECTING)

    async def close(self) -> None:
        """Close the connection (if open) and stop reconnecting; waits then raise `ClosedError`."""
        self._closing = True
        task, link = self._task, self._link
        if link is not None and link.ws.state is WebSocketState.OPEN:
            await link.ws.close()  # at most websockets' close_timeout (10 s) for the server's answer
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
        """Publish our presence (None: we are leaving); renewed every `presence_interval` seconds while it is
        not None, and sent again on every reconnect."""
        self._check_thread()
        self._send(self._presence.publish(state))

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
        await self.wait_until(lambda: self._presence.changes > self._reported_presence, timeout)
        self._reported_presence = self._presence.changes
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
                raise TimeoutError(f"{self._shown}: still {self.state.value} after {timeout:g} s")
        return self.close_code, self.close_reason

    async def resync(self, timeout: float | None = 10.0) -> None:
        """Wait until the server has everything this client has: it answered a sync step 1 sent after all of
        it. Through a reconnect, that is a step 1 sent on the new connection after our answer to the server's
        own step 1, which carries what was typed offline; the step 2 answering the new connection's greeting
        came before the server read that answer, so it proves nothing. Raises what stopped the client."""
        async with asyncio.timeout(timeout):
            while True:
                await self._wait(self._answering, None, stop=True)
                link = self._link
                assert link is not None  # _answering says so
                if await self._answered(link, self._ask(link)):
                    return

    async def _answered(self, link: _Link, asked: int) -> bool:
        """Wait until `link` answered its step 1 number `asked` (True) or ended first (False)."""
        await self._wait(lambda: link.answers >= asked or link.ended, None, stop=True)
        return link.answers >= asked

    def _answering(self) -> bool:
        """Whether the current connection is open and carries all we have (our step 2 answer is sent)."""
        link = self._link
        return link is not None and link.answered and not link.ended and link.ws.state is WebSocketState.OPEN

    def send_raw(self, frame: bytes | str) -> None:
        """Low level, for tests of what the server does with bad input: send any frame as is, now."""
        broadcast([self.ws], frame)

    # The connections.

    async def _run(self) -> None:
        """Open connections until one ends in a way no retry fixes, `close()` is called or the backoff gives up."""
        failures = 0
        try:
            while True:
                lasted = False
                try:
                    ws = await connect(self.url, **self._connect_options)
                except Exception as error:  # each kind is sorted by _stop_for
                    if (stop := await self._stop_for(error)) is not None:
                        self._stop(stop)
                        return
                    failure: BaseException = error
                else:
                    link = _Link(ws)
                    await self._serve(link)
                    if self._closing:
                        return
                    failure, retry = self._ended(link)
                    if not retry:
                        self._stop(failure)
                        return
                    lasted = self._lasted(link)
                self._last_failure = failure
                failures = 0 if lasted else failures + 1
                backoff = self.backoff
                if backoff is None:
                    self._stop(failure)  # one attempt: what it ended with, as it is
                    return
                if backoff.max_attempts is not None and failures >= backoff.max_attempts:
                    self._stop(self._gave_up(failure, failures))
                    return
                self._set_state(State.RECONNECTING)
                delay = backoff.delay(max(failures, 1))
                logger.info("%s: %s; connecting again in %.1f s", self._shown, failure, delay)
                await asyncio.sleep(delay)  # the backoff itself: nothing to wait for but time
        except Exception as bug:
            logger.exception("the client of %s stopped on an unexpected error", self._shown)
            self._stop(bug)

    def _lasted(self, link: _Link) -> bool:
        """Whether `link` stayed synced long enough to count as a success (`Backoff.stable_after`)."""
        stable_after = self.backoff.stable_after if self.backoff is not None else 0.0
        return link.synced_at is not None and asyncio.get_running_loop().time() - link.synced_at >= stable_after

    async def _stop_for(self, failure: Exception) -> BaseException | None:
        """`policy.stop_for`, and a ws:// URL pointed at a TLS port told from a connection cut by a server going
        down: both end the connection before the HTTP answer."""
        stop = stop_for(failure)
        if stop is None and cut_in_handshake(failure) and not self._uri.secure and await self._speaks_tls():
            stop = InvalidMessage(f"{self._shown} is a ws:// URL, but the server speaks TLS: use wss://")
            stop.__cause__ = failure
        return stop

    async def _speaks_tls(self) -> bool:
        """Whether the server completes a TLS handshake (certificate unchecked: nothing is sent but the hello)."""
        probe = create_default_context()
        probe.check_hostname = False
        probe.verify_mode = CERT_NONE
        try:
            async with asyncio.timeout(TLS_PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(self._uri.host, self._uri.port, ssl=probe)
        except (OSError, TimeoutError):
            return False
        writer.transport.abort()
        return True

    async def _serve_once(self, link: _Link) -> None:
        """`connect()`'s one connection, to its end."""
        try:
            await self._read_renewing(link)
        finally:
            self._lost(link)
        if not self._closing:
            self._stop(self._closed_by_server(link.ws.close_code, link.ws.close_reason or ""))

    async def _serve(self, link: _Link) -> None:
        """One connection of `_run`, to its end; dropped if it is not synced within `sync_timeout`."""
        ws = link.ws
        try:
            self._opened(link)
            try:
                async with asyncio.timeout(self.sync_timeout) as link.deadline:
                    await self._read_renewing(link)
            except TimeoutError:
                if link.deadline is None or not link.deadline.expired():
                    raise
                link.dropped = f"not synced within {self.sync_timeout:g} s of connecting"
                await ws.close(1001, "not synced in time")
        finally:
            self._lost(link)
            if ws.state is not WebSocketState.CLOSED:
                ws.transport.abort()  # cancelled by close() while opening: nothing to say goodbye to

    async def _read_renewing(self, link: _Link) -> None:
        """Read `link` to its end, renewing our presence meanwhile."""
        renewal = asyncio.create_task(self._renew_presence(), name=f"collab client presence {self._shown}")
        try:
            await self._read(link)
        finally:
            renewal.cancel()

    async def _renew_presence(self) -> None:
        """Every `presence_interval` seconds, our state again at a higher clock (`Presence.renewal`)."""
        while True:
            await asyncio.sleep(self.presence_interval)  # a period: time is all there is to wait for
            if (frame := self._presence.renewal()) is not None:
                self._send(frame)

    def _opened(self, link: _Link) -> None:
        """A new connection: greet the server (our state vector, our presence) as the stock provider does."""
        self._link = link
        self._set_state(State.CONNECTED)
        self._ask(link)
        if (greeting := self._presence.greeting()) is not None:
            self._send(greeting)

    def _lost(self, link: _Link) -> None:
        """`link` is read to its end: nothing of it is current any more."""
        link.ended = True
        self.synced.clear()
        self._presence.lost()
        self._changed.set()

    def _ask(self, link: _Link) -> int:
        """Send sync step 1 on `link`; which of its step 1 messages this is."""
        self._send(SyncStep1(self.doc.get_state()).encode())
        link.asked += 1
        return link.asked

    async def _read(self, link: _Link) -> None:
        try:
            async for frame in link.ws:
                self.received_frames += 1
                self._receive(frame)
                self._changed.set()
        except ConnectionClosed:
            pass

    def _ended(self, link: _Link) -> tuple[BaseException, bool]:
        """What a connection of `_run` ended with, and whether another one is worth opening."""
        ws = link.ws
        if link.dropped is not None:
            return ClosedError(f"dropped the connection: {link.dropped}", ws.close_code, ws.close_reason or ""), True
        sent = ws.protocol.close_sent
        if sent is not None and not ws.protocol.close_rcvd_then_sent:
            # websockets closed it: a keepalive ping unanswered (1011, retried), a message above max_size (1009)
            # or one that breaks the protocol (1002, 1007): the server would send the same again.
            said = f"this client closed the connection ({sent.code} {sent.reason})".rstrip(" ")
            if sent.code == 1009:
                said += ": pass max_size= to take larger messages"
            return ClosedError(said, sent.code, sent.reason), retryable_close(sent.code)
        code, reason = ws.close_code, ws.close_reason or ""
        if retryable_close(code):
            return ClosedError(f"the connection closed ({code} {reason})".rstrip(), code, reason), True
        return self._closed_by_server(code, reason), False

    def _closed_by_server(self, code: int | None, reason: str) -> ClosedError:
        """What a connection the server ended with `code` stops the client with."""
        reason = reason or self.permission_denied or ""
        if code in (None, 1000, 1005) or retryable_close(code):  # normal, or one-shot (connect())
            return ClosedError(f"the server closed the connection ({code} {reason})".rstrip(" "), code, reason)
        return RefusedError(code, reason)

    def _gave_up(self, failure: BaseException, failures: int) -> ClosedError:
        code, reason = (failure.code, failure.reason) if isinstance(failure, ClosedError) else (None, "")
        message = f"gave up on {self._shown} after {failures} attempt(s) in a row that failed; the last: {failure}"
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

    def _check_thread(self) -> None:
        """The client, its Doc and its connection belong to the thread of the loop that started it."""
        if self._thread is not None and threading.get_ident() != self._thread:
            raise RuntimeError(
                "a collab Client is used from its event loop's thread only: hand the change over with"
                " loop.call_soon_threadsafe"
            )

    def _send(self, frame: bytes) -> None:
        """Send if connected; what is not sent meanwhile reaches the server with the next connection's sync.

        A server that stopped reading would let the write buffer grow without end (websockets' broadcast has
        no backpressure): above `max_unsent` bytes waiting, the connection is dropped and opened again, and the
        new one's sync sends what the document has, once.
        """
        link = self._link
        if link is None or link.ended or link.ws.state is not WebSocketState.OPEN:
            return
        waiting = link.ws.transport.get_write_buffer_size()
        if waiting > self.max_unsent:
            if link.dropped is None:
                link.dropped = f"the server did not read the {waiting} bytes sent (more than max_unsent)"
                logger.warning("%s: %s", self._shown, link.dropped)
                link.ws.transport.abort()
            return
        broadcast([link.ws], frame)

    def _on_change(self, event: TransactionEvent) -> None:
        if self._applying_remote:
            self._remote_changes += 1
        else:
            self._check_thread()
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
        connection open but deaf: `synced` never set, a caller waiting forever.
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
        """One message of the current connection (the one being read: there is one at a time)."""
        link = self._link
        assert link is not None
        match message:
            case SyncStep1(state_vector=state_vector):
                self._send(SyncStep2(self.doc.get_update(state_vector)).encode())
                link.answered = True
            case SyncStep2(update=update):
                self._apply_remote(update)
                link.answers += 1
                if link.synced_at is None:
                    self._synced(link)
            case Update(update=update):
                self._apply_remote(update)
            case Awareness(entries=entries):
                self._presence.receive(entries)
            case QueryAwareness():
                if (answer := self._presence.answer()) is not None:
                    self._send(answer)
            case Auth(reason=reason):
                self.permission_denied = reason

    def _synced(self, link: _Link) -> None:
        """`link`'s first step 2: the document holds the server's content, the greeting's presence is in."""
        link.synced_at = asyncio.get_running_loop().time()
        if link.deadline is not None:
            link.deadline.reschedule(None)
        self._presence.greeted()
        if not self._ever_synced:  # what the first sync brings is the document, not a change to it
            self._ever_synced = True
            self._reported_changes, self._reported_presence = self._remote_changes, self._presence.changes
        self.synced.set()
        if self.state is State.CONNECTED:
            self._set_state(State.SYNCED)
