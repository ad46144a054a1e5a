"""collab's walk of the Yjs v1 update format: everything real passes, everything hostile is refused, with why."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText, get_state, merge_updates

from collab.errors import InvalidUpdateError
from collab.sync.protocol import encode_var_string, encode_var_uint
from collab.sync.yupdate import (
    MAX_CLOCK,
    MAX_DEPTH,
    MAX_STATE_VECTOR_CLIENTS,
    MAX_STORED_DEPTH,
    check_state_vector,
    check_update,
    struct_ends,
)

from . import craft
from .helpers import INTEROP


def recorded(edit: Callable[[Doc], None]) -> list[bytes]:
    """Every update a pycrdt Doc emits while `edit` runs on it, then the whole document."""
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    edit(doc)
    return [*updates, doc.get_update()]


def edit_text(doc: Doc) -> None:
    content = doc.get("content", type=Text)
    for ch in "hello, world":
        content.insert(len(content), ch)
    content.insert(0, "é😀漢")
    del content[2:5]
    content.format(0, 4, {"bold": True, "link": {"href": "https://example.com"}})
    content.insert_embed(1, {"image": "cat.png", "size": [1, 2]})
    content.insert(3, "x", {"italic": True})


def edit_map_and_array(doc: Doc) -> None:
    values = doc.get("map", type=Map)
    for key, value in {
        "int": 42,
        "negative": -7,
        "big": 2**40,
        "float": 1.5,
        "string": "ünïcödé",
        "null": None,
        "true": True,
        "false": False,
        "bytes": b"\x00\x01\xff",
        "nested": {"a": [1, {"b": [[], {}]}], "c": "d"},
    }.items():
        values[key] = value
    values["map"] = Map({"inner": Array([1, Text("t")])})
    array = doc.get("array", type=Array)
    array.extend([1, "two", {"three": 3}, [4], None])
    array.insert(1, Map({"k": "v"}))
    del array[0:2]
    del values["int"]


def edit_xml(doc: Doc) -> None:
    fragment = doc.get("prosemirror", type=XmlFragment)
    paragraph = fragment.children.append(XmlElement("paragraph", {"class": "intro"}))
    hello = paragraph.children.append(XmlText("hello"))
    hello.format(0, 2, {"strong": {}})
    fragment.children.append(XmlText("tail"))


def edit_subdocuments(doc: Doc) -> None:
    folder = doc.get("folder", type=Map)
    folder["a"] = Doc()
    folder["b"] = Doc()
    del folder["a"]


def edit_concurrently(doc: Doc) -> None:
    other: Doc = Doc()
    other.get("content", type=Text).insert(0, "one two three")
    doc.apply_update(other.get_update())
    doc.get("content", type=Text).insert(13, " four")
    del other.get("content", type=Text)[0:4]
    doc.apply_update(other.get_update())


EDITS = [edit_text, edit_map_and_array, edit_xml, edit_subdocuments, edit_concurrently]


@pytest.mark.parametrize("edit", EDITS, ids=lambda edit: edit.__name__)
def test_every_update_pycrdt_writes_passes(edit: Callable[[Doc], None]) -> None:
    updates = recorded(edit)
    for update in [*updates, merge_updates(*updates)]:
        check_update(update)
        check_update(update, strict=False)
    # The walk follows every length right: its clocks for whole documents are the ones pycrdt reads.
    for whole in (updates[-1], merge_updates(*updates)):
        assert struct_ends(whole) == check_state_vector(get_state(whole))


@pytest.mark.skipif(
    shutil.which("node") is None or not (INTEROP / "node_modules" / "yjs").is_dir(), reason="needs node and npm yjs"
)
def test_every_update_the_stock_yjs_writes_passes() -> None:
    result = subprocess.run(["node", "updates.mjs"], cwd=INTEROP, capture_output=True, timeout=60, check=True)
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(lines) > 40 and any("gap" in line["name"] for line in lines)
    for line in lines:
        update = bytes.fromhex(line["update"])
        check_update(update)
        doc: Doc = Doc()
        doc.apply_update(update)  # and pycrdt reads what the walk accepted


def test_the_keystroke_fast_path_takes_what_typists_send() -> None:
    from collab.sync.yupdate import _DELETION, _KEYSTROKE

    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content = doc.get("content", type=Text)
    content.insert(0, "ab")
    content.insert(1, "x")  # between two characters: both origins
    content.insert(0, "y")  # at the start: a right origin only
    content.insert(len(content), "é")
    del content[1]
    assert [bool(_KEYSTROKE.fullmatch(u) or _DELETION.fullmatch(u)) for u in updates] == [False, True, True, True, True]


def lengths(text: str) -> bytes:
    return encode_var_string(text)


REFUSED = {
    "Any nested 30,000 deep": (craft.nested_any(30_000), f"nests deeper than {MAX_DEPTH}"),
    "Any nested one level too deep": (craft.nested_any(MAX_DEPTH + 1), f"nests deeper than {MAX_DEPTH}"),
    "map nested too deep": (craft.any_update(b"\x76\x01\x01k" * (MAX_DEPTH + 1) + b"\x7e"), "nests deeper"),
    "clock + length past 2^32": (craft.text_update(7, MAX_CLOCK, "ab"), "beyond 4294967295"),
    "clock 2^32": (craft.text_update(7, 2**32 + 5, "x"), "does not fit"),
    "clock 2^64 (yrs would wrap it to 0)": (craft.text_update(7, 2**64, "x"), "does not fit"),
    "delete range past 2^32": (craft.deletion(7, MAX_CLOCK - 1, 5), "ends beyond"),
    "delete range at 2^32": (craft.deletion(7, 2**32, 1), "does not fit"),
    "deleted length past 2^32": (craft.deletion(7, 0, 2**32), "does not fit"),
    "client id past 2^53": (craft.text_update(2**53, 0, "x"), "does not fit"),
    "origin clock past 2^32": (craft.update(7, 1, b"\x84\x07" + encode_var_uint(2**32) + lengths("x")), "does not fit"),
    "GC length past 2^32": (craft.update(7, 0, b"\x00" + encode_var_uint(2**32)), "does not fit"),
    "trailing bytes": (craft.text_update(7, 0, "x") + b"\x00", "after the delete set"),
    "truncated": (craft.text_update(7, 0, "hello")[:-3], "needs"),
    "empty": (b"", "missing"),
    "string not UTF-8": (craft.update(7, 0, craft.root_item(craft.STRING, b"\x02\xc3\x28")), "not valid UTF-8"),
    "root name not UTF-8": (craft.update(7, 0, b"\x04\x01\x01\xff\x01x"), "not valid UTF-8"),
    "Any string not UTF-8": (craft.any_update(b"\x77\x01\xff"), "not valid UTF-8"),
    "legacy ContentJSON": (craft.update(7, 0, craft.root_item(0x02, b"\x01" + lengths("1"))), "content type 2"),
    "XmlHook": (craft.update(7, 0, craft.root_item(0x07, b"\x05" + lengths("hook"))), "type ref 5"),
    "type ref yjs does not know": (craft.update(7, 0, craft.root_item(0x07, b"\x09")), "type ref 9"),
    "unknown content type": (craft.update(7, 0, craft.root_item(0x0B, b"")), "content type 11"),
    "info bit 4": (craft.update(7, 0, craft.root_item(0x14, lengths("x"))), "bit 4"),
    "GC with flags": (craft.update(7, 0, b"\x80\x01"), "flag bits"),
    "parent kind 2": (craft.update(7, 0, b"\x04\x02" + lengths("x") + lengths("y")), "parent kind"),
    "client with no structs": (b"\x01\x00\x07\x00\x00", "no struct of non-zero length"),
    "client with only an empty string": (craft.update(7, 0, craft.root_item(craft.STRING, b"\x00")), "non-zero"),
    "GC of length 0": (craft.update(7, 0, b"\x00\x00", b"\x00\x01"), "GC or skip of length 0"),
    "skip of length 0": (craft.update(7, 0, b"\x0a\x00", b"\x00\x01"), "GC or skip of length 0"),
    "client twice": (b"\x02" + craft.text_update(7, 0, "a")[1:-1] + craft.text_update(7, 1, "b")[1:], "listed twice"),
    "delete set client twice": (b"\x00\x02\x07\x01\x00\x01\x07\x01\x02\x01", "twice"),
    "more structs than bytes": (b"\x01" + encode_var_uint(1000) + b"\x07\x00\x00", "cannot fit"),
    "more clients than bytes": (encode_var_uint(2**31) + b"\x00", "cannot fit"),
    "more values than bytes": (craft.any_update(b"\x75" + encode_var_uint(10**9)), "cannot fit"),
    "varint of 11 bytes": (b"\x80" * 10 + b"\x00\x00", "longer than"),
    "unknown Any tag": (craft.any_update(b"\x10"), "unknown type tag 16"),
    "Any integer past 2^53": (craft.any_update(b"\x7d" + craft.var_int(2**54)), "53 bits"),
    "embed that is not JSON": (craft.update(7, 0, craft.root_item(0x05, lengths("{nope"))), "not JSON"),
    "embed with NaN": (craft.update(7, 0, craft.root_item(0x05, lengths("[NaN]"))), "not JSON"),
    "embed with 1e400": (craft.update(7, 0, craft.root_item(0x05, lengths("1e400"))), "out of range"),
    "embed with a lone surrogate": (craft.update(7, 0, craft.root_item(0x05, lengths('"\\ud800"'))), "surrogate"),
    "embed nested too deep": (craft.update(7, 0, craft.root_item(0x05, lengths("[" * 100 + "]" * 100))), "nests"),
    "format value not JSON": (craft.update(7, 0, craft.root_item(0x06, lengths("bold") + lengths("tru"))), "not JSON"),
    "subdocument options not a map": (
        craft.update(7, 0, craft.root_item(0x09, lengths("guid") + b"\x7e")),
        "not a map",
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_hostile_updates_are_refused_saying_why(kind: str) -> None:
    update, reason = REFUSED[kind]
    with pytest.raises(InvalidUpdateError, match="invalid Yjs update") as raised:
        check_update(update)
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    "kind",
    [
        "Any nested 30,000 deep",
        "legacy ContentJSON",
        "client with no structs",
        "client with only an empty string",
        "GC of length 0",
        "clock + length past 2^32",
        "clock 2^32",
        "delete range past 2^32",
        "client id past 2^53",
        "truncated",
        "string not UTF-8",
        "more values than bytes",
        "unknown Any tag",
    ],
)
def test_stored_rows_are_refused_for_what_could_crash_pycrdt(kind: str) -> None:
    update, _ = REFUSED[kind]
    with pytest.raises(InvalidUpdateError):
        check_update(update, strict=False)


def test_stored_rows_keep_what_pycrdt_reads_alike() -> None:
    """What an older collab let in and pycrdt reads without harm stays loadable (strict=False)."""
    for update in [
        REFUSED["client twice"][0],
        REFUSED["trailing bytes"][0],
        REFUSED["parent kind 2"][0],
        craft.nested_any(MAX_STORED_DEPTH),
    ]:
        check_update(update, strict=False)
        get_state(update)
    with pytest.raises(InvalidUpdateError, match="nests deeper"):
        check_update(craft.nested_any(MAX_STORED_DEPTH + 1), strict=False)


def test_limits_are_inclusive() -> None:
    empty = craft.root_item(craft.STRING, b"\x00")  # pycrdt writes one when an edit splits a surrogate pair
    check_update(craft.update(7, 0, empty, craft.root_item(craft.STRING, b"\x01x")))
    check_update(craft.text_update(7, MAX_CLOCK - 2, "ab"))
    check_update(craft.deletion(7, MAX_CLOCK - 5, 5))
    check_update(craft.text_update(2**53 - 1, 0, "x"))
    check_update(craft.nested_any(MAX_DEPTH))
    check_update(craft.any_update(b"\x7d" + craft.var_int(-(2**53 - 1)), b"\x7b" + b"\x7f\xf8" + b"\x00" * 6))


def test_state_vectors() -> None:
    assert check_state_vector(craft.state_vector((1, 5), (2**53 - 1, MAX_CLOCK))) == {1: 5, 2**53 - 1: MAX_CLOCK}
    for bad, reason in [
        (craft.state_vector((1, 2**32)), "does not fit"),
        (craft.state_vector((2**53, 1)), "does not fit"),
        (craft.state_vector((1, 1)) + b"\x00", "after the last entry"),
        (b"\x05\x01\x01", "cannot fit"),
        (craft.state_vector(*((n, 1) for n in range(MAX_STATE_VECTOR_CLIENTS + 1))), "more than 100000"),
    ]:
        with pytest.raises(InvalidUpdateError, match="invalid state vector") as raised:
            check_state_vector(bad)
        assert reason in str(raised.value)
    check_state_vector(craft.state_vector(*((n, 1) for n in range(MAX_STATE_VECTOR_CLIENTS))))


# Keystroke-shaped bytes, valid or not, to hold the fast path to what the full walk says.
varints = st.integers(0, 2**64).map(encode_var_uint) | st.binary(min_size=1, max_size=9)
keystrokes = st.tuples(
    varints,
    varints,
    st.sampled_from([b"\x84", b"\xc4", b"\x44", b"\x04"]),
    varints,
    varints,
    varints,
    varints,
    st.binary(max_size=4),
    st.sampled_from([b"\x00", b"\x01", b""]),
).map(lambda parts: b"\x01\x01" + b"".join(parts[:-2]) + bytes((len(parts[-2]),)) + parts[-2] + parts[-1])
deletions = st.tuples(varints, varints, varints).map(
    lambda parts: b"\x00\x01" + parts[0] + b"\x01" + parts[1] + parts[2]
)


@given(keystrokes | deletions)
def test_the_fast_path_accepts_only_what_the_full_walk_accepts(update: bytes) -> None:
    assert verdict(check_update, update) == verdict(struct_ends, update)  # the fast path, then the full walk


def verdict(check: Callable[[bytes], object], update: bytes) -> bool:
    """Whether `check` accepts `update` (it refuses by raising InvalidUpdateError)."""
    try:
        check(update)
    except InvalidUpdateError:
        return False
    return True
