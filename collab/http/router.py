"""Plain HTTP on the WebSocket port: a small router for the requests that are not upgrades.

collab's transport (`collab.server.transport`) hands every request that is not
a WebSocket upgrade to `Router.handle`, once its head has passed
`collab.http.head.check_head` (no body, no ambiguity). Handlers take the request and
return a `Response` (use `respond` to build one); they run on the event loop,
so anything slow (rendering a large document) belongs in a thread.

Methods, per route (`Router.route(path, handler, methods=...)`, GET unless told):

- HEAD is answered wherever GET is, by the GET handler with the body left out (RFC 9110 section 9.3.2:
  the same status and headers, `Content-Length` included), so that `curl -I` and uptime monitors that
  probe with HEAD see what a GET would.
- Any other method a route was not given is 405 with `Allow` listing the ones it takes (RFC 9110
  section 15.5.6), not the GET answer: `DELETE /api/docs/x` must not look like a success.
- A path no route matches is 404 whatever the method: there is nothing there to allow.
- OPTIONS is such another method: 405 with `Allow`. collab sends no CORS headers (its pages are served
  from its own origin and need none), so a cross-origin page's preflight fails, as the browser's refusal
  should; what a page of another origin may send at all is the `OriginPolicy`'s, checked on every
  request, whatever its method, before any handler runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
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
    """A request for a handler: its method, its path split from its query."""

    __slots__ = ("headers", "method", "path", "query", "raw")

    def __init__(self, request: Request) -> None:
        parts = urlsplit(request.path)
        self.raw = request
        self.method = request.method
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


def _head_of(get: Handler) -> Handler:
    """The HEAD handler of a GET handler: its answer without the body, `Content-Length` kept."""

    async def head(request: HttpRequest) -> Response:
        return dataclasses.replace(await get(request), body=b"")

    return head


class Router:
    """Exact paths and path prefixes mapped to a handler per method; the longest prefix wins.

    The route that matches a path decides alone: its methods are the path's, and a method it lacks is a
    405, even if a shorter prefix has a handler for it.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []

    def route(self, path: str, handler: Handler, methods: Sequence[str] = ("GET",)) -> None:
        """Answer `methods` on `path` with `handler` (and HEAD too, if GET is among them and HEAD is not).

        `path` ending in '/' matches everything under it; otherwise the exact path only. A path routed again
        adds the new methods to those it had (and replaces the handlers of the ones named again).
        """
        if path.endswith("/") and path != "/":
            handlers = next((handlers for prefix, handlers in self._prefixes if prefix == path), None)
            if handlers is None:
                self._prefixes.append((path, handlers := {}))
                self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        else:
            handlers = self._exact.setdefault(path, {})
        for method in methods:
            handlers[method] = handler
        if "GET" in methods and "HEAD" not in methods:
            handlers["HEAD"] = _head_of(handler)

    def match(self, method: str, target: str) -> Handler | Response:
        """The handler for `method` on a request target, or the answer instead: 400 for a target that does not
        parse, 404 if no route matches its path (whatever the method), 405 with `Allow` if its route lacks `method`.
        """
        try:
            path = urlsplit(target).path
        except ValueError:  # urlsplit refuses some targets ("//[x/y": an unclosed IPv6 host)
            return respond(HTTPStatus.BAD_REQUEST, "malformed request target\n")
        handlers = self._exact.get(path)
        if handlers is None:
            handlers = next((handlers for prefix, handlers in self._prefixes if path.startswith(prefix)), None)
        if handlers is None:
            return respond(HTTPStatus.NOT_FOUND, "not found\n")
        handler = handlers.get(method)
        if handler is None:
            allow = ", ".join(sorted(handlers))
            return respond(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here, only {allow}\n", headers={"Allow": allow}
            )
        return handler

    async def handle(self, request: Request) -> Response:
        handler = self.match(request.method, request.path)
        if isinstance(handler, Response):
            return handler
        return await handler(HttpRequest(request))
