"""Restoring a document to an earlier version as one forward change. No I/O, no event loop.

A restore must not replace stored bytes: every client, and every offline copy,
holds the document's items, and would bring back whatever a replaced blob
lacked. It is instead a new change, made by a client id of its own on top of
the current document, that deletes and inserts until every root reads as it
did: applied to the current document it gives the old version's content, and
a client holding edits the server never saw merges with it as with anyone's.

Per root, by the type it has (`formats.root_types`):

- `Text`: a diff (`textdiff`), so that what others type meanwhile elsewhere in
  the text survives; formatting is then set where it differs. A text holding
  embeds is replaced whole.
- `Map`: only the keys whose values differ are set again, or deleted.
- `Array` and `XmlFragment`: replaced whole when they differ.
- A root only the current document has is emptied; a root whose type changed,
  or a value that is a subdocument, cannot be restored (`RestoreError`).

Building the documents costs a few times their size in native calls; the server
runs this in a thread, and hands it bytes only (a pycrdt `Doc` is not thread safe).
"""

from __future__ import annotations

import secrets
import time
from itertools import pairwise
from typing import Any

from pycrdt import Array, Doc, Map, Text, TransactionEvent, XmlElement, XmlFragment, XmlText, get_state

from ..errors import RestoreError
from ..formats import RootType, breathe, doc_from_records, doc_from_updates, root_types, to_json
from ..store import StoredRecord
from .room import EMPTY_UPDATE
from .textdiff import edit_text
from .yupdate import MAX_CLIENT_ID, check_state_vector

__all__ = ["holds", "restore_update", "version_update"]

MAX_ATTEMPTS = 100
"""Random client ids tried before giving up on finding one the document has not used (it has at most
100,000 clients, of 2^32 ids: one try almost always does)."""


def version_update(name: str, records: list[StoredRecord]) -> bytes:
    """The whole document `name` as the store's `records` (of `Store.load(name, at)`) make it, as one update.

    Every row is checked before pycrdt reads it (`formats.doc_from_records`): `CorruptDocumentError` names one
    that does not decode.
    """
    return doc_from_records(name, records).get_update()


def restore_update(current: bytes, version: bytes) -> bytes:
    """One update that, applied to the document `current` (a whole update), makes every root read as in
    `version` (another whole update of the same document); `EMPTY_UPDATE` if it reads so already.

    Both must be checked already (what a room holds; `version_update`). Raises `RestoreError` for a root that
    cannot be restored; nothing is changed then.
    """
    current_types, version_types = root_types(current), root_types(version)
    roots = {name: _root_type(name, current_types.get(name), version_types.get(name)) for name in current_types}
    roots.update({name: kind for name, kind in version_types.items() if name not in roots})
    doc: Doc = Doc(client_id=_fresh_client_id(current))
    started = time.perf_counter()
    doc.apply_update(current)
    breathe(started)
    old = doc_from_updates([version])
    made: list[bytes] = []
    subscription = doc.observe(lambda event: made.append(_update_of(event)))
    try:
        with doc.transaction():
            for name, kind in sorted(roots.items()):
                if kind is not None:
                    _restore_root(doc.get(name, type=kind), old.get(name, type=kind) if name in version_types else None)
    finally:
        doc.unobserve(subscription)
    return made[0] if made else EMPTY_UPDATE


def holds(state_vector: bytes, update: bytes) -> bool:
    """Whether a document with `state_vector` holds everything the (checked) `update` does: whether a restore
    worked out from `update` may be applied to it."""
    mine = check_state_vector(state_vector)
    return all(mine.get(client, 0) >= clock for client, clock in check_state_vector(get_state(update)).items())


def _update_of(event: TransactionEvent) -> bytes:
    update: bytes = event.update
    return update


def _root_type(name: str, now: RootType | None, then: RootType | None) -> RootType | None:
    """The type to restore root `name` as: the one it has (None: empty in both, nothing to do)."""
    if now is not None and then is not None and now is not then:
        raise RestoreError(
            f"root {name!r} is a {now.__name__} now but was a {then.__name__} then: it cannot be restored"
        )
    return now or then


def _fresh_client_id(update: bytes) -> int:
    """A client id the document has no change from: the restore's change must not continue anyone's clock."""
    used = check_state_vector(get_state(update))
    for _ in range(MAX_ATTEMPTS):
        client_id = 1 + secrets.randbelow(min(2**32, MAX_CLIENT_ID) - 1)
        if client_id not in used:
            return client_id
    raise RestoreError("found no client id the document has not used")


# Each kind of root.


def _restore_root(now: Any, then: Any) -> None:
    """Make root `now` read as `then` (None: a root the version did not have, emptied)."""
    match now:
        case Text():
            _restore_text(now, then)
        case Map():
            _restore_map(now, then)
        case Array():
            if then is None or _comparable(now) != _comparable(then):
                del now[:]
                for item in [] if then is None else then:
                    _append(now, item)
        case XmlFragment():
            if then is None or _comparable(now) != _comparable(then):
                del now.children[0 : len(now.children)]
                for child in [] if then is None else then.children:
                    _append_xml(now, child)


def _restore_text(now: Text, then: Text | None) -> None:
    if then is None:
        del now[:]
        return
    old, new = now.diff(), then.diff()
    if old == new:
        return
    if _has_embeds(old) or _has_embeds(new):
        del now[:]
        _fill_text(now, new)
        return
    edit_text(now, str(then))
    _restore_formatting(now, new)


def _restore_formatting(text: Text, chunks: list[tuple[Any, dict[str, Any] | None]]) -> None:
    """Set the attributes of `text`, which reads as `chunks` do, to theirs where they differ (None removes one)."""
    have, want = _attribute_runs(text.diff()), _attribute_runs(chunks)
    if have == want or not have or not want:
        return
    bounds = sorted({start for start, _ in have} | {start for start, _ in want})
    bounds.append(len(str(text).encode()))
    mine = theirs = 0  # the runs of `have` and `want` that hold the stretch from `start`
    for start, stop in pairwise(bounds):
        while mine + 1 < len(have) and have[mine + 1][0] <= start:
            mine += 1
        while theirs + 1 < len(want) and want[theirs + 1][0] <= start:
            theirs += 1
        old, new = have[mine][1], want[theirs][1]
        if old != new:
            text.format(start, stop, {key: new.get(key) for key in old.keys() | new.keys()})


def _attribute_runs(chunks: list[tuple[Any, dict[str, Any] | None]]) -> list[tuple[int, dict[str, Any]]]:
    """(start in UTF-8 bytes, attributes) of each chunk of a text without embeds."""
    runs, position = [], 0
    for content, attributes in chunks:
        runs.append((position, attributes or {}))
        position += len(str(content).encode())
    return runs


def _has_embeds(chunks: list[tuple[Any, dict[str, Any] | None]]) -> bool:
    return any(not isinstance(content, str) for content, _ in chunks)


def _fill_text(text: Text | XmlText, chunks: list[tuple[Any, dict[str, Any] | None]]) -> None:
    """Append `chunks` (of another text's `diff()`) to the integrated `text`, attributes and embeds included."""
    for content, attributes in chunks:
        at = len(text)
        if isinstance(content, str):
            text.insert(at, content, attributes)
        elif isinstance(content, (Text, Map, Array)) and isinstance(text, Text):
            embedded = _empty_like(content)
            text.insert_embed(at, embedded, attributes)
            _fill(embedded, content)
        else:
            _refuse_uncopyable(content, "a text")
            text.insert_embed(at, content, attributes)


def _restore_map(now: Map[Any], then: Map[Any] | None) -> None:
    old = {} if then is None else dict(then.items())
    for key in [key for key in now.keys() if key not in old]:  # noqa: SIM118 (pycrdt's Map is no dict)
        del now[key]
    for key, value in old.items():
        if key not in now or _comparable(now[key]) != _comparable(value):
            _set(now, key, value)


# Copies of another document's values into this one.


def _empty_like(value: Text | Map[Any] | Array[Any]) -> Text | Map[Any] | Array[Any]:
    return type(value)()


def _fill(target: Any, source: Any) -> None:
    """Fill `target`, an empty shared type just integrated, with what `source` (of the same type) holds."""
    match source:
        case Text():
            _fill_text(target, source.diff())
        case Map():
            for key, value in source.items():
                _set(target, key, value)
        case Array():
            for item in source:
                _append(target, item)


def _set(target: Map[Any], key: str, value: Any) -> None:
    if isinstance(value, (Text, Map, Array)):
        target[key] = copy = _empty_like(value)
        _fill(copy, value)
    else:
        _refuse_uncopyable(value, f"the map key {key!r}")
        target[key] = value


def _append(target: Array[Any], item: Any) -> None:
    if isinstance(item, (Text, Map, Array)):
        copy = _empty_like(item)
        target.append(copy)
        _fill(copy, item)
    else:
        _refuse_uncopyable(item, "an array")
        target.append(item)


def _append_xml(parent: XmlFragment | XmlElement, child: Any) -> None:
    if isinstance(child, XmlText):
        text = parent.children.append(XmlText())
        _fill_text(text, child.diff())
    elif isinstance(child, XmlElement):
        tag = child.tag
        if tag is None:
            raise RestoreError("an XML element without a tag cannot be copied")
        element = parent.children.append(XmlElement(tag))
        for key, value in child.attributes.__iter__():  # see formats.to_json on iterating attributes
            element.attributes[key] = value
        for grandchild in child.children:
            _append_xml(element, grandchild)
    else:
        raise RestoreError(f"an XML fragment holds a {type(child).__name__}, which a restore cannot copy")


def _refuse_uncopyable(value: Any, where: str) -> None:
    """Raise `RestoreError` for a value a restore cannot copy into `where`: a subdocument (its content is another
    document's), or XML nested in a map, an array or a text (pycrdt cannot insert it there)."""
    if isinstance(value, Doc):
        raise RestoreError(f"{where} holds a subdocument ({value.guid}), which a restore cannot bring back")
    if isinstance(value, (XmlFragment, XmlElement, XmlText)):
        raise RestoreError(f"{where} holds XML, which a restore cannot copy there")


def _comparable(value: Any) -> Any:
    """`value` as data that compares equal exactly when two values read the same, formatting included."""
    match value:
        case Text():
            return ("text", [(_comparable(content), attributes) for content, attributes in value.diff()])
        case Map():
            return ("map", {key: _comparable(item) for key, item in value.items()})
        case Array():
            return ("array", [_comparable(item) for item in value])
        case XmlFragment() | XmlElement() | XmlText():
            return ("xml", to_json(value))
        case Doc():
            return ("doc", str(value.guid))
    return value
