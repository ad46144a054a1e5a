"""A document as a file: plain text, Markdown, JSON of every root type, or the Yjs update itself.

The web editor and most clients keep a document's text in the root `Y.Text`
named `content`; `txt` and `md` export that. `json` exports every root, whose
types are not recorded in a Yjs update and are found by looking (see
`typed_roots`). `ydoc` is the whole document as one Yjs v1 update, which any Yjs
or pycrdt client can load, and which `collab import` merges back.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any, Literal

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText, merge_updates

from .errors import CorruptDocumentError, NotFoundError
from .store import DocumentInfo, StoredRecord
from .sync.room import check_records
from .sync.yupdate import EMPTY_UPDATE
from .units import format_time

__all__ = [
    "CONTENT_ROOT",
    "FORMATS",
    "Format",
    "Pause",
    "Root",
    "breathe",
    "check_existed",
    "doc_from_records",
    "doc_from_updates",
    "render",
    "to_json",
    "typed_roots",
    "update_from_records",
]

CONTENT_ROOT = "content"

Format = Literal["txt", "md", "json", "ydoc"]
FORMATS: dict[str, tuple[str, str]] = {
    "txt": ("txt", "text/plain; charset=utf-8"),
    "md": ("md", "text/markdown; charset=utf-8"),
    "json": ("json", "application/json"),
    "ydoc": ("ydoc", "application/octet-stream"),
}
"""format -> (file extension, content type)"""

RootType = type[Map] | type[Text] | type[XmlFragment] | type[Array]
SHARED_TYPES = (Text, Map, Array, XmlFragment, XmlElement, XmlText)
"""What a text's embedded content may be besides plain values: shared types, which an array holds alike."""


LONG_NATIVE_CALL = 0.05
"""Seconds of one pycrdt call (it holds the GIL throughout) after which the thread rendering pauses (`breathe`)."""
BREATHER = 0.005

Pause = Callable[[float], None]
"""Called after a native call that may have been long, with the `time.perf_counter` time it started: `breathe`
lets the event loop run; None, where a function takes one, never pauses."""

Root = Map[Any] | Text | XmlFragment | Array[Any]
"""A root of a document, viewed as the type it has."""


def breathe(since: float) -> None:
    """Pause for a moment if the native call started at `since` (`time.perf_counter`) was a long one.

    Exports render in a thread (collab.http.api), but each pycrdt call on a large document holds the GIL for
    a few hundred ms, and a keystroke needs the event loop for a few turns in a row to be relayed: without the
    pause the rendering thread took the GIL back between those turns, and one keystroke waited through several
    calls instead of one. Small documents never pause, so exporting many of them costs nothing more.
    """
    if time.perf_counter() - since > LONG_NATIVE_CALL:
        time.sleep(BREATHER)


def doc_from_updates(updates: list[bytes], pause: Pause | None = breathe, client_id: int | None = None) -> Doc:
    """A document of `updates` (checked already), applied in turn; `client_id`: the one its own changes get."""
    doc: Doc = Doc() if client_id is None else Doc(client_id=client_id)
    with doc.transaction():
        for update in updates:
            started = time.perf_counter()
            doc.apply_update(update)
            if pause is not None:
                pause(started)
    return doc


def doc_from_records(name: str, records: list[StoredRecord]) -> Doc:
    """Document `name` from what the store loaded, each row checked first (`room.check_records`).

    Raises `CorruptDocumentError` if a row would crash pycrdt or pycrdt refuses it.
    """
    check_records(name, records)
    try:
        return doc_from_updates([record.data for record in records])
    except ValueError as error:
        raise CorruptDocumentError(f"document {name!r} does not decode: {error}") from error


def update_from_records(name: str, records: list[StoredRecord]) -> bytes:
    """Document `name` from what the store loaded as one update (merged, not integrated: cheaper than a
    `Doc`), each row checked first as `doc_from_records` does; an empty update for no rows."""
    check_records(name, records)
    if len(records) <= 1:
        return records[0].data if records else EMPTY_UPDATE
    try:
        return merge_updates(*(record.data for record in records))
    except ValueError as error:
        raise CorruptDocumentError(f"document {name!r} does not decode: {error}") from error


def check_existed(info: DocumentInfo, at: float) -> None:
    """Raise `NotFoundError` if the document was created after `at` (the CLI and the API say the same)."""
    if at < info.created_at:
        when, created = format_time(at), format_time(info.created_at)
        raise NotFoundError(f"document {info.name!r} did not exist yet at {when}; it was created at {created}")


def typed_roots(update: bytes, pause: Pause | None = breathe) -> dict[str, Root | None]:
    """Every root of a document (a checked update), each viewed as the type it has, by viewing it each way on a
    scratch copy; None for a root that shows no content (emptied).

    A Yjs update names its roots but not their types, and viewing a root as a type fixes it for good, hence one
    copy per candidate type; each root returned is read from the copy that viewed it as its type, so the
    copies are read, never written. A map has keys; a text has characters, formatting or embedded values
    (not shared types); an XML fragment has element or text children; an array has items. A text whose only
    content is embedded shared types cannot be told from an array of them (the update holds the same items):
    it is an array.
    """
    probes: list[tuple[RootType, Callable[[Any], bool]]] = [
        (Map, lambda root: len(root) > 0),
        (Text, lambda root: any(not isinstance(content, SHARED_TYPES) for content, _ in root.diff())),
        (XmlFragment, lambda root: any(isinstance(child, (XmlElement, XmlText)) for child in root.children)),
        (Array, lambda root: len(root) > 0),
    ]
    found: dict[str, Root | None] = {}
    for root_type, has_content in probes:
        scratch = doc_from_updates([update], pause)
        if not found:
            found = dict.fromkeys(scratch.keys())
        for name, root in found.items():
            if root is None:
                view: Root = scratch.get(name, type=root_type)
                if has_content(view):
                    found[name] = view
        if None not in found.values():
            break  # every root typed: no more scratch copies (each one decodes the whole document)
    return found


def to_json(value: Any) -> Any:
    """A shared type (or plain value inside one) as JSON-compatible data, faithfully."""
    if isinstance(value, Text):
        return str(value)
    if isinstance(value, Map):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, Array):
        return [to_json(item) for item in value]
    if isinstance(value, XmlFragment):
        return {"type": "fragment", "children": [to_json(child) for child in value.children]}
    if isinstance(value, XmlElement):
        # pycrdt 0.14 annotates XmlAttributesView.__iter__ as returning an Iterable, not an Iterator,
        # so `for ... in value.attributes` does not type-check; iterating what it returns does.
        attributes = value.attributes.__iter__()
        return {
            "type": "element",
            "name": value.tag,
            "attributes": {key: to_json(item) for key, item in attributes},
            "children": [to_json(child) for child in value.children],
        }
    if isinstance(value, XmlText):
        return {"type": "text", "delta": [_delta_chunk(chunk) for chunk in value.diff()]}
    if isinstance(value, bytes):
        return {"type": "binary", "base64": base64.b64encode(value).decode()}
    if isinstance(value, Doc):
        return {"type": "subdocument", "guid": str(value.guid)}
    return value


def _delta_chunk(chunk: tuple[Any, dict[str, Any] | None]) -> dict[str, Any]:
    content, attributes = chunk
    entry: dict[str, Any] = {"insert": to_json(content)}
    if attributes:
        entry["attributes"] = {key: to_json(item) for key, item in attributes.items()}
    return entry


def render(doc: Doc, fmt: str, info: DocumentInfo | None = None, name: str | None = None) -> bytes:
    """The document in format `fmt` (one of FORMATS)."""
    if fmt in ("txt", "md"):
        return str(doc.get(CONTENT_ROOT, type=Text)).encode() if CONTENT_ROOT in doc.keys() else b""  # noqa: SIM118 (Doc types no __contains__)
    started = time.perf_counter()
    update = doc.get_update()
    breathe(started)
    if fmt == "ydoc":
        return update
    if fmt == "json":
        roots = {name: None if root is None else to_json(root) for name, root in sorted(typed_roots(update).items())}
        document = {
            "name": name if name is not None else info.name if info else None,
            "size": info.size if info else len(update),
            "updated_at": format_time(info.updated_at) if info else None,
            "state_vector": base64.b64encode(doc.get_state()).decode(),
            "roots": roots,
        }
        return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
