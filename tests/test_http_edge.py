"""Hostile HTTP on the WebSocket port: every request gets a proper answer, and no one else notices."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from collab.client import Client
from collab.server.app import CollabServer

from .helpers import room_url, synced, text

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path: str = "/notes", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def request(path: str = "/healthz", extra: str = "", method: str = "GET") -> bytes:
    """The bytes of a plain request (GET unless `method`), sent raw by `exchange`."""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh TCP connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


@pytest.fixture
async def bystanders(server: CollabServer) -> AsyncIterator[tuple[Client, Client]]:
    """A healthy client in the room the attacks aim at and one elsewhere; both must still sync afterwards."""
    async with synced(room_url(server, "notes")) as same, synced(room_url(server, "elsewhere")) as other:
        text(same).insert(0, "same room")
        text(other).insert(0, "other room")
        yield same, other
        await same.resync()
        await other.resync()
        async with synced(room_url(server, "notes")) as fresh:
            await fresh.wait_until(lambda: str(text(fresh)) == "same room")
        assert same.close_code is None and other.close_code is None


DUPLICATED = {
    "Origin on an upgrade": upgrade(extra="Origin: http://127.0.0.1\r\nOrigin: http://evil.example\r\n"),
    "Upgrade": upgrade(extra="Upgrade: websocket\r\n"),
    "Host": request(extra="Host: evil.example\r\n"),
    "Authorization on the API": request("/api/docs", "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"),
    "Sec-WebSocket-Key": upgrade(extra=f"Sec-WebSocket-Key: {KEY}\r\n"),
    "Sec-WebSocket-Version": upgrade(extra="Sec-WebSocket-Version: 13\r\n"),
    "Content-Length": request(extra="Content-Length: 0\r\nContent-Length: 0\r\n"),
    "Accept-Encoding on a page": request("/", "Accept-Encoding: gzip\r\nAccept-Encoding: br\r\n"),
}


@pytest.mark.parametrize("kind", sorted(DUPLICATED))
async def test_duplicated_headers_answer_400_without_a_traceback(
    server: CollabServer, bystanders: tuple[Client, Client], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await exchange(server.port, DUPLICATED[kind])
    assert status(response) == 400, response
    assert b"duplicated header" in response
    assert not [record for record in caplog.records if record.exc_info], "no traceback logged"


async def test_a_list_header_may_repeat(server: CollabServer, bystanders: tuple[Client, Client]) -> None:
    """Sec-WebSocket-Protocol is a list (RFC 6455 section 11.3.4): two lines are one list, not an error."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade(extra="Sec-WebSocket-Protocol: collab\r\nSec-WebSocket-Protocol: other\r\n"))
    async with asyncio.timeout(10):
        response = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert status(response) == 101 and b"Sec-WebSocket-Protocol: collab" in response


BAD_REQUESTS = {
    "POST": (request(method="POST"), 405),
    "POST with a body": (request(method="POST", extra="Content-Length: 5\r\n") + b"hello", 405),
    "PUT on the API": (request("/api/docs/notes", "Content-Length: 2\r\n", method="PUT") + b"{}", 405),
    "DELETE": (request("/api/docs/notes", method="DELETE"), 405),
    "HEAD": (request(method="HEAD"), 405),
    "OPTIONS preflight": (request("/api/docs", "Origin: http://evil.example\r\n", method="OPTIONS"), 405),
    "POST upgrade": (upgrade().replace(b"GET", b"POST", 1), 405),
    "GET with a body": (request(extra="Content-Length: 5\r\n") + b"hello", 413),
    "GET with a declared body not sent": (request(extra="Content-Length: 100000\r\n"), 413),
    "chunked GET": (request(extra="Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n", 413),
    "chunked upgrade": (upgrade(extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 413),
    "bad Content-Length": (request(extra="Content-Length: -1\r\n"), 400),
    "upgrade followed by early frames": (upgrade() + b"\x82\x80abcd", 400),
    "malformed request line": (b"GET /\r\n\r\n", 400),
    "HTTP/2 request line": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "non-ASCII path": (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "header without a colon": (request(extra="no colon here\r\n"), 400),
    "head too large": (b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
async def test_unservable_requests_get_an_answer(
    server: CollabServer, bystanders: tuple[Client, Client], kind: str
) -> None:
    data, expected = BAD_REQUESTS[kind]
    response = await exchange(server.port, data)
    assert status(response) == expected, response
    assert b"\r\nConnection: close\r\n" in response
    if expected == 405:
        assert b"\r\nAllow: GET\r\n" in response


async def test_pipelined_requests_get_the_first_answer_and_a_close(
    server: CollabServer, bystanders: tuple[Client, Client]
) -> None:
    response = await exchange(server.port, request() + request("/readyz") + request("/metrics"))
    assert status(response) == 200 and response.endswith(b"\r\n\r\nok\n"), response
    assert b"\r\nConnection: close\r\n" in response
    assert response.count(b"HTTP/1.1") == 1


async def test_a_request_head_in_small_pieces_is_served(
    server: CollabServer, bystanders: tuple[Client, Client]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no merging
    for index in range(0, len(data := request()), 3):
        writer.write(data[index : index + 3])
        await writer.drain()
        await asyncio.sleep(0.01)
    async with asyncio.timeout(10):
        response = await reader.read()
    writer.close()
    assert status(response) == 200 and response.endswith(b"ok\n")
