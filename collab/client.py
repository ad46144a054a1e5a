"""A y-websocket client around a pycrdt Doc: for tests, benchmarks and scripts.

    async with Client("ws://127.0.0.1:1234/notes") as client:
        await client.synced.wait()
        client.doc.get("content", type=Text).insert(0, "hello")

Local changes to `client.doc` are sent as updates; what the server sends is
applied to it. It speaks the same protocol as the stock JavaScript provider:
sync step 1 on connect, step 2 in answer to the server's step 1, awareness.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from pycrdt import Doc, TransactionEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import broadcast
from websockets.exceptions import ConnectionClosed

from .errors import ProtocolError
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

__all__ = ["Client"]

logger = logging.getLogger("collab.client")


class Client:
    """One connection to one room, with its own Doc and awareness."""

    def __init__(self, url: str, doc: Doc | None = None, **connect_options: Any) -> None:
        self.url = url
        self.doc: Doc = doc if doc is not None else Doc()
        self.synced = asyncio.Event()
        """Set once the server answered our sync step 1."""
        self.awareness: dict[int, Any] = {}
        """Presence states of every client the server told us about (ours included once echoed)."""
        self.permission_denied: str | None = None
        self.received_frames = 0
        self._step2_received = 0
        self._connect_options = {"max_size": None, "compression": None, **connect_options}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._applying_remote = False
        self._awareness_clock = 0
        self._local_state: str = "null"
        self._subscription = self.doc.observe(self._on_local_change)

    @property
    def client_id(self) -> int:
        return self.doc.client_id

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("client is not connected")
        return self._ws

    async def connect(self) -> Self:
        self._ws = await connect(self.url, **self._connect_options)
        self._reader = asyncio.create_task(self._read_forever())
        self._send(SyncStep1(self.doc.get_state()).encode())
        return self

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        self.doc.unobserve(self._subscription)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Publish our presence (None: we are leaving)."""
        self._awareness_clock += 1
        self._local_state = json.dumps(state)
        self._send(awareness_message([AwarenessEntry(self.client_id, self._awareness_clock, self._local_state)]))

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
        if isinstance(frame, str):
            broadcast([self.ws], frame)
        else:
            self._send(frame)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds, re-checking after every received frame."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                if self._reader is not None and self._reader.done():
                    if predicate():
                        return
                    raise ConnectionError(f"connection closed ({self.close_code} {self.close_reason})")
                await self._changed.wait()

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Wait until the server closes the connection; return its close code and reason."""
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        return self.close_code, self.close_reason

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code if self._ws else None

    @property
    def close_reason(self) -> str | None:
        return self._ws.close_reason if self._ws else None

    def _send(self, frame: bytes) -> None:
        broadcast([self.ws], frame)

    def _on_local_change(self, event: TransactionEvent) -> None:
        if not self._applying_remote and self._ws is not None:
            self._send(Update(event.update).encode())

    def _apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying_remote = False

    async def _read_forever(self) -> None:
        try:
            async for frame in self.ws:
                self.received_frames += 1
                self._receive(frame)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self._changed.set()

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
                self.synced.set()
            case Update(update=update):
                self._apply_remote(update)
            case Awareness(entries=entries):
                for entry in entries:
                    if entry.is_removal:
                        self.awareness.pop(entry.client_id, None)
                    else:
                        self.awareness[entry.client_id] = json.loads(entry.state)
            case QueryAwareness():
                if self._local_state != "null":
                    entry = AwarenessEntry(self.client_id, self._awareness_clock, self._local_state)
                    self._send(awareness_message([entry]))
            case Auth(reason=reason):
                self.permission_denied = reason
