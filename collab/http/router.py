"""Plain HTTP on the WebSocket port: a small router for the requests that are not upgrades.

collab's transport (`collab.server.transport`) hands every request that is not
a WebSocket upgrade to `Router.handle`, once its head has passed
`collab.http.head.check_head` (no ambiguity, and a body only where the route reads one). Handlers take the
request and return a `Response` (use `respond` to build one); they run on the event loop,
so anything slow (rendering a large document) belongs in a thread.

Bodies, per route (`Router.route(..., body=LIMIT)`, none unless told): a route given a limit reads a body
of up to that many bytes, sent with `Content-Length` (no chunked transfer coding), and its handler finds it
whole in `request.body`; every other route takes none, and a request that sends one is refused before
anything of it is read (see `collab.http.head`).

Head checks, per route (`Router.route(..., check=CHECK)`): `CHECK(request)` is run on the request's head,
after the origin check and before any of its body is read (or `100 Continue` sent), and returns the answer
that refuses it, or None to go on (`Router.check`, which the transport calls first): a request its token
may not make is refused without taking in a body of up to `LIMIT` bytes. The handler still checks for
itself what it relies on; the head check only saves reading what would be refused.

Suffixes (`Router.route(prefix, handler, methods=..., suffix="/update")`): under a prefix, the paths that end
with `suffix` after something else (`/api/docs/NAME/update`) go to that handler for its methods, before the
prefix's own handler for the method, with a body limit of their own.

Methods, per route (`Router.route(path, handler, methods=...)`, GET unless told):

- HEAD is answered wherever GET is, by the GET handler with the body left out (RFC 9110 section 9.3.2:
  the same status and headers, `Content-Length` included), so that `curl -I` and uptime monitors that
  probe with HEAD see what a GET would.
- Any other method a route was not given is 405 with `Allow` listing the ones it takes for that path
  (RFC 9110 section 15.5.6), not the GET answer: `DELETE /api/docs/x` must not look like a success.
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
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = ["HeadCheck", "HttpRequest", "OriginPolicy", "Route", "Router", "json_response", "respond"]


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
    """A request for a handler: its method, its path split from its query, and its body (empty unless its route
    reads one)."""

    __slots__ = ("body", "headers", "method", "path", "query", "raw")

    def __init__(self, request: Request, body: bytes = b"") -> None:
        parts = urlsplit(request.path)
        self.raw = request
        self.method = request.method
        self.path = parts.path
        self.query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.headers = request.headers
        self.body = body


Handler = Callable[[HttpRequest], Awaitable[Response]]
HeadCheck = Callable[[HttpRequest], Response | None]
"""A route's check of a request's head, its body not read yet (`request.body` is empty): the answer that
refuses it, or None."""


class Route(NamedTuple):
    """What serves one method on one path: the handler, the most bytes of body it reads (0: none), and the
    check its requests' heads pass before their body is read (None: none)."""

    handler: Handler
    body: int = 0
    check: HeadCheck | None = None


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


_Methods = dict[str, dict[str, Route]]
"""A route's handlers: by method, then by suffix ("" for the paths without one of theirs)."""


class Router:
    """Exact paths and path prefixes mapped to a handler per method; the longest prefix wins.

    The route that matches a path decides alone: its methods are the path's, and a method it lacks is a
    405, even if a shorter prefix has a handler for it.
    """

    def __init__(self) -> None:
        self._exact: dict[str, _Methods] = {}
        self._prefixes: list[tuple[str, _Methods]] = []

    def route(
        self,
        path: str,
        handler: Handler,
        methods: Sequence[str] = ("GET",),
        *,
        body: int = 0,
        suffix: str = "",
        check: HeadCheck | None = None,
    ) -> None:
        """Answer `methods` on `path` with `handler` (and HEAD too, if GET is among them and HEAD is not).

        `path` ending in '/' matches everything under it; otherwise the exact path only. A path routed again
        adds the new methods to those it had (and replaces the handlers of the ones named again). `body`: the
        most bytes of request body the handler reads (0: it takes none, and a request sending one is refused).
        `suffix`, under a prefix only: the handler takes the paths that end with it after something else, for
        these methods, before the prefix's own handler for them. `check`: run on each request's head before its
        body is read (see the module docstring).
        """
        prefix = path.endswith("/") and path != "/"
        if suffix and (not prefix or not suffix.startswith("/")):
            raise ValueError(f"a suffix ({suffix!r}) starts with '/' and follows a prefix ending in '/', not {path!r}")
        if prefix:
            handlers = next((handlers for known, handlers in self._prefixes if known == path), None)
            if handlers is None:
                self._prefixes.append((path, handlers := {}))
                self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        else:
            handlers = self._exact.setdefault(path, {})
        routes = {method: Route(handler, body, check) for method in methods}
        if "GET" in methods and "HEAD" not in methods:
            routes["HEAD"] = Route(_head_of(handler))
        for method, route in routes.items():
            by_suffix = {**handlers.get(method, {}), suffix: route}
            # Longest suffix first: the most specific one that a path ends with serves it.
            handlers[method] = dict(sorted(by_suffix.items(), key=lambda item: len(item[0]), reverse=True))

    def match(self, method: str, target: str) -> Route | Response:
        """The route for `method` on a request target, or the answer instead: 400 for a target that does not
        parse, 404 if no route matches its path (whatever the method), 405 with `Allow` if its route lacks `method`.
        """
        try:
            path = urlsplit(target).path
        except ValueError:  # urlsplit refuses some targets ("//[x/y": an unclosed IPv6 host)
            return respond(HTTPStatus.BAD_REQUEST, "malformed request target\n")
        handlers, rest = self._exact.get(path), ""
        if handlers is None:
            for prefix, found in self._prefixes:
                if path.startswith(prefix):
                    handlers, rest = found, path[len(prefix) :]
                    break
        served = {} if handlers is None else {name: _for(by_suffix, rest) for name, by_suffix in handlers.items()}
        allowed = sorted(name for name, route in served.items() if route is not None)
        if not allowed:
            return respond(HTTPStatus.NOT_FOUND, "not found\n")
        route = served.get(method)
        if route is None:
            allow = ", ".join(allowed)
            return respond(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here, only {allow}\n", headers={"Allow": allow}
            )
        return route

    def check(self, request: Request) -> Response | None:
        """The answer refusing `request` on its head alone, before its body is read: its route's head check's
        (None if it passes, if its route has none, or if no route takes it: `handle` answers that)."""
        route = self.match(request.method, request.path)
        if isinstance(route, Response) or route.check is None:
            return None
        return route.check(HttpRequest(request))

    async def handle(self, request: Request, body: bytes = b"") -> Response:
        """The answer to `request`, whose `body` was read (if its route takes one) by the transport, once
        `check` passed it."""
        route = self.match(request.method, request.path)
        if isinstance(route, Response):
            return route
        return await route.handler(HttpRequest(request, body))


def _for(by_suffix: dict[str, Route], rest: str) -> Route | None:
    """The route of one method for the part of a path after its prefix: the longest suffix it ends with after
    something else, or the method's own route (suffix ""), if any."""
    return next(
        (
            route
            for suffix, route in by_suffix.items()
            if not suffix or (rest.endswith(suffix) and len(rest) > len(suffix))
        ),
        None,
    )
