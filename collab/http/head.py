"""Request heads, checked before websockets' parser sees them.

websockets 17 parses a request head and, on anything it does not expect, stays
silent: a body (Content-Length, chunked) or a malformed line ends the
connection with no response, and bytes after the head (a pipelined request)
are parsed as WebSocket frames during the handshake. collab serves one request
per connection: `check_head` says which answer a head earns instead (400, 404,
405, 411, 413, 431, 505), or what reading the request takes (`Head`): whether it
asks for an upgrade, and how many bytes of body follow.

A body is read only for a route that takes one (`Router.route(..., body=LIMIT)`: the write API), and only
framed by `Content-Length`: any `Transfer-Encoding` (chunked, or even identity) is refused with 411 (send
`Content-Length`), a request framed both ways with 400 (RFC 9112 section 6.3: the ambiguity request smuggling
lives on), a declared length above the route's limit with 413 before any of it is read. websockets' parser,
which takes no body, is shown the head without its `Content-Length`. The transport then checks the origin and
the route's head check (the token) and only then reads exactly that many bytes, dropping whatever follows
(see `collab.server.transport`).

Everywhere else a body is refused, never read: RFC 9110 (section 9.3.1) warns that content on a GET
"might lead some implementations to reject the request and close the connection because of its potential as a
request smuggling attack". The refusal goes out at once, without waiting for a body that may never come (a
declared `Content-Length: 100000` with nothing after it is answered as promptly as one that is sent), and the
transport then discards what the client still sends until it closes, or cuts it after `CLOSE_TIMEOUT`. It is
the router's 404 or 405 when it has one for the method and path (a `curl -X PUT -d ...` learns which methods
the path takes), else 413 (the limit is zero bytes). A request without a body goes on; for it the router
itself answers 404 and 405, after the origin check, as for any other request.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import NamedTuple

from websockets.http11 import Response

from .router import Router, respond

__all__ = ["MAX_HEAD", "Head", "check_head"]

MAX_LINE = 8190
MAX_HEADERS = 128
"""Longest request or header line and most headers: websockets' own limits (8,192 bytes a line with its CRLF,
128 headers), checked here so that the answer speaks of an HTTP request, not of "a WebSocket connection"."""
# RFC 9110 section 5.6.2 (a header name is a token) and 5.5 (a value: visible characters, spaces, tabs, obs-text).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")

MAX_HEAD = 64 * 1024
"""Largest request head (request line and headers) read: above websockets' own line limit, below anything costly."""

SINGLE_VALUED = (
    "Host",
    "Origin",
    "Upgrade",
    "Authorization",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Content-Length",
    "Transfer-Encoding",
)
"""Headers a request may carry once: two Hosts or Origins, or two framings of a body, are ambiguous (RFC 9112)."""


class Head(NamedTuple):
    """A request head that may go on, and what reading its request takes."""

    upgrade: bool
    """It asks for a WebSocket upgrade."""
    body: int
    """Bytes of body that follow the head, to read before answering (0: none)."""
    parsed: bytes
    """The head to hand websockets' parser: as received, without the `Content-Length` of a body it takes."""
    expect_continue: bool
    """The client waits for "100 Continue" before sending its body (`Expect: 100-continue`, RFC 9110 10.1.1)."""


def check_head(head: bytes, router: Router) -> Response | Head:
    """Check a request head (everything up to and including the blank line) before websockets parses it.

    The answer to send instead of handling the request, or, if it may go on, what reading it takes.
    `router` is asked what it would answer a request with a body (see the module docstring).
    """
    lines = head.split(b"\r\n")
    request_line, header_lines = lines[0], lines[1:-2]
    parts = request_line.split(b" ")
    if (
        len(parts) != 3
        or not parts[2].startswith(b"HTTP/")
        or not request_line.isascii()
        or not _TOKEN.fullmatch(parts[0])  # a method is a token (RFC 9110 section 9.1), shown in a 405
    ):
        return respond(HTTPStatus.BAD_REQUEST, "malformed request line\n")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return respond(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.1 only\n")
    counts: dict[str, int] = {}
    upgrade = expect_continue = False
    content_length, transfer_encoding = b"0", b""
    if len(header_lines) > MAX_HEADERS or max(map(len, lines)) > MAX_LINE:
        return respond(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request header fields too large\n")
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return respond(HTTPStatus.BAD_REQUEST, "malformed header line\n")
        key = name.decode().lower()
        counts[key] = counts.get(key, 0) + 1
        if key == "upgrade":
            upgrade = value.strip().lower() == b"websocket"
        elif key == "content-length":
            content_length = value.strip()
        elif key == "transfer-encoding":
            transfer_encoding = value.strip()
        elif key == "expect":
            expect_continue = value.strip().lower() == b"100-continue" and parts[2] == b"HTTP/1.1"
    duplicated = [name for name in SINGLE_VALUED if counts.get(name.lower(), 0) > 1]
    if duplicated:
        return respond(HTTPStatus.BAD_REQUEST, f"duplicated header: {duplicated[0]}\n")
    method = parts[0].decode()
    # RFC 6455 section 4.1. websockets' accept() would answer 405 too, but after the body check and the origin's.
    if upgrade and method != "GET":
        message = f"{method} is not allowed for an upgrade, only GET\n"
        return respond(HTTPStatus.METHOD_NOT_ALLOWED, message, headers={"Allow": "GET"})
    if not content_length.isdigit():
        return respond(HTTPStatus.BAD_REQUEST, "malformed Content-Length\n")
    encoded = "transfer-encoding" in counts
    sends_body = encoded or content_length != b"0"  # websockets takes "0" and nothing else
    if not sends_body:
        return Head(upgrade, 0, head, expect_continue=False)
    route = None if upgrade else router.match(method, parts[1].decode())
    if isinstance(route, Response):
        return route  # the router's 404 or 405 says why
    if route is None or not route.body:
        return respond(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "a request takes no body here\n")
    if encoded and "content-length" in counts:
        return respond(
            HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding: the body's length is ambiguous\n"
        )
    if encoded:
        coding = transfer_encoding.decode("latin-1")
        message = f"send the body with Content-Length (Transfer-Encoding: {coding} is not read)\n"
        return respond(HTTPStatus.LENGTH_REQUIRED, message)
    digits = content_length.lstrip(b"0") or b"0"
    if len(digits) > len(str(route.body)) or int(digits) > route.body:  # int() refuses over 4,300 digits
        message = f"request body too large: more than the limit of {route.body} bytes\n"
        return respond(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
    kept = [line for line in lines[1:] if line.partition(b":")[0].lower() != b"content-length"]
    return Head(upgrade, int(digits), b"\r\n".join([request_line, *kept]), expect_continue)
