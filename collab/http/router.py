"""Plain HTTP on the WebSocket port: a small router for GET requests that are not upgrades.

collab's transport (`collab.server.transport`) hands every request that is not
a WebSocket upgrade to `Router.handle`, once its head has passed
`collab.http.head.check_head` (GET only, no body). Handlers take the request and
return a `Response` (use `respond` to build one); they run on the event loop,
so anything slow (rendering a large document) belongs in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = ["HttpRequest", "OriginPolicy", "Router", "json_response", "respond"]


class OriginPolicy:
    """Which web pages a browser may let talk to collab: by the `Origin` header it sends with every upgrade.

    A request without `Origin` is not a browser's (or is a same-origin GET) and is always allowed.
    `--allowed-origin` lists the origins allowed exactly, or `*` for any. Without it, when access control
    is off, only the server's own origin (the request's `Host`, over https, or http too unless collab
    serves TLS itself, since a proxy may terminate TLS) and its loopback names (localhost, 127.0.0.1,
    [::1] on its port) are allowed: otherwise any page a user visits could read and change their local
    documents through their browser. With access control on, tokens guard the documents and any
    origin is allowed.
    """

    def __init__(self, allowed: tuple[str, ...], *, restrict_by_default: bool, tls: bool) -> None:
        self.allowed = frozenset(origin.lower() for origin in allowed)
        self.any = "*" in self.allowed or (not self.allowed and not restrict_by_default)
        self.schemes = ("https",) if tls else ("http", "https")

    def allows(self, origin: str | None, host: str | None, port: int) -> bool:
        if origin is None or self.any:
            return True
        origin = origin.rstrip("/").lower()
        if self.allowed:
            return origin in self.allowed
        scheme, _, netloc = origin.partition("://")
        if scheme not in self.schemes:
            return False  # "null" (sandboxed frames, file: pages) among others
        return netloc == (host or "").lower() or netloc in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}")


class HttpRequest:
    """A GET request, its path split from its query."""

    __slots__ = ("headers", "path", "query", "raw")

    def __init__(self, request: Request) -> None:
        parts = urlsplit(request.path)
        self.raw = request
        self.path = parts.path
        self.query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.headers = request.headers


Handler = Callable[[HttpRequest], Awaitable[Response]]


def respond(
    status: int,
    body: bytes | str,
    content_type: str = "text/plain; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> Response:
    data = body.encode() if isinstance(body, str) else body
    # Connection: close says what happens: websockets closes the connection after any response but a 101.
    all_headers = Headers(
        {
            "Content-Type": content_type,
            "Content-Length": str(len(data)),
            "Cache-Control": "no-store",
            "Connection": "close",
            **(headers or {}),
        }
    )
    return Response(status, HTTPStatus(status).phrase, all_headers, data)


def json_response(value: Any, status: int = 200) -> Response:
    return respond(status, json.dumps(value, ensure_ascii=False), "application/json")


class Router:
    """Exact paths and path prefixes mapped to handlers; the longest prefix wins."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []

    def route(self, path: str, handler: Handler) -> None:
        """`path` ending in '/' matches everything under it; otherwise the exact path only."""
        if path.endswith("/") and path != "/":
            self._prefixes.append((path, handler))
            self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        else:
            self._exact[path] = handler

    async def handle(self, request: Request) -> Response:
        try:
            http_request = HttpRequest(request)
        except ValueError:  # urlsplit refuses some targets ("//[x/y": an unclosed IPv6 host)
            return respond(400, "malformed request target\n")
        handler = self._exact.get(http_request.path)
        if handler is None:
            handler = next(
                (handler for prefix, handler in self._prefixes if http_request.path.startswith(prefix)), None
            )
        if handler is None:
            return respond(404, "not found\n")
        return await handler(http_request)
