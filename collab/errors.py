"""Every error collab raises on purpose, and the one place that maps each to what it earns.

    CollabError                                                          close  HTTP  exit
    ├── ProtocolError              the peer broke the y-websocket protocol     1002   400    1
    │   ├── InvalidUTF8Error       a string in a message is not UTF-8          1007   400    1
    │   ├── InvalidUpdateError     a well-formed message carries a bad update  1002   400    1
    │   ├── MessageTooBigError     an awareness state or entry count too large 1009   413    1
    │   └── UnsupportedDataError   a text frame instead of a binary one        1003   400    1
    ├── InvalidRoomNameError       no acceptable document name                 4400   400    2
    ├── AuthError                  (the client is told why in an auth message first)
    │   ├── UnauthenticatedError   no token; a forged, expired or revoked one  4401   401    1
    │   └── ForbiddenError         a valid token for another document          4403   403    1
    ├── LimitError
    │   ├── ServerBusyError        too many connections or rooms; retry later  1013   503    1
    │   ├── RateLimitError         a client stays far above its rate limit     1008   429    1
    │   └── DocumentTooLargeError  an update would grow a document too large   1009   413    1
    ├── StorageError               the store failed; nothing is lost, retry    1011   503    5
    │   └── CorruptDocumentError   a stored row does not decode                1011   500    6
    ├── DatabaseInUseError         another process holds the database's lock          503    4
    ├── NotFoundError              no document by that name                           404    3
    │   └── HistoryError           no state is kept for the moment asked for          404    3
    ├── AlreadyExistsError         a document by that name exists already             409    1
    ├── RestoreError               what a restore cannot bring back as it was         409    1
    ├── ExportError                the export cannot be done as asked                 500    1
    ├── ImportFailed               the backup cannot be imported as asked             500    1
    ├── DeliveryError              a webhook did not take an event (it is retried)           1
    ├── InvalidSignatureError      a webhook request is not signed with the secret           1
    ├── ClosedError                collab.client is closed and will not reconnect            1
    │   └── RefusedError           the server refused it (close code or HTTP status)         1
    └── ConfigError                a setting or command-line argument is wrong        400    2

`close_reason_for`, `http_status_for` and `exit_code_for` are the three
mappings; anything that is not a `CollabError` is a bug in collab and earns
1011, 500 or exit 1 with no details, since details may be sensitive. Exit 2 is
for usage only: a database in use, a missing document or a failing disk is
not the user's typing, and scripts can tell them apart:

    0 done   1 failed   2 usage (bad flag, setting or name)   3 not found
    4 database in use by another process   5 storage unavailable   6 corrupt data
    130 interrupted (Ctrl-C)   141 output closed early (`collab rooms | head`)

`metric_label` names an error in metrics (`collab_rejected_messages_total`'s
`reason`, `collab_auth_failures_total`'s). Each class fixes its `label`, the
name dashboards were built on, so renaming or moving a class never changes a
metric; an `AuthError` carries its own (missing, invalid, expired, ...).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "CloseReason",
    "ClosedError",
    "CollabError",
    "ConfigError",
    "CorruptDocumentError",
    "DatabaseInUseError",
    "DeliveryError",
    "DocumentTooLargeError",
    "ExportError",
    "ForbiddenError",
    "HistoryError",
    "ImportFailed",
    "InvalidRoomNameError",
    "InvalidSignatureError",
    "InvalidUTF8Error",
    "InvalidUpdateError",
    "LimitError",
    "MessageTooBigError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "RefusedError",
    "RestoreError",
    "ServerBusyError",
    "StorageError",
    "UnauthenticatedError",
    "UnsupportedDataError",
    "close_reason_for",
    "exit_code_for",
    "http_status_for",
    "metric_label",
]


class CollabError(Exception):
    """Root of collab's own errors; `label` is its name in metrics."""

    label: str = "CollabError"


class ProtocolError(CollabError):
    """The peer sent bytes that are not a valid y-websocket frame."""

    label = "ProtocolError"


class InvalidUTF8Error(ProtocolError):
    """A string inside a message is not valid UTF-8."""

    label = "InvalidUTF8Error"


class InvalidUpdateError(ProtocolError):
    """A message is well formed but its Yjs update or state vector does not decode."""

    label = "InvalidUpdateError"


class MessageTooBigError(ProtocolError):
    """A part of a message is over its documented limit (an awareness state's size, its entry count)."""

    label = "MessageTooBigError"


class UnsupportedDataError(ProtocolError):
    """The peer sent a text frame; the y-websocket protocol is binary."""

    label = "UnsupportedDataError"


class InvalidRoomNameError(CollabError):
    """The request path or the command line does not name an acceptable document."""

    label = "InvalidRoomNameError"


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

    label = "LimitError"


class ServerBusyError(LimitError):
    """Too many connections or rooms right now; the client should retry later."""

    label = "ServerBusyError"


class RateLimitError(LimitError):
    """The client stays far above its rate limit (being slowed down did not stop it), or one message costs too much."""

    label = "RateLimitError"


class DocumentTooLargeError(LimitError):
    """An update would grow its document beyond `--max-document-size`; nothing of its frame took effect."""

    label = "DocumentTooLargeError"


class StorageError(CollabError):
    """The store could not read or write; the operation may be retried."""

    label = "StorageError"


class CorruptDocumentError(StorageError):
    """A stored snapshot or update of a document does not decode; retrying will not help."""

    label = "CorruptDocumentError"


class DatabaseInUseError(CollabError):
    """Another process (a running server) holds the database's lock; stop it, or go through it."""

    label = "DatabaseInUseError"


class NotFoundError(CollabError):
    """No document has the name asked for."""

    label = "NotFoundError"


class HistoryError(NotFoundError):
    """A document has no state kept for the moment asked for."""

    label = "HistoryError"


class AlreadyExistsError(CollabError):
    """A document already has the name asked for (renaming onto it): delete it first, or choose another name."""

    label = "AlreadyExistsError"

    @classmethod
    def for_name(cls, name: str) -> AlreadyExistsError:
        """The same words from every engine and from the rooms."""
        return cls(f"a document named {name!r} exists already: delete it first, or choose another name")


class RestoreError(CollabError):
    """The document holds something a restore cannot bring back as it was (a root that changed type, a subdocument)."""

    label = "RestoreError"


class ExportError(CollabError):
    """The export cannot be done as asked; nothing was written."""

    label = "ExportError"


class ImportFailed(CollabError):
    """The backup cannot be imported as asked."""

    label = "ImportFailed"


class DeliveryError(CollabError):
    """A webhook request could not be made, or was not answered 2xx: the sender retries it (`collab.webhooks`).

    `status` is the answer's HTTP status, or None when there was none (no connection, no answer in time): the
    receiver is unreachable then, rather than refusing this one event.
    """

    label = "DeliveryError"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidSignatureError(CollabError, ValueError):
    """A webhook request that is not signed with the secret, or signed too long ago (`collab.webhooks.verify`,
    for receivers): refuse it."""

    label = "InvalidSignatureError"


class ClosedError(CollabError):
    """A `collab.client.Client` is closed and will not reconnect: `close()` was called, the server ended the
    session (1000), or reconnecting gave up (the last failure is the cause); `code` and `reason` are those of its
    last connection's close, if it had one."""

    label = "ClosedError"

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class RefusedError(ClosedError):
    """The server refused a `collab.client.Client` in a way no retry fixes: `code` is the close code (4401 a bad
    token, 4403 one for another document, 4410 deleted, 1008 too fast...) or the HTTP status of a refused upgrade
    (401, 403, 404), `reason` what the server said."""

    label = "RefusedError"

    def __init__(self, code: int, reason: str) -> None:
        what = f"HTTP {code}" if code < 1000 else str(code)
        super().__init__(f"the server refused the connection ({what}): {reason or 'no reason given'}", code, reason)

    def __reduce__(self) -> tuple[type[RefusedError], tuple[int, str], dict[str, object]]:
        """Pickled with its own arguments (an exception is rebuilt from `args`, here the message alone, which
        `__init__` does not take): across processes, `concurrent.futures`, `multiprocessing`."""
        return type(self), (int(self.code or 0), self.reason), self.__dict__


class ConfigError(CollabError):
    """A setting or command-line argument has a value collab cannot use: the user's to fix."""

    label = "ConfigError"


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
DOCUMENT_DELETED = 4410
"""The document was deleted (`collab delete`, `DELETE /api/docs/<name>`): like HTTP's 410 Gone."""
DOCUMENT_RENAMED = 4411
"""The document was renamed; the reason names the new name."""

# A close reason must fit in a control frame: 125 bytes minus the 2-byte code.
MAX_REASON_BYTES = 123

# Exit codes of the `collab` command; the module docstring lists them for users.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_IN_USE = 4
EXIT_STORAGE = 5
EXIT_CORRUPT = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as `yes | head` reports under `set -o pipefail`


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


def http_status_for(error: BaseException) -> HTTPStatus:
    """Map an error raised while answering an HTTP request to its status.

    A response may quote `str(error)` of a `CollabError`, never of anything else.
    """
    match error:
        case MessageTooBigError() | DocumentTooLargeError():
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        case ProtocolError() | InvalidRoomNameError() | ConfigError():
            return HTTPStatus.BAD_REQUEST
        case UnauthenticatedError():
            return HTTPStatus.UNAUTHORIZED
        case ForbiddenError():
            return HTTPStatus.FORBIDDEN
        case NotFoundError():
            return HTTPStatus.NOT_FOUND
        case AlreadyExistsError() | RestoreError():
            return HTTPStatus.CONFLICT
        case RateLimitError():
            return HTTPStatus.TOO_MANY_REQUESTS
        case CorruptDocumentError():
            return HTTPStatus.INTERNAL_SERVER_ERROR
        case ServerBusyError() | StorageError() | DatabaseInUseError():
            return HTTPStatus.SERVICE_UNAVAILABLE
        case _:
            return HTTPStatus.INTERNAL_SERVER_ERROR


def exit_code_for(error: BaseException) -> int:
    """Map an error that ends a `collab` command to its exit status (the module docstring lists them)."""
    match error:
        case ConfigError() | InvalidRoomNameError():
            return EXIT_USAGE
        case NotFoundError():
            return EXIT_NOT_FOUND
        case DatabaseInUseError():
            return EXIT_IN_USE
        case CorruptDocumentError():
            return EXIT_CORRUPT
        case StorageError():
            return EXIT_STORAGE
        case _:
            return EXIT_FAILURE


def metric_label(error: BaseException) -> str:
    """The stable name of an error in metrics; anything not collab's own is "unexpected"."""
    return error.label if isinstance(error, CollabError) else "unexpected"


def _truncate(reason: str) -> str:
    encoded = reason.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
