"""Restoring a document to an earlier version as one forward change. No I/O, no event loop.

A restore must not replace stored bytes: every client, and every offline copy,
holds the document's items, and would bring back whatever a replaced blob
lacked. It is instead a new change, made by a client id of its own on top of
the current document, that deletes and inserts until every root reads as it
did: applied to the current document it gives the old version's content, and
a client holding edits the server never saw merges with it as with anyone's.

Per root, by the type it has (`formats.typed_roots`):

- `Text`: a diff (`textdiff`), so that what others type meanwhile elsewhere in
  the text survives; formatting is then set where it differs. A text holding
  embeds, or whose formatting differs in too many places, is replaced whole.
- `Map`: only the keys whose values differ are set again, or deleted.
- `Array` and `XmlFragment`: replaced whole when they differ.
- A root only the current document has is emptied; a root whose type changed,
  or a value that is a subdocument, cannot be restored (`RestoreError`).

yrs finds a position by walking a sequence's items from its start, deleted
ones included, so each insertion at the end of a long sequence costs its length:
what replaces a sequence is built backwards, every part inserted at the start,
before what it replaces is deleted (40,000 items: 80 s appended, 0.1 s so), and
the edits of one change are bounded (`textdiff.edits_for`). pycrdt reads an
array's items the same way, one index at a time, so an array of tens of
thousands of items still takes seconds to compare and copy (as to export).

Building the documents costs a few times their size in native calls, each
holding the GIL; the caller runs this in a thread, and passes `pause`
(`formats.breathe`), which is called after each call that may have been long,
to let its event loop run. It hands the thread bytes only (a pycrdt `Doc` is
not thread safe).
"""

from __future__ import annotations

import secrets
import time
from itertools import pairwise
from typing import Any, NamedTuple

from pycrdt import Array, Doc, Map, Text, TransactionEvent, XmlElement, XmlFragment, XmlText, get_state

from ..errors import RestoreError
from ..formats import Pause, Root, doc_from_updates, to_json, typed_roots
from .textdiff import edit_text, edits_for
from .yupdate import EMPTY_UPDATE, MAX_CLIENT_ID, check_state_vector

__all__ = ["Restore", "fresh_client_id", "holds", "restore_update", "with_article"]

MAX_ATTEMPTS = 100
"""Random client ids tried before giving up on finding one the document has not used (it has at most
100,000 clients, of 2^32 ids: one try almost always does)."""


class Restore(NamedTuple):
    """The change a restore makes, and what it makes of the document."""

    update: bytes
    """The change; `EMPTY_UPDATE` if the document reads as the version already."""
    size: int
    """Bytes of the whole document once the change is applied (what the size limit holds it to)."""


def restore_update(current: bytes, version: bytes, pause: Pause | None = None) -> Restore:
    """The change that, applied to the document `current` (a whole update), makes every root read as in
    `version` (another whole update of the same document), and the size it leaves the document at.

    Both must be checked already (what a room holds; `formats.update_from_records`). Raises `RestoreError`
    for a root that cannot be restored; nothing is changed then. `pause` is called with the time each long
    native call started (see the module docstring).
    """
    now_roots, then_roots = typed_roots(current, pause), typed_roots(version, pause)
    kinds = {name: _root_type(name, now_roots.get(name), then_roots.get(name)) for name in now_roots | then_roots}
    doc = doc_from_updates([current], pause, client_id=fresh_client_id(current))
    most = edits_for(len(current))
    made: list[bytes] = []
    subscription = doc.observe(lambda event: made.append(_update_of(event)))
    started = time.perf_counter()
    try:
        with doc.transaction():
            for name, kind in sorted(kinds.items()):
                if kind is not None:
                    _restore_root(doc.get(name, type=kind), then_roots.get(name), most)
    finally:
        doc.unobserve(subscription)
    if pause is not None:
        pause(started)
    if not made:
        return Restore(EMPTY_UPDATE, len(current))
    started = time.perf_counter()
    size = len(doc.get_update())
    if pause is not None:
        pause(started)
    return Restore(made[0], size)


def holds(state_vector: bytes, update: bytes) -> bool:
    """Whether a document with `state_vector` holds everything the (checked) `update` does: whether `update`
    is of its past, so that a restore worked out from it may be applied to it."""
    mine = check_state_vector(state_vector)
    return all(mine.get(client, 0) >= clock for client, clock in check_state_vector(get_state(update)).items())


def _update_of(event: TransactionEvent) -> bytes:
    update: bytes = event.update
    return update


def _root_type(name: str, now: Root | None, then: Root | None) -> type[Root] | None:
    """The type to restore root `name` as: the one it has (None: empty in both, nothing to do)."""
    if now is not None and then is not None and type(now) is not type(then):
        now_kind, then_kind = with_article(type(now)), with_article(type(then))
        raise RestoreError(f"root {name!r} is {now_kind} now but was {then_kind} then: it cannot be restored")
    found = now if now is not None else then
    return None if found is None else type(found)


def with_article(kind: type) -> str:
    """A pycrdt type's name with its indefinite article, as read aloud: 'a Map', 'an Array', 'an XmlText'."""
    return f"{'an' if kind.__name__[0] in 'AEIOUX' else 'a'} {kind.__name__}"  # X: "ex", as in "an XML fragment"


def fresh_client_id(update: bytes) -> int:
    """A client id document `update` (a whole update, checked) has no change from, for a change the server makes
    (a restore, a text the write API replaces): it must not continue anyone's clock. Raises `RestoreError` in
    the unlikely case that none of `MAX_ATTEMPTS` random ids is free."""
    used = check_state_vector(get_state(update))
    for _ in range(MAX_ATTEMPTS):
        client_id = 1 + secrets.randbelow(min(2**32, MAX_CLIENT_ID) - 1)
        if client_id not in used:
            return client_id
    raise RestoreError("found no client id the document has not used")


# Each kind of root.


def _restore_root(now: Any, then: Any, most: int) -> None:
    """Make root `now` read as `then` (None: a root the version did not have, emptied)."""
    match now:
        case Text():
            _restore_text(now, then, most)
        case Map():
            _restore_map(now, then)
        case Array():
            if then is None or _comparable(now) != _comparable(then):
                length = len(now)
                _fill_array(now, [] if then is None else list(then))
                del now[len(now) - length :]
        case XmlFragment():
            if then is None or _comparable(now) != _comparable(then):
                length = len(now.children)
                _fill_xml(now, [] if then is None else list(then.children))
                del now.children[len(now.children) - length :]


def _restore_text(now: Text, then: Text | None, most: int) -> None:
    """Make `now` read as `then`, with at most about `most` edits and as many format changes."""
    if then is None:
        del now[:]
        return
    old, new = now.diff(), then.diff()
    if old == new:
        return
    if _has_embeds(old) or _has_embeds(new):
        _replace_text(now, new)
        return
    edit_text(now, str(then), most)
    formats = _format_changes(now.diff(), new)
    if len(formats) > most:  # each format walks the text from its start: too many of them cost its square
        _replace_text(now, new)
        return
    for start, stop, attributes in formats:
        now.format(start, stop, attributes)


def _replace_text(text: Text, chunks: list[tuple[Any, dict[str, Any] | None]]) -> None:
    """Make `text` read as `chunks` by inserting them all before what it holds, then deleting that.

    Not the other way round: an insertion with attributes at the start skips the deleted items there, so each
    one would walk the whole deleted text (40,000 chunks into a deleted text of as many: 110 s, against 0.1 s).
    """
    length = len(text)
    _fill_text(text, chunks)
    del text[len(text) - length :]


def _format_changes(
    have_chunks: list[tuple[Any, dict[str, Any] | None]], want_chunks: list[tuple[Any, dict[str, Any] | None]]
) -> list[tuple[int, int, dict[str, Any]]]:
    """The `Text.format` calls (start, stop in UTF-8 bytes, attributes: None removes one) that turn the
    formatting of a text reading as `have_chunks` into that of `want_chunks`, which reads the same."""
    have, want = _attribute_runs(have_chunks), _attribute_runs(want_chunks)
    if have == want or not have or not want:
        return []
    bounds = sorted({start for start, _ in have} | {start for start, _ in want})
    bounds.append(sum(len(str(content).encode()) for content, _ in have_chunks))
    changes = []
    mine = theirs = 0  # the runs of `have` and `want` that hold the stretch from `start`
    for start, stop in pairwise(bounds):
        while mine + 1 < len(have) and have[mine + 1][0] <= start:
            mine += 1
        while theirs + 1 < len(want) and want[theirs + 1][0] <= start:
            theirs += 1
        old, new = have[mine][1], want[theirs][1]
        if old != new:
            changes.append((start, stop, {key: new.get(key) for key in old.keys() | new.keys()}))
    return changes


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
    """Put `chunks` (of another text's `diff()`) at the start of the integrated `text`, attributes and embeds
    included: backwards, each at the start (see the module docstring)."""
    for content, attributes in reversed(chunks):
        if isinstance(content, str):
            text.insert(0, content, attributes)
        elif isinstance(content, (Text, Map, Array)) and isinstance(text, Text):
            embedded = _empty_like(content)
            text.insert_embed(0, embedded, attributes)
            _fill(embedded, content)
        else:
            _refuse_uncopyable(content, "a text")
            text.insert_embed(0, content, attributes)


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
            _fill_array(target, list(source))


def _set(target: Map[Any], key: str, value: Any) -> None:
    if isinstance(value, (Text, Map, Array)):
        target[key] = copy = _empty_like(value)
        _fill(copy, value)
    else:
        _refuse_uncopyable(value, f"the map key {key!r}")
        target[key] = value


def _fill_array(target: Array[Any], items: list[Any]) -> None:
    """Put `items` at the start of the integrated `target`: backwards, each at the start."""
    for item in reversed(items):
        if isinstance(item, (Text, Map, Array)):
            copy = _empty_like(item)
            target.insert(0, copy)
            _fill(copy, item)
        else:
            _refuse_uncopyable(item, "an array")
            target.insert(0, item)


def _fill_xml(parent: XmlFragment | XmlElement, children: list[Any]) -> None:
    """Put copies of `children` at the start of the integrated `parent`: backwards, each at the start."""
    for child in reversed(children):
        if isinstance(child, XmlText):
            text = parent.children.insert(0, XmlText())
            _fill_text(text, child.diff())
        elif isinstance(child, XmlElement):
            tag = child.tag
            if tag is None:
                raise RestoreError("an XML element without a tag cannot be copied")
            element = parent.children.insert(0, XmlElement(tag))
            for key, value in child.attributes.__iter__():  # see formats.to_json on iterating attributes
                element.attributes[key] = value
            _fill_xml(element, list(child.children))
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
