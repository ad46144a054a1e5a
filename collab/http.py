"""Plain HTTP on the WebSocket port: a small router for GET requests that are not upgrades.

`websockets` hands every request to `process_request` before the handshake;
requests that ask for a WebSocket upgrade go on to become room connections,
everything else is answered here. Handlers take the request and return a
`Response` (use `respond` to build one); they run on the event loop and must be quick.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = ["HttpRequest", "Router", "json_response", "respond"]


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
    all_headers = Headers(
        {"Content-Type": content_type, "Content-Length": str(len(data)), "Cache-Control": "no-store", **(headers or {})}
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
        http_request = HttpRequest(request)
        handler = self._exact.get(http_request.path)
        if handler is None:
            handler = next(
                (handler for prefix, handler in self._prefixes if http_request.path.startswith(prefix)), None
            )
        if handler is None:
            return respond(404, "not found\n")
        return await handler(http_request)
