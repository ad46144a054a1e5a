"""Every error collab raises on purpose, and the one place that maps them to close codes.

    CollabError
    ├── ProtocolError              the peer broke the y-websocket protocol      → 1002
    │   ├── InvalidUTF8Error       a string in a message is not UTF-8           → 1007
    │   ├── InvalidUpdateError     a well-formed message carries a bad update   → 1002
    │   ├── MessageTooBigError     an awareness state or entry count too large  → 1009
    │   └── UnsupportedDataError   a text frame instead of a binary one         → 1003
    ├── InvalidRoomNameError       the URL names no acceptable room             → 4400
    ├── AuthError                  (the client is told why in an auth message first)
    │   ├── UnauthenticatedError   no token; a forged, expired or revoked one   → 4401
    │   └── ForbiddenError         a valid token for another document           → 4403
    ├── LimitError
    │   ├── ServerBusyError        too many connections or rooms; retry later   → 1013
    │   ├── RateLimitError         a client stays far above its rate limit      → 1008
    │   └── DocumentTooLargeError  an update would grow a document too large    → 1009
    ├── StorageError               the store failed; nothing is lost, retry     → 1011
    │   └── CorruptDocumentError   a stored row does not decode                 → 1011
    ├── HistoryError               no state is kept for the moment asked for (HTTP 404)
    └── ConfigError                a setting is wrong (the CLI exits with 2)

Anything else escaping a connection handler is a bug in collab: it closes that
connection with 1011 and no details, since details may be sensitive.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "AuthError",
    "CloseReason",
    "CollabError",
    "ConfigError",
    "CorruptDocumentError",
    "DocumentTooLargeError",
    "ForbiddenError",
    "HistoryError",
    "InvalidRoomNameError",
    "InvalidUTF8Error",
    "InvalidUpdateError",
    "LimitError",
    "MessageTooBigError",
    "ProtocolError",
    "RateLimitError",
    "ServerBusyError",
    "StorageError",
    "UnauthenticatedError",
    "UnsupportedDataError",
    "close_reason_for",
]


class CollabError(Exception):
    """Root of collab's own errors."""


class ProtocolError(CollabError):
    """The peer sent bytes that are not a valid y-websocket frame."""


class InvalidUTF8Error(ProtocolError):
    """A string inside a message is not valid UTF-8."""


class InvalidUpdateError(ProtocolError):
    """A message is well formed but its Yjs update or state vector does not decode."""


class MessageTooBigError(ProtocolError):
    """A part of a message is over its documented limit (an awareness state's size, its entry count)."""


class UnsupportedDataError(ProtocolError):
    """The peer sent a text frame; the y-websocket protocol is binary."""


class InvalidRoomNameError(CollabError):
    """The request path does not name an acceptable room."""


class AuthError(CollabError):
    """The client may not open this document; `label` names why, for metrics."""

    def __init__(self, message: str, label: str = "invalid") -> None:
        super().__init__(message)
        self.label = label


class UnauthenticatedError(AuthError):
    """No token, or one that is forged, malformed, expired or revoked."""


class ForbiddenError(AuthError):
    """A valid token that does not cover this document."""


class LimitError(CollabError):
    """A configured limit protects the server from this client."""


class ServerBusyError(LimitError):
    """Too many connections or rooms right now; the client should retry later."""


class RateLimitError(LimitError):
    """The client stays far above its rate limit (being slowed down did not stop it), or one message costs too much."""


class DocumentTooLargeError(LimitError):
    """An update would grow its document beyond `--max-document-size`; nothing of its frame took effect."""


class StorageError(CollabError):
    """The store could not read or write; the operation may be retried."""


class CorruptDocumentError(StorageError):
    """A stored snapshot or update of a document does not decode."""


class HistoryError(CollabError):
    """A document has no state kept for the moment asked for."""


class ConfigError(CollabError):
    """A setting has a value collab cannot use."""


class CloseReason(NamedTuple):
    """A WebSocket close code and the reason text sent with it."""

    code: int
    reason: str


# Close codes, RFC 6455 section 7.4.1 and the 4000-4999 private range. The stock
# y-websocket client treats 4400-4499 as permanent and stops reconnecting.
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_DATA = 1007
INTERNAL_ERROR = 1011
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
BAD_ROOM_NAME = 4400
UNAUTHENTICATED = 4401
FORBIDDEN = 4403

# A close reason must fit in a control frame: 125 bytes minus the 2-byte code.
MAX_REASON_BYTES = 123


def close_reason_for(error: BaseException) -> CloseReason:
    """Map an error raised while serving a connection to the close frame it earns."""
    match error:
        case InvalidUTF8Error():
            code = INVALID_DATA
        case UnsupportedDataError():
            code = UNSUPPORTED_DATA
        case MessageTooBigError():
            code = MESSAGE_TOO_BIG
        case ProtocolError():
            code = PROTOCOL_ERROR
        case InvalidRoomNameError():
            code = BAD_ROOM_NAME
        case UnauthenticatedError():
            code = UNAUTHENTICATED
        case ForbiddenError():
            code = FORBIDDEN
        case RateLimitError():
            code = POLICY_VIOLATION
        case DocumentTooLargeError():
            code = MESSAGE_TOO_BIG
        case ServerBusyError():
            code = TRY_AGAIN_LATER
        case StorageError():
            return CloseReason(INTERNAL_ERROR, "document temporarily unavailable, try again")
        case _:
            return CloseReason(INTERNAL_ERROR, "internal error")
    return CloseReason(code, _truncate(str(error)))


def _truncate(reason: str) -> str:
    encoded = reason.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
