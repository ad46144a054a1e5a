"""A real HTTP server on 127.0.0.1 that receives webhook requests, for the webhook tests.

It reads each request whole (head and Content-Length body), keeps it, and
answers `status` (after `delay` seconds); it can stop and start again on the
same port, as a receiver that goes down for a while does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collab.webhooks import verify

MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes
    status: int
    """What the receiver answered."""
    at: float

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Receiver:
    """Webhook requests as they come, and those answered 2xx as `events`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.status = 200
        self.status_for: Callable[[dict[str, Any]], int] | None = None
        """The answer by event, if set (else `status`)."""
        self.delay = 0.0
        self.received: list[Received] = []
        self.open_requests = 0
        """Requests read and not answered yet."""
        self.errors: list[str] = []
        """What was wrong with requests that were not what a webhook sends (answered 400): a test checks it."""
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/collab?source=test"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def events(self, type: str | None = None, document: str | None = None) -> list[dict[str, Any]]:
        """The events answered 2xx, in the order they came."""
        return [
            item.event
            for item in self.received
            if 200 <= item.status < 300
            and (type is None or item.event["type"] == type)
            and (document is None or item.event["document"] == document)
        ]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def verify_all(self, secret: str) -> None:
        """Every request received is signed with `secret` (raises `InvalidSignatureError` otherwise)."""
        assert not self.errors, self.errors
        for item in self.received:
            verify(secret, item.body, item.headers, now=item.at)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if not lines[0].startswith("POST /hooks/collab?source=test HTTP/1.1") or len(head) > MAX_HEAD:
                self.errors.append(f"unexpected request line {lines[0]!r}")
                status = 400
            else:
                body = await reader.readexactly(int(headers["content-length"]))
                self.open_requests += 1
                try:
                    await asyncio.sleep(self.delay)
                finally:
                    self.open_requests -= 1
                status = self.status if self.status_for is None else self.status_for(json.loads(body))
                self.received.append(Received(headers, body, status, time.time()))
            self._changed.set()
            writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
