"""Fuzzing "validate, then apply": whatever collab's walk accepts, pycrdt applies without a panic or a crash.

Inputs are structured: real updates from random pycrdt edits, then mutated the ways that found the
crashes (bit flips, truncations, splices, varints swapped for huge ones, nesting). They are applied in
this process on purpose: a SIGSEGV here kills the test run, and preventing exactly that is what the
walk is for. The corpus in tests/fuzz_corpus/ (seeds, and every input a long run found) is replayed
first. A short run is part of the suite; `scripts/fuzz --minutes N` runs long ones in child
processes and saves the input a child died on into the corpus (COLLAB_FUZZ_INFLIGHT).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab.errors import InvalidUpdateError
from collab.sync.protocol import encode_var_uint
from collab.sync.yupdate import check_update

from . import craft

CORPUS = Path(__file__).parent / "fuzz_corpus"
EXAMPLES = int(os.environ.get("COLLAB_FUZZ_EXAMPLES", "200"))
INFLIGHT = os.environ.get("COLLAB_FUZZ_INFLIGHT")
"""A file each input is written to before it is applied, so the parent of a crashed run can keep it."""


def validate_then_apply(update: bytes, base: bytes | None = None) -> None:
    """The property: accepted (strictly or as a stored row) means pycrdt applies it, or refuses it with a
    ValueError, on a fresh Doc or on one holding `base`, and the Doc stays usable."""
    accepted = False
    for strict in (True, False):
        try:
            check_update(update, strict=strict)
            accepted = True
        except InvalidUpdateError:
            pass
    if not accepted:
        return
    if INFLIGHT:
        Path(INFLIGHT).write_bytes(update)
    for start in [None] if base is None else [None, base]:
        doc: Doc = Doc()
        if start is not None:
            doc.apply_update(start)
        try:
            doc.apply_update(update)
        except ValueError:
            pass  # refused by pycrdt: check_update in the room refuses it the same way (get_state)
        except RuntimeError as error:
            # Integration refuses an item whose parent is not a shared type: an exception, not a
            # crash, which no stateless walk can rule out (the parent may be in the document).
            assert "must be deleted or shared ref type" in str(error), error
        doc.get_state()
        check_update(doc.get_update(), strict=False)


# Random edits on a pycrdt Doc of every shared type, recorded as the updates they emit.
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "format", "embed", "map", "array", "xml", "subdoc"]),
        texts,
        json_values,
        st.integers(0, 20),
    ),
    min_size=1,
    max_size=12,
)


FUZZ_CLIENT = 2**52 + 12345
"""The client id of every generated edit: fixed, so that the same draws make the same bytes."""


def run_edits(plan: list[tuple[str, str, object, int]]) -> list[bytes]:
    doc: Doc = Doc(client_id=FUZZ_CLIENT)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content = doc.get("content", type=Text)
    values = doc.get("map", type=Map)
    items = doc.get("array", type=Array)
    fragment = doc.get("xml", type=XmlFragment)
    for kind, chars, value, number in plan:
        at = number % (len(content) + 1)
        if kind == "insert":
            # ASCII: pycrdt's Text lengths count UTF-8 bytes, its indexes do not (test_yupdate has Unicode)
            content.insert(at, chars.encode("ascii", "replace").decode() or "x")
        elif kind == "delete" and len(content):
            start = at % len(content)
            del content[start : min(len(content), start + 1 + number % 3)]
        elif kind == "format" and len(content):
            content.format(0, len(content), {chars or "b": value})
        elif kind == "embed":
            content.insert_embed(at, {"v": value})
        elif kind == "map":
            values[chars] = value if number % 2 else Map({"k": value})
        elif kind == "array":
            items.append(value if number % 2 else Array([value, chars]))
        elif kind == "xml":
            fragment.children.append(XmlElement("p", {"n": chars}, [XmlText(chars or "t")]))
        elif kind == "subdoc":
            values[f"doc{number}"] = Doc(guid=f"guid-{number}")
    return [*updates, doc.get_update()]


big_varints = st.sampled_from([2**32 - 1, 2**32, 2**32 + 1, 2**53 - 1, 2**53, 2**63, 2**64 + 7, 2**31]).map(
    encode_var_uint
)


@st.composite
def mutated_updates(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(a mutated update, the document it came from)."""
    updates = run_edits(draw(edits))
    whole = updates[-1]
    data = bytearray(draw(st.sampled_from(updates)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "truncate", "splice", "varint", "byte", "repeat"])):
            case "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "truncate":
                del data[at:]
            case "splice":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            case "varint":
                data[at : at + draw(st.integers(1, 5))] = draw(big_varints)
            case "byte":
                data[at] = draw(st.sampled_from([0x00, 0x0A, 0x10, 0x75, 0x76, 0x7F, 0x80, 0xFF, 0x84, 0xC4, 0x48]))
            case "repeat":
                data[at:at] = data[at : at + draw(st.integers(1, 16))] * draw(st.integers(1, 40))
    return bytes(data), whole


hostile = st.one_of(
    st.integers(1, 400).map(craft.nested_any),
    st.tuples(st.integers(0, 2**33), st.integers(0, 2**33), texts.filter(bool)).map(
        lambda t: craft.text_update(7, t[0], t[2]) if t[0] % 2 else craft.deletion(7, t[0], t[1])
    ),
)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(mutated_updates())
def test_mutated_real_updates_never_crash_pycrdt(case: tuple[bytes, bytes]) -> None:
    update, base = case
    validate_then_apply(update, base)


@settings(max_examples=max(50, EXAMPLES // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits)
def test_real_updates_unmutated_are_always_accepted(plan: list[tuple[str, str, object, int]]) -> None:
    """A walk that refused everything would pass the property above; what pycrdt itself emits must pass."""
    for update in run_edits(plan):
        check_update(update, strict=True)
        check_update(update, strict=False)


@settings(max_examples=max(50, EXAMPLES // 4), deadline=None)
@given(hostile)
def test_hostile_shapes_never_crash_pycrdt(update: bytes) -> None:
    validate_then_apply(update)


def corpus_base() -> bytes:
    """A document already holding structs of the clients the corpus uses (7 and FUZZ_CLIENT): some
    updates only crash pycrdt on top of what a room already has."""
    doc: Doc = Doc()
    for client in (7, FUZZ_CLIENT):
        writer: Doc = Doc(client_id=client)
        writer.apply_update(doc.get_update())
        writer.get("content", type=Text).insert(0, "hello")
        doc.apply_update(writer.get_update())
    return doc.get_update()


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda path: path.name)
def test_the_corpus_replays(path: Path) -> None:
    update = path.read_bytes()
    expected = corpus_verdict(path.name)
    if expected == "refused":
        with pytest.raises(InvalidUpdateError):
            check_update(update, strict=True)
    elif expected == "accepted":
        check_update(update, strict=True)
    validate_then_apply(update, corpus_base())


def corpus_verdict(name: str) -> str | None:
    """What check_update(strict=True) must say of a corpus file, known from its name (None: not known)."""
    if name.startswith(("panic-", "sigsegv-", "clock-2-64", "legacy-content-json")) or "past-2-32" in name:
        return "refused"
    if name == "valid-text-and-map.bin":
        return "accepted"
    return None


def test_every_seed_of_the_corpus_has_a_known_verdict() -> None:
    names = {path.name for path in CORPUS.glob("*.bin")}
    assert "valid-text-and-map.bin" in names
    assert sum(corpus_verdict(name) == "refused" for name in names) >= 9
