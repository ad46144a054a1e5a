"""The webhook sender's one HTTP POST (`collab.webhooks.http`), against real servers on 127.0.0.1.

Each server here answers one way a receiver can: TLS with a certificate the
system does not trust, a redirect, an interim 100, no answer, no listener.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from collab.errors import DeliveryError
from collab.webhooks.http import post, shown

from .helpers import self_signed_certificate
from .webhook_receiver import free_port

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def answering(
    answer: Answer, tls: ssl.SSLContext | None = None, seen: list[bytes] | None = None
) -> AsyncIterator[int]:
    """A server on 127.0.0.1 that reads a request's head and body (kept in `seen`) and answers with `answer`; its
    port."""
    seen = [] if seen is None else seen

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            seen.append(head + await reader.readexactly(length))
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def says(*lines: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"".join(lines))
        await writer.drain()

    return answer


OK = says(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")


async def test_a_2xx_answer_after_interim_ones_is_a_delivery() -> None:
    async with answering(says(b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 202 Accepted\r\n\r\n")) as port:
        assert await post(f"http://127.0.0.1:{port}/hook", b"{}", {}, timeout=5) == 202


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() -> None:
    seen: list[bytes] = []
    async with answering(OK, seen=seen) as port:
        url = f"http://ada:s%40cret@127.0.0.1:{port}/hook?key=SECRET"
        assert await post(url, b'{"a": 1}', {"X-Collab-Event": "document.changed"}, timeout=5) == 204
    [request] = seen
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook?key=SECRET HTTP/1.1"
    assert f"Authorization: Basic {base64.b64encode(b'ada:s@cret').decode()}" in lines
    assert f"Host: 127.0.0.1:{port}" in lines and "X-Collab-Event: document.changed" in lines
    assert body == b'{"a": 1}'
    assert shown(url) == f"http://***@127.0.0.1:{port}/hook?***"


@pytest.mark.parametrize(
    ("answer", "status", "message"),
    [
        (says(b"HTTP/1.1 301 Moved Permanently\r\nLocation: /new\r\n\r\n"), 301, "redirects are not followed"),
        (says(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), 503, "answered 503 Service Unavailable"),
        (says(b"HTTP/1.1 404 \x1b[31mred\r\n\r\n"), 404, "answered 404 ?[31mred"),
        (says(b"SMTP ready\r\n"), None, "not an HTTP answer"),
        (says(b""), None, "connection closed without an answer"),
    ],
)
async def test_what_is_not_a_2xx_is_a_failure_saying_why(answer: Answer, status: int | None, message: str) -> None:
    async with answering(answer) as port:
        with pytest.raises(DeliveryError) as raised:
            await post(f"http://127.0.0.1:{port}/hook", b"{}", {}, timeout=5)
    assert raised.value.status == status and message in str(raised.value)


async def test_no_answer_in_time_and_no_listener_are_unreachable() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with answering(hang) as port:
        with pytest.raises(DeliveryError, match=r"no answer within 0\.5s") as raised:
            await post(f"http://127.0.0.1:{port}/hook", b"{}", {}, timeout=0.5)
        assert raised.value.status is None
    with pytest.raises(DeliveryError, match="ConnectionRefusedError") as raised:
        await post(f"http://127.0.0.1:{free_port()}/hook", b"{}", {}, timeout=5)
    assert raised.value.status is None


async def test_https_is_verified_and_an_untrusted_certificate_refused(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)
    async with answering(OK, tls=serving) as port:
        with pytest.raises(DeliveryError, match="TLS certificate not trusted") as raised:
            await post(f"https://127.0.0.1:{port}/hook", b"{}", {}, timeout=5)
        assert raised.value.status is None
        trusting = ssl.create_default_context(cafile=str(cert))
        assert await post(f"https://127.0.0.1:{port}/hook", b"{}", {}, timeout=5, tls=trusting) == 204
        with pytest.raises(DeliveryError, match="TLS certificate not trusted"):  # the name is checked too
            await post(f"https://localhost:{port}/hook", b"{}", {}, timeout=5, tls=trusting)
