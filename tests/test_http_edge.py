"""Hostile HTTP on the WebSocket port: every request gets a proper answer, and no one else notices."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.http11 import Response

from collab.client import Client
from collab.http import api
from collab.http.router import HttpRequest, respond
from collab.server.app import CollabServer

from .helpers import (
    StartServer,
    a_real_panic,
    call,
    exchange,
    get,
    request_head,
    room_url,
    status_of,
    synced,
    text,
    wait_for,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path: str = "/notes", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def request(path: str = "/healthz", extra: str = "", method: str = "GET") -> bytes:
    """The bytes of a plain request (GET unless `method`), sent raw by `exchange`."""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


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
    assert status_of(response) == 400, response
    assert b"duplicated header" in response
    assert not [record for record in caplog.records if record.exc_info], "no traceback logged"


async def test_a_list_header_may_repeat(server: CollabServer, bystanders: tuple[Client, Client]) -> None:
    """Sec-WebSocket-Protocol is a list (RFC 6455 section 11.3.4): two lines are one list, not an error."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade(extra="Sec-WebSocket-Protocol: collab\r\nSec-WebSocket-Protocol: other\r\n"))
    async with asyncio.timeout(10):
        response = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert status_of(response) == 101 and b"Sec-WebSocket-Protocol: collab" in response


BAD_REQUESTS = {
    "POST": (request(method="POST"), 405),
    "POST with a body": (request(method="POST", extra="Content-Length: 5\r\n") + b"hello", 405),
    "PUT on the API": (request("/api/history/x", "Content-Length: 2\r\n", method="PUT") + b"{}", 405),
    "DELETE": (request("/healthz", method="DELETE"), 405),
    "POST upgrade": (upgrade().replace(b"GET", b"POST", 1), 405),
    "HEAD upgrade": (upgrade().replace(b"GET", b"HEAD", 1), 405),
    "a method that is not a token": (request(method="GE@T"), 400),
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
    "header line too long": (request(extra="X-Pad: " + "a" * 9_000 + "\r\n"), 431),
    "too many headers": (request(extra="".join(f"X-{n}: {n}\r\n" for n in range(200))), 431),
    "Content-Length 00": (request(extra="Content-Length: 00\r\n"), 413),
    "a control character in a header value": (request(extra="X-A: a\x01b\r\n"), 400),
    "a space in a header name": (request(extra="X A: b\r\n"), 400),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
async def test_unservable_requests_get_an_answer(
    server: CollabServer, bystanders: tuple[Client, Client], kind: str
) -> None:
    data, expected = BAD_REQUESTS[kind]
    response = await exchange(server.port, data)
    assert status_of(response) == expected, response
    assert b"\r\nConnection: close\r\n" in response
    if expected == 405:
        allow = b"GET" if b"Upgrade: websocket" in data else b"GET, HEAD"
        assert b"\r\nAllow: " + allow + b"\r\n" in response
    assert b"WebSocket" not in response.partition(b"\r\n\r\n")[2], "an HTTP answer speaks of HTTP"


# Methods: the router's routes say which methods a path takes (GET, and HEAD with it; `/api/docs/<name>` also
# DELETE, POST and PUT, `/api/docs` also POST).

OTHER_METHODS = ("DELETE", "POST", "PUT", "PATCH", "OPTIONS", "TRACE", "BREW")
GET_ROUTES = ("/api/history/x", "/", "/d/x", "/healthz", "/readyz", "/metrics", "/assets/app.js")
DOCUMENT_METHODS = "DELETE, GET, HEAD, POST, PUT"
"""What `/api/docs/<name>` takes: GET (and HEAD), DELETE (delete it), POST (`/rename`, `/update`...), PUT (its text)."""
LIST_METHODS = "GET, HEAD, POST"
"""What `/api/docs` takes: GET (and HEAD) lists, POST creates."""


async def test_other_methods_on_a_get_route_answer_405_with_allow(server: CollabServer) -> None:
    """`DELETE /api/docs/x` must not look like a success: every method but GET and HEAD is a 405 saying why."""
    async with synced(room_url(server, "x")) as client:
        text(client).insert(0, "still here")
        await client.resync()
    for path in GET_ROUTES:
        for method in OTHER_METHODS:
            for body in (None, b'{"name": "y"}'):  # with a body, the head check gives the router's answer
                reply = await call(server.port, method, path, body)
                assert reply.status == 405, (method, path, body, reply)
                assert reply.headers["allow"] == "GET, HEAD"
                assert reply.headers["connection"] == "close"
                assert reply.body == f"{method} is not allowed here, only GET, HEAD\n".encode()
    for method in ("PATCH", "OPTIONS", "TRACE", "BREW"):
        for body in (None, b"text"):  # a body to a method the path lacks: the 405 still, never read
            reply = await call(server.port, method, "/api/docs/x", body)
            assert (reply.status, reply.headers["allow"]) == (405, DOCUMENT_METHODS), (method, body, reply)
        for body in (None, b"text"):
            reply = await call(server.port, method, "/api/docs", body)
            assert (reply.status, reply.headers["allow"]) == (405, LIST_METHODS), (method, body, reply)
    for method, path, expected in [
        ("DELETE", "/api/docs", 405),  # the list takes GET and POST (create) only
        ("PUT", "/api/docs", 405),  # PUT replaces one document's text, not the list
        ("POST", "/api/docs/x/rename", 413),  # they take no body
        ("POST", "/api/docs/x/restore?at=1h", 413),
    ]:
        reply = await call(server.port, method, path, b"{}")
        assert reply.status == expected, (method, path, reply)
        if expected == 405:
            assert reply.headers["allow"] == LIST_METHODS
    reply = await get(server, "/api/docs/x?format=txt")
    assert (reply.status, reply.body) == (200, b"still here"), "nothing was deleted"


@pytest.mark.parametrize("path", ["/nowhere", "/api", "/api/docsx", "/healthz/x", "/d", "/assets"])
async def test_a_path_no_route_serves_is_404_whatever_the_method(server: CollabServer, path: str) -> None:
    for method in ("GET", "HEAD", "POST", "DELETE", "OPTIONS"):
        for body in (None, b"x" * 10) if method != "HEAD" else (None,):
            reply = await call(server.port, method, path, body)
            assert reply.status == 404 and "allow" not in reply.headers, (method, path, body, reply)
            assert reply.body == (b"" if method == "HEAD" else b"not found\n")


async def test_head_answers_as_get_does_without_the_body(server: CollabServer) -> None:
    async with synced(room_url(server, "x")) as client:
        text(client).insert(0, "some text")
        await client.resync()
    for path in ("/healthz", "/api/docs/x?format=txt", "/api/docs", "/", "/d/x", "/api/docs/missing"):
        got = await get(server, path)
        head = await call(server.port, "HEAD", path)
        assert (head.status, head.headers, head.body) == (got.status, got.headers, b""), path
        assert int(head.headers["content-length"]) == len(got.body) > 0
    raw = await exchange(server.port, request("/healthz", method="HEAD"))
    assert status_of(raw) == 200 and b"\r\nContent-Length: 3\r\n" in raw
    assert raw.endswith(b"\r\n\r\n"), "no body bytes at all"


async def test_options_is_a_405_and_grants_no_cross_origin_access(server: CollabServer) -> None:
    """collab does no CORS: a preflight fails, from its own origin (405) or another (403, the origin policy)."""
    own, other = f"http://127.0.0.1:{server.port}", "http://evil.example"
    preflight = {"Access-Control-Request-Method": "DELETE", "Access-Control-Request-Headers": "authorization"}
    reply = await call(server.port, "OPTIONS", "/api/docs/x", None, **{"Origin": own, **preflight})
    assert (reply.status, reply.headers["allow"]) == (405, DOCUMENT_METHODS)
    assert not [name for name in reply.headers if name.startswith("access-control-")]
    assert (await call(server.port, "OPTIONS", "/api/docs/x", None, **{"Origin": other, **preflight})).status == 403


async def test_the_origin_policy_holds_for_every_method(server: CollabServer) -> None:
    """A page of another origin is refused before any handler runs, whatever the method (no cross-site DELETE)."""
    own, other = f"http://127.0.0.1:{server.port}", "http://evil.example"
    for method in ("GET", "HEAD", "POST", "DELETE"):
        assert (await call(server.port, method, "/api/docs", Origin=other)).status == 403, method
        assert (await call(server.port, method, "/api/docs", Origin=own)).status == (
            200 if method in ("GET", "HEAD") else 400 if method == "POST" else 405  # POST: no name to create
        )


BODIES = {
    "Content-Length and its body": (request(extra="Content-Length: 10\r\n") + b"0123456789", 413),
    "Content-Length, part of the body, more never sent": (request(extra="Content-Length: 10\r\n") + b"012", 413),
    "chunked, complete": (request(extra="Transfer-Encoding: chunked\r\n") + b"a\r\n0123456789\r\n0\r\n\r\n", 413),
    "chunked, never finished": (request(extra="Transfer-Encoding: chunked\r\n") + b"ffff\r\nabc", 413),
    "a large body being sent": (request("/api/docs/x", "Content-Length: 4194304\r\n") + b"x" * 4_194_304, 413),
    "a body on a HEAD": (request(method="HEAD", extra="Content-Length: 4\r\n") + b"body", 413),
    "POST waiting for 100 Continue": (
        request(method="POST", extra="Expect: 100-continue\r\nContent-Length: 1000\r\n"),
        405,
    ),
    "PUT of a body on a path nothing serves": (
        request("/nowhere", "Content-Length: 4\r\n", method="PUT") + b"body",
        404,
    ),
    "a body on a target that does not parse": (
        request("//[x/y", "Content-Length: 4\r\n", method="POST") + b"body",
        400,
    ),
}


@pytest.mark.parametrize("kind", sorted(BODIES))
async def test_a_request_body_is_answered_at_once_never_waited_for(
    server: CollabServer, bystanders: tuple[Client, Client], kind: str
) -> None:
    """The answer comes without the client closing its side or finishing its body, then the server closes."""
    data, expected = BODIES[kind]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)  # and the connection left open, as a client waiting for its answer leaves it
        async with asyncio.timeout(3):
            response = await reader.read()  # until the server's end of stream: the connection is not reused
    finally:
        writer.close()
    assert status_of(response) == expected, response
    assert b"\r\nConnection: close\r\n" in response
    if expected == 413:
        assert response.endswith(b"\r\n\r\na request takes no body here\n")


async def test_a_malformed_target_is_a_400(server: CollabServer) -> None:
    response = await exchange(server.port, request("//[x/y"))
    assert status_of(response) == 400 and response.endswith(b"malformed request target\n")


async def test_an_upgrade_on_a_path_the_router_serves_is_still_a_room(server: CollabServer) -> None:
    """The router is asked about plain requests only: `/api/docs/x` over WebSocket is room `api/docs/x`."""
    async with synced(room_url(server, "api/docs/x")) as client:
        text(client).insert(0, "a room")
        await client.resync()
    assert "api/docs/x" in server.rooms
    assert (await get(server, "/api/docs/api%2Fdocs%2Fx?format=txt")).body == b"a room"


async def test_a_route_can_take_other_methods(server: CollabServer) -> None:
    """Per-route methods, as `DELETE /api/docs/<name>` uses them: `Allow` follows what a path takes."""

    async def show(request: HttpRequest) -> Response:
        return respond(200, f"{request.method} {request.path}\n")

    async def create(request: HttpRequest) -> Response:
        return respond(201, "created\n")

    server.http.route("/things/", show, methods=("GET", "DELETE"))
    server.http.route("/things/", create, methods=("POST",))  # adds POST to the route
    server.http.route("/things/deep/", show)  # the longest prefix decides alone: GET (and HEAD) only
    server.http.route("/erase", show, methods=("DELETE",))
    port = server.port
    assert (await call(port, "DELETE", "/things/a")).body == b"DELETE /things/a\n"
    assert (await call(port, "GET", "/things/a?x=1")).body == b"GET /things/a\n"
    assert (await call(port, "POST", "/things/a")).status == 201
    head = await call(port, "HEAD", "/things/a")
    assert (head.status, head.headers["content-length"], head.body) == (200, str(len(b"HEAD /things/a\n")), b"")
    refused = await call(port, "PUT", "/things/a")
    assert (refused.status, refused.headers["allow"]) == (405, "DELETE, GET, HEAD, POST")
    refused = await call(port, "DELETE", "/things/deep/a")
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")
    for method in ("GET", "HEAD"):
        refused = await call(port, method, "/erase")
        assert (refused.status, refused.headers["allow"]) == (405, "DELETE"), method
    # These routes read no body: one sent to a method the route takes is refused, promptly, with 413.
    assert (await call(port, "POST", "/things/a", b"{}")).status == 413


async def test_a_route_may_read_a_body_and_a_suffix_may_have_a_handler_of_its_own(server: CollabServer) -> None:
    """`body=`: the handler gets the body whole, up to its limit; `suffix=`: paths under a prefix ending with it
    go to a handler of their own for its methods (as `/api/docs/<name>/update` does), and only those."""

    async def echo(request: HttpRequest) -> Response:
        return respond(200, b"echo " + request.body)

    async def shout(request: HttpRequest) -> Response:
        return respond(200, b"shout " + request.body.upper())

    async def show(request: HttpRequest) -> Response:
        return respond(200, f"{request.method} {request.path}\n")

    server.http.route("/echo", echo, methods=("POST",), body=10)
    server.http.route("/notes/", show, methods=("GET", "POST"))
    server.http.route("/notes/", shout, methods=("POST",), body=10, suffix="/shout")
    port = server.port
    assert (await call(port, "POST", "/echo", b"0123456789")).body == b"echo 0123456789"
    assert (await call(port, "POST", "/echo")).body == b"echo "
    assert (await call(port, "POST", "/echo", b"0123456789+")).status == 413
    assert (await call(port, "POST", "/notes/a/shout", b"hey")).body == b"shout HEY"
    assert (await call(port, "POST", "/notes/a/b/shout", b"hey")).body == b"shout HEY"
    assert (await call(port, "GET", "/notes/a/shout")).body == b"GET /notes/a/shout\n", "GET has no suffix handler"
    assert (await call(port, "POST", "/notes/shout")).body == b"POST /notes/shout\n", "nothing before the suffix"
    assert (await call(port, "POST", "/notes/a")).body == b"POST /notes/a\n"
    assert (await call(port, "POST", "/notes/a", b"body")).status == 413, "the prefix's own POST reads no body"
    refused = await call(port, "PUT", "/notes/a/shout", b"hey")
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD, POST")
    with pytest.raises(ValueError, match="suffix"):
        server.http.route("/exact", echo, methods=("POST",), suffix="/x")


async def test_a_route_head_check_answers_before_the_body_is_read(
    server: CollabServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`check=`: run on the head, after the origin check; its refusal goes out at once, with no `100 Continue`, and
    the body is never read; a request it passes gets `100 Continue`, then its handler runs; a check that raises is
    a 500 for that request alone."""

    async def echo(request: HttpRequest) -> Response:
        return respond(200, b"echo " + request.body)

    def check(request: HttpRequest) -> Response | None:
        if "panic" in request.query:
            raise a_real_panic()
        return respond(403, "refused on its head\n") if "refuse" in request.query else None

    server.http.route("/checked", echo, methods=("POST",), body=100, check=check)
    waiting = ("Expect: 100-continue", "Content-Length: 100")
    refused = await exchange(server.port, request_head("POST", "/checked?refuse=1", *waiting), timeout=3)
    assert refused.startswith(b"HTTP/1.1 403 ") and refused.endswith(b"refused on its head\n"), refused
    passed = await exchange(server.port, request_head("POST", "/checked", *waiting), then=b"x" * 100)
    assert passed.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), passed
    assert passed.endswith(b"echo " + b"x" * 100)
    with caplog.at_level(logging.ERROR, logger="collab.server"):
        failed = await exchange(server.port, request_head("POST", "/checked?panic=1", *waiting), timeout=3)
    assert status_of(failed) == 500 and [record.getMessage() for record in caplog.records] == ["HTTP head check failed"]
    assert (await call(server, "POST", "/checked?refuse=1")).status == 403, "without a body too"
    assert (await get(server, "/healthz")).status == 200


async def test_pipelined_requests_get_the_first_answer_and_a_close(
    server: CollabServer, bystanders: tuple[Client, Client]
) -> None:
    response = await exchange(server.port, request() + request("/readyz") + request("/metrics"))
    assert status_of(response) == 200 and response.endswith(b"\r\n\r\nok\n"), response
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
    assert status_of(response) == 200 and response.endswith(b"ok\n")


async def test_an_answer_may_take_longer_than_the_handshake_timeout(start_server: StartServer) -> None:
    """The handshake timeout is for reading the request; an export that renders for longer is still answered."""
    server = await start_server(handshake_timeout=0.3)

    async def slow(request: HttpRequest) -> Response:
        await asyncio.sleep(0.8)
        return respond(200, "rendered\n")

    server.http.route("/slow", slow)
    reply = await get(server, "/slow")
    assert (reply.status, reply.body) == (200, b"rendered\n")


async def test_a_panic_while_answering_is_a_500_for_that_request_alone(
    server: CollabServer, caplog: pytest.LogCaptureFixture
) -> None:
    panic = a_real_panic()

    async def panics(request: HttpRequest) -> Response:
        raise panic

    server.http.route("/panics", panics)
    with caplog.at_level(logging.ERROR, logger="collab.server"):
        reply = await get(server, "/panics?token=secret-looking")
    assert (reply.status, reply.body) == (500, b"internal error\n")
    assert "secret-looking" not in caplog.text, "a query (which may hold a token) is not logged"
    assert (await get(server, "/healthz")).status == 200


async def test_a_time_out_of_any_calendar_is_a_400(server: CollabServer) -> None:
    async with synced(room_url(server, "dated")) as client:
        text(client).insert(0, "x")
        await client.resync()
    for at in ("100000000000w", "99999999999999999999d", "0001-01-01T00:00:00+05:00"):
        reply = await get(server, f"/api/docs/dated?at={at}")
        assert reply.status == 400 and b"not a time" in reply.body, (at, reply)


async def test_a_store_that_does_not_answer_gives_503_and_rooms_in_memory_still_export(
    start_server: StartServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While commits fail, a load waits for them (it must not miss an update): the API answers 503 in time."""
    monkeypatch.setattr(api, "STORE_TIMEOUT", 0.5)
    server = await start_server(sqlite_busy_timeout=0.05)
    async with synced(room_url(server, "stuck")) as writer, synced(room_url(server, "fine")) as other:
        text(other).insert(0, "in memory")
        await other.resync()
        await server.store.flush()
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: commits fail and retry
        try:
            text(writer).insert(0, "pending")
            await writer.resync()
            await wait_for(lambda: server.store.failing)
            stuck = await get(server, "/api/docs/stuck?at=0s&format=txt")  # from the store, as of now
            assert stuck.status == 503 and b"did not answer" in stuck.body
            fine = await get(server, "/api/docs/fine?format=txt")  # from its room
            assert (fine.status, fine.body) == (200, b"in memory")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(lambda: not server.store.failing)
        reply = await get(server, "/api/docs/stuck?at=0s&format=txt")
        assert (reply.status, reply.body) == (200, b"pending"), "the pending edit, not a stale read"
