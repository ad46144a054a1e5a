"""Room names: taken from the request path, percent-decoded, validated.

`/notes/doc%201?token=x` is the room `notes/doc 1`. A name is 1 to
`MAX_NAME_LENGTH` characters of UTF-8 text with no control characters and no
leading or trailing whitespace, so that it reads the same in logs, file names
and URLs.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote, urlsplit

from ..errors import InvalidRoomNameError

__all__ = ["MAX_NAME_LENGTH", "room_name_from_path", "validate_room_name"]

MAX_NAME_LENGTH = 255


def room_name_from_path(path: str) -> str:
    """The validated room name a WebSocket request path asks for."""
    try:
        raw = urlsplit(path).path
    except ValueError as error:  # "//[x/room": what urlsplit reads as an unclosed IPv6 host
        raise InvalidRoomNameError(f"malformed request path: {error}") from error
    if not raw.startswith("/"):
        raise InvalidRoomNameError("request path must start with /")
    try:
        name = unquote(raw[1:], errors="strict")
    except UnicodeDecodeError as error:
        raise InvalidRoomNameError("room name is not valid UTF-8 after percent-decoding") from error
    return validate_room_name(name)


def validate_room_name(name: str) -> str:
    """Return `name` if it is acceptable; raise `InvalidRoomNameError` saying why not."""
    if not name:
        raise InvalidRoomNameError("no room name: connect to ws://HOST:PORT/ROOM")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRoomNameError(f"room name is {len(name)} characters long, the limit is {MAX_NAME_LENGTH}")
    if name != name.strip():
        raise InvalidRoomNameError("room name starts or ends with whitespace")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidRoomNameError(f"room name contains control character U+{ord(char):04X}")
    return name
