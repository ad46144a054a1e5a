"""Document names <-> file names: safe in any directory, reversible, readable.

A name may hold `/`, spaces, `..` and any Unicode. Its file name keeps letters,
digits, spaces and Unicode as they are and percent-encodes (UTF-8) what a file
system treats specially: `% / \\ : * ? " < > |`, control characters, a
leading `.` or `_` (and the `m` of a document that would be `manifest.json`). The
result has no directory part, so it cannot escape the output directory.

A name whose encoding would exceed file-name limits gets a generated file name,
`_long-<hash>`, that the manifest maps back. A leading `_` is percent-encoded
in every other name, so no document's own file name starts with `_` and none
can be taken for, or overwrite, another's generated one (a document named
`_long-<hash of another>` once did).
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

__all__ = [
    "GENERATED_PREFIX",
    "MANIFEST",
    "MAX_FILE_NAME_BYTES",
    "file_name_for",
    "is_generated",
    "name_from_file_name",
]

MANIFEST = "manifest.json"
"""The export's own index, which no document's file may take."""

MAX_FILE_NAME_BYTES = 240  # below the 255 of common file systems, leaving room for an extension
_SPECIAL = set('%/\\:*?"<>|')
GENERATED_PREFIX = "_long-"
"""Starts every generated file name, and no other: a leading `_` in a name is always encoded."""


def _encode_char(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())


def file_name_for(name: str, extension: str) -> str:
    """The file name (`stem.extension`) a document is exported to."""
    stem = "".join(
        _encode_char(char)
        if char in _SPECIAL or ord(char) < 0x20 or ord(char) == 0x7F or (index == 0 and char in "._")
        else char
        for index, char in enumerate(name)
    )
    if len(stem.encode()) > MAX_FILE_NAME_BYTES:
        stem = GENERATED_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:32]
    file_name = f"{stem}.{extension}"
    return _encode_char(file_name[0]) + file_name[1:] if file_name == MANIFEST else file_name


def is_generated(file_name: str) -> bool:
    """Whether `file_name` is a generated one, whose document name only the export's manifest knows."""
    return file_name.startswith(GENERATED_PREFIX)


def name_from_file_name(file_name: str) -> str:
    """The document name a file name stands for (the inverse of `file_name_for`; see `is_generated`)."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.lstrip(".") else file_name
    return unquote(stem, errors="strict")
