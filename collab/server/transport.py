"""The connection class collab serves with: websockets' own, with the request head checked first.

websockets 17 parses a request head and, on anything it does not expect, stays
silent: a body (Content-Length, chunked) or a malformed line ends the
connection with no response, and bytes after the head (a pipelined request)
are parsed as WebSocket frames during the handshake, which fails an assertion.
So the head is read here first, up to its blank line, and checked by
`http.check_head`; what it refuses is answered (400, 405, 413, 431, 505) and
the connection half-closed. Only a head that passes reaches websockets, through
`data_received`, its normal path. What arrives after the head and before the
response is dropped for a plain request (the response says Connection: close,
so a pipelining client resends) and ends an upgrade (a client must wait for
the 101, RFC 6455 section 4.1). From the response on, bytes go straight to
websockets: one attribute test per `data_received` is all this costs later.

This overrides `data_received`, the asyncio protocol method websockets'
`ServerConnection` implements, and is installed with serve()'s public
`create_connection`; it relies on websockets 17 feeding the request head to
its parser from `data_received` (hence the pin in pyproject.toml).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response
from websockets.protocol import State

from ..http.router import MAX_HEAD, check_head, respond
from ..logs import fields

__all__ = ["CollabConnection"]

logger = logging.getLogger("collab.server")

_WAITING_HTTP = b"http"
_WAITING_UPGRADE = b"upgrade"
_REFUSED = b"refused"


class CollabConnection(ServerConnection):
    """A `ServerConnection` that reads and checks the request head before websockets sees it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytearray | bytes | None = bytearray()
        """The head so far; then a marker of what follows it (`_WAITING_*`, `_REFUSED`); None once open."""

    def data_received(self, data: bytes) -> None:
        head = self._head
        if head is None:
            super().data_received(data)
        elif isinstance(head, bytearray):
            self._read_head(head, data)
        elif head is not _REFUSED:
            self._before_response(head, data)

    def _read_head(self, head: bytearray, data: bytes) -> None:
        start = max(0, len(head) - 3)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(head) > MAX_HEAD:
                self._refuse(respond(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n"))
            return
        end += 4
        upgrade = check_head(bytes(head[:end]))  # or the refusal to answer instead
        if isinstance(upgrade, Response):
            self._refuse(upgrade)
            return
        if upgrade and len(head) > end:
            self._refuse(respond(HTTPStatus.BAD_REQUEST, "data sent before the handshake response\n"))
            return
        self._head = _WAITING_UPGRADE if upgrade else _WAITING_HTTP
        super().data_received(bytes(head[:end]))

    def _before_response(self, waiting: bytes, data: bytes) -> None:
        if self.protocol.state is State.OPEN:
            self._head = None
            super().data_received(data)
        elif waiting is _WAITING_UPGRADE:
            logger.info("closing an upgrade that sent data before the handshake response")
            self.transport.abort()
        # else: a pipelined request, dropped; the response says Connection: close

    def _refuse(self, response: Response) -> None:
        """Answer, then half-close: the client reads the answer, closes, and websockets closes in turn."""
        self._head = _REFUSED
        reason = response.body.decode().strip()
        logger.info("refused a request", extra=fields(status=response.status_code, reason=reason))
        self.transport.write(response.serialize())
        if self.transport.can_write_eof():
            self.transport.write_eof()  # not close(): unread bytes of a body would turn it into a reset
        else:
            self.transport.close()
