"""A minimal WebSocket client for load generation: an asyncio Protocol, no task or queue per frame.

Why not `websockets`: its client runs every frame through a generator-based parser, a queue and a task
switch. On a 2-core machine whatever the load generator spends is taken from the server under test, so
the passive receivers must cost as little as possible. This client does only what the benchmark needs of
RFC 6455: the opening handshake (section 4.1), masked frames out (5.3: a client MUST mask), unmasked frames
in (binary, ping answered with pong, close answered with close), fragmented messages reassembled, no
extensions. Sending is `transport.write`: frames can be encoded (and masked) ahead of time by
`encode_frame`, so a writer's hot loop does no per-frame work at all.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from websockets.speedups import apply_mask  # C; the same masking the servers undo

__all__ = ["WsClient", "connect", "encode_frame"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_HANDSHAKE = 16 * 1024

MessageHandler = Callable[[bytes], None]


def encode_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    return header + mask + apply_mask(payload, mask)


class WsClient(asyncio.Protocol):
    """One client connection; `set_handler` decides what happens to each binary message (bytes)."""

    def __init__(self, host: str, path: str) -> None:
        self._early: list[bytes] = []
        self.on_message: MessageHandler = self._early.append
        """Until `set_handler`, messages are kept: the server may speak right after its 101 response."""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self._host = host
        self._path = path
        self._key = base64.b64encode(os.urandom(16))
        self._handshake = b""
        self._chunks: list[bytes] = []  # an incomplete frame, waiting for `_need` bytes
        self._have = 0
        self._need = 0
        self._fragments: list[bytes] = []
        self._close_sent = False
        self._can_write = asyncio.Event()
        self._can_write.set()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but quacks alike
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self._path.encode(), self._host.encode(), self._key)
        )

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            data = self._read_handshake(data)
            if not data:
                return
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks = []
        self._parse(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def set_handler(self, handler: MessageHandler) -> None:
        """Hand every binary message to `handler`, starting with those that arrived before it was set."""
        self.on_message = handler
        early, self._early = self._early, []
        for message in early:
            handler(message)

    # Sending

    def send(self, payload: bytes) -> None:
        """Send one binary message."""
        self.write_frame(encode_frame(payload))

    def write_frame(self, frame: bytes) -> None:
        """Send a frame made by `encode_frame`; dropped once the connection is closing."""
        if self.transport is not None and not self._close_sent:
            self.transport.write(frame)

    def write_frames(self, frames: list[bytes]) -> None:
        """Send several frames made by `encode_frame` in one write."""
        if self.transport is not None and not self._close_sent:
            self.transport.writelines(frames)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        await self._can_write.wait()

    async def close(self, timeout: float = 5.0) -> None:
        """Close handshake (code 1000), then the TCP connection; bounded by `timeout`."""
        if self.transport is None:
            return
        if not self._close_sent and not self.closed.done():
            self.transport.write(encode_frame((1000).to_bytes(2, "big"), OP_CLOSE))
            self._close_sent = True
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            pass
        self.transport.close()

    # Receiving

    def _read_handshake(self, data: bytes) -> bytes:
        self._handshake += data
        head, sep, rest = self._handshake.partition(b"\r\n\r\n")
        if not sep:
            if len(self._handshake) > MAX_HANDSHAKE:
                self._fail("handshake response too long")
            return b""
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
        }
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if not lines[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept:
            self._fail(f"handshake refused: {lines[0]!r}")
            return b""
        self._handshake = b""
        self.opened.set_result(None)
        return rest

    def _parse(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        while n - pos >= 2:
            length = data[pos + 1] & 0x7F  # servers never mask (RFC 6455 section 5.1)
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                self._chunks, self._have, self._need = [data[pos:]], n - pos, end - pos
                return
            first = data[pos]
            if first == 0x82:  # FIN + binary: every y-websocket message
                self.on_message(data[start:end])
            else:
                self._other_frame(first, data[start:end])
            pos = end
        if pos < n:  # an incomplete header: parse again when anything more arrives
            self._chunks, self._have, self._need = [data[pos:]], n - pos, n - pos + 1

    def _other_frame(self, first: int, payload: bytes) -> None:
        opcode, fin = first & 0x0F, first & 0x80
        if opcode in (OP_BINARY, OP_TEXT, OP_CONT):
            self._fragments.append(payload)
            if fin:
                message, self._fragments = b"".join(self._fragments), []
                self.on_message(message)
        elif opcode == OP_PING:
            self.write_frame(encode_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self._close_sent and self.transport is not None:
                self.transport.write(encode_frame(payload[:2], OP_CLOSE))
                self._close_sent = True
            if not self.closed.done():
                self.closed.set_result(None)
            if self.transport is not None:
                self.transport.close()

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()


async def connect(url: str, timeout: float = 10.0) -> WsClient:
    """Open a connection to `url` (ws://host:port/path) and complete the handshake."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"not a ws:// URL: {url!r}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, client = await loop.create_connection(
            lambda: WsClient(f"{parts.hostname}:{port}", path), parts.hostname, port
        )
        await client.opened
    return client
