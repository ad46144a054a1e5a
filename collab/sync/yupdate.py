"""A complete, bounded walk of a Yjs v1 update and of a state vector, before any native code sees them.

pycrdt decodes updates in Rust (yrs), and some inputs take it down rather than
raise: a value nested ~27,000 deep overflows its native stack (SIGSEGV, the
whole process dies), clocks and lengths past 2^32 wrap and later panic or
poison the document, and counts become allocations. So collab reads every
update itself first, iteratively, with bounded depth and counts, and only what
passes reaches pycrdt. The grammar (lib0 v1 encoding; yjs `encoding.js`,
`UpdateDecoder.js`, `structs/*`; yrs `update.rs`, `block.rs`, `any.rs`):

    update      = varUint(n) clientStructs{n} deleteSet
    clientStructs = varUint(k) varUint(client) varUint(clock) struct{k}
    struct      = info(0) varUint(len)                              ; GC
                | info(10) varUint(len)                             ; Skip
                | info item                                         ; Item
    item        = [id(origin)] [id(rightOrigin)]                    ; info bit 7, bit 6
                  [varUint(1) varString(root) | varUint(0) id(parent)]  ; only if neither origin
                  [varString(parentSub)]                            ; only then, if info bit 5
                  content(info & 15)
    content     = 1 varUint(len)                  ; Deleted
                | 2 varUint(n) varString{n}       ; JSON (legacy; yrs reads n+1 strings: always refused)
                | 3 varUint8Array                 ; Binary
                | 4 varString                     ; String (length in UTF-16 units)
                | 5 varString(JSON)               ; Embed
                | 6 varString(key) varString(JSON); Format
                | 7 typeRef                       ; Type: 0 Array 1 Map 2 Text 3 XmlElement+varString(name)
                                                  ;       4 XmlFragment 6 XmlText (5 XmlHook: refused)
                | 8 varUint(n) any{n}             ; Any
                | 9 varString(guid) any(options)  ; Doc
    id          = varUint(client) varUint(clock)
    deleteSet   = varUint(n) (varUint(client) varUint(k) (varUint(clock) varUint(len)){k}){n}
    any         = 127 undefined | 126 null | 125 varInt | 124 float32 | 123 float64 | 122 int64
                | 121 false | 120 true | 119 varString | 118 varUint(n) (varString any){n}
                | 117 varUint(n) any{n} | 116 varUint8Array
    stateVector = varUint(n) (varUint(client) varUint(clock)){n}

What fits, and why (every limit raises `InvalidUpdateError`, close code 1002):

- clocks, lengths, clock + length, delete ranges: below 2^32 (yrs keeps them in `u32` and wraps);
- client ids: below 2^53 (yrs reads 64 bits, but JavaScript clients only 53);
- nesting of Any values and of the JSON in Embed/Format contents: `MAX_DEPTH` (64) levels;
- counts (clients, structs, ranges, items, entries): no more than the bytes left could hold;
- strings: valid UTF-8 (yrs does not check; invalid UTF-8 is undefined behaviour in Rust);
- a state vector: at most `MAX_STATE_VECTOR_CLIENTS` (100,000) entries;
- nothing after the delete set;
- every client listed with a struct of non-zero length (yrs panics on one with none, 5 bytes do it),
  and no GC or Skip of length 0 (yrs divides by zero);
- no legacy ContentJSON (yrs reads one string more than anyone writes, itself included).

`strict` (the default, for what clients send) also refuses what yjs and yrs would read differently, so
a relayed update means the same to the server and to every stock client: XmlHook (yrs does not read
the hook name yjs writes), type refs yjs does not know, flag bits one side ignores, a client listed twice,
invalid JSON in Embed/Format, Doc options that are not a map. `strict=False` is
for rows already stored, which yrs has read before: it refuses only what could crash yrs, so a
document stored by an older collab stays loadable, and allows `MAX_STORED_DEPTH`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import InvalidUpdateError

__all__ = [
    "EMPTY_STATE_VECTOR",
    "EMPTY_UPDATE",
    "MAX_CLIENT_ID",
    "MAX_CLOCK",
    "MAX_DEPTH",
    "MAX_STATE_VECTOR_CLIENTS",
    "MAX_STORED_DEPTH",
    "STRICT_JSON",
    "check_state_vector",
    "check_update",
    "struct_ends",
]

EMPTY_UPDATE = b"\x00\x00"
"""A v1 update with no structs and no deletions: what a client with nothing new sends in step 2."""
EMPTY_STATE_VECTOR = b"\x00"
"""The state vector of an empty document: what a newcomer with nothing sends in step 1."""
MAX_CLOCK = 2**32 - 1
"""yrs's `u32`: the largest clock, length, and clock + length."""
MAX_CLIENT_ID = 2**53 - 1
"""JavaScript's Number.MAX_SAFE_INTEGER; yrs would take 64 bits, stock clients cannot."""
MAX_DEPTH = 64
"""Nesting of Any values and of JSON, for updates clients send. yrs recurses once per level and dies
(SIGSEGV) at ~27,000; JSON documents from editors nest a handful of levels."""
MAX_STORED_DEPTH = 256
"""The same for stored rows: what an older collab let in, still far from any native limit (and from
Python's recursion limit of 1,000 when exported as JSON)."""
MAX_STATE_VECTOR_CLIENTS = 100_000
"""Entries in one state vector: a document edited by 100,000 sessions is large; 3M entries (34 MiB)
stalled every room for 5.6 s."""

_U32 = 2**32 - 1
_MAX_VARINT_BYTES = 10  # yrs refuses an 11th byte; lib0 reads more, but no encoder writes them

# Info byte (yjs: BIT8 origin, BIT7 right origin, BIT6 parent sub; content ref in the low bits).
_HAS_ORIGIN = 0x80
_HAS_RIGHT_ORIGIN = 0x40
_HAS_PARENT_SUB = 0x20
_GC = 0
_SKIP = 10

# Type refs both yjs and yrs read alike (yjs `typeRefs`, yrs `TypeRef::decode`).
_TYPE_XML_ELEMENT = 3
_STRICT_TYPE_REFS = frozenset((0, 1, 2, 3, 4, 6))
# yrs alone also reads XmlHook (5, without the hook name yjs writes), SubDoc (9) and Undefined (15).
_YRS_TYPE_REFS = _STRICT_TYPE_REFS | {5, 9, 15}

_ANY_MAP = 118
_ANY_ARRAY = 117
_ANY_NO_PAYLOAD = frozenset((127, 126, 121, 120))  # undefined, null, false, true
_ANY_FIXED = {124: 4, 123: 8, 122: 8}  # float32, float64, int64 (big-endian)


# The fast path: what a typist sends all day is one update per keystroke, either one character typed
# after and/or before another (one client, one Item with origins and String content, no deletions)
# or one range deleted (no structs, one delete range). Matched whole by one regular expression whose
# varints are short enough to be in range whatever their value (a client id of up to 7 bytes, or of 8
# whose last byte is below 0x10: < 2^53; a clock of up to 4 bytes: < 2^28, so clock + a 1-byte length
# < 2^32), such an update needs only its string's length and UTF-8 checked: 0.5 us, against 3.5 us
# for the full walk, on a 17 us per update budget (docs/benchmarks.md, saturate). Anything else,
# or anything longer, takes the full walk.
_CLIENT = rb"(?:[\x80-\xff]{0,6}[\x00-\x7f]|[\x80-\xff]{7}[\x00-\x0f])"
_CLOCK = rb"[\x80-\xff]{0,3}[\x00-\x7f]"
_ID = _CLIENT + _CLOCK
_KEYSTROKE = re.compile(
    rb"\x01\x01" + _ID + rb"(?:\x84" + _ID + rb"|\xc4" + _ID + _ID + rb"|\x44" + _ID + rb")([\x01-\x7f])(.+)\x00",
    re.DOTALL,
)
_DELETION = re.compile(rb"\x00\x01" + _CLIENT + rb"\x01" + _CLOCK + _CLOCK, re.DOTALL)


class _Walk:
    """A cursor over one update; every read checks bounds and names what it read."""

    __slots__ = ("client", "client_raw", "clock", "data", "depth", "end", "kind", "names_parent", "pos", "strict")

    def __init__(self, data: bytes, strict: bool, kind: str = "Yjs update") -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.strict = strict
        self.depth = MAX_DEPTH if strict else MAX_STORED_DEPTH
        self.kind = kind
        self.client = -1
        """The struct being read (client, clock), for error messages; -1 outside structs."""
        self.clock = 0
        self.client_raw = b""
        """The current client's id as encoded, set with `client` before any struct is read."""
        self.names_parent = False
        """Whether an item names its parent by id: only the document can tell whether that is a type."""

    def fail(self, reason: str) -> InvalidUpdateError:
        where = f"struct {self.client}:{self.clock}: " if self.client >= 0 else ""
        return InvalidUpdateError(f"invalid {self.kind}: {where}{reason} (byte {self.pos})")

    def uint(self, what: str, limit: int) -> int:
        """lib0 `readVarUint`, refusing a value above `limit` (what the field is stored in)."""
        data, pos = self.data, self.pos
        try:
            byte = data[pos]
            if byte < 0x80:  # the common case: one byte, below every limit (all are >= 2^32 - 1)
                self.pos = pos + 1
                return byte
            value = byte & 0x7F
            shift = 7
            while True:
                pos += 1
                byte = data[pos]
                value |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
                if shift >= 7 * _MAX_VARINT_BYTES:
                    raise self.fail(f"{what} is a varint longer than {_MAX_VARINT_BYTES} bytes")
        except IndexError:
            raise self.fail(f"{what} missing, the {self.kind} ends early") from None
        if value > limit:
            raise self.fail(f"{what} {value} does not fit (at most {limit})")
        self.pos = pos + 1
        return value

    def count(self, what: str, each: int) -> int:
        """A count of things taking at least `each` bytes: no more than the bytes left could hold."""
        value = self.uint(what, _U32)
        left = self.end - self.pos
        if value * each > left:
            raise self.fail(f"{what} {value} cannot fit in the {left} bytes left")
        return value

    def skip(self, what: str, length: int) -> int:
        end = self.pos + length
        if end > self.end:
            raise self.fail(f"{what} needs {length} bytes, {self.end - self.pos} left")
        start, self.pos = self.pos, end
        return start

    def bytes(self, what: str) -> bytes:
        length = self.uint(what, _U32)
        start = self.pos
        end = start + length
        if end > self.end:
            raise self.fail(f"{what} needs {length} bytes, {self.end - start} left")
        self.pos = end
        return self.data[start:end]

    def string(self, what: str) -> str:
        raw = self.bytes(what)
        if raw.isascii():
            return raw.decode("ascii")
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def utf16_length(self, what: str) -> int:
        """A string's length as yjs and yrs count it: UTF-16 code units."""
        raw = self.bytes(what)
        if raw.isascii():
            return len(raw)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None
        return len(text.encode("utf-16-le")) // 2

    def signed(self, what: str) -> None:
        """lib0 `readVarInt`: sign and 6 bits, then 7 per byte; JavaScript keeps 53 bits of it."""
        data, pos = self.data, self.pos
        for length in range(8):  # 6 + 7 * 7 = 55 bits at most
            if pos + length >= self.end:
                raise self.fail(f"{what} missing, the {self.kind} ends early")
            if data[pos + length] < 0x80:
                break
        else:
            raise self.fail(f"{what} is a varint longer than 8 bytes")
        value = data[pos] & 0x3F
        shift = 6
        for offset in range(1, length + 1):
            value |= (data[pos + offset] & 0x7F) << shift
            shift += 7
        if value > MAX_CLIENT_ID:
            raise self.fail(f"{what} {value} does not fit in 53 bits")
        self.pos = pos + length + 1

    def id(self, what: str) -> None:
        """A client id and a clock, checked for range only: origins and parents need no value."""
        data, pos = self.data, self.pos
        if data.startswith(self.client_raw, pos):
            # The struct's own client (typing continues one's own text), already checked.
            pos += len(self.client_raw)
        else:
            self.uint(what, MAX_CLIENT_ID)
            pos = self.pos
        # A clock of up to 4 bytes (28 bits) fits in 32; only a longer one needs its value.
        try:
            for length in (1, 2, 3, 4):
                if data[pos + length - 1] < 0x80:
                    self.pos = pos + length
                    return
        except IndexError:
            raise self.fail(f"{what} missing, the {self.kind} ends early") from None
        self.pos = pos
        self.uint(what, MAX_CLOCK)

    def json(self, what: str) -> None:
        """A JSON string (Embed, Format): strict JSON as JavaScript and serde_json read it, bounded depth."""
        text = self.string(what)
        if not self.strict:
            return  # serde_json refuses what it cannot take, with an error, never a crash
        try:
            value = STRICT_JSON.decode(text)
        except (ValueError, RecursionError) as error:
            raise self.fail(f"{what} is not JSON ({str(error).partition(':')[0]})") from None
        _check_json(self, what, value)

    def any(self, *, map_only: bool = False) -> None:
        """One lib0 Any value, iteratively: `open` holds how many values each open container still has,
        negative for a map (whose values each follow a key)."""
        data = self.data
        open: list[int] = []
        while True:
            if self.pos >= self.end:
                raise self.fail(f"value missing, the {self.kind} ends early")
            tag = data[self.pos]
            if map_only and tag != _ANY_MAP:
                raise self.fail(f"subdocument options are not a map (tag {tag})")
            map_only = False
            self.pos += 1
            if tag in _ANY_NO_PAYLOAD:
                pass
            elif tag == 119:
                self.string("string value")
            elif tag == 125:
                self.signed("integer value")
            elif tag in _ANY_FIXED:
                self.skip("number value", _ANY_FIXED[tag])
            elif tag == 116:
                self.bytes("binary value")
            elif tag in (_ANY_ARRAY, _ANY_MAP):
                if len(open) >= self.depth:
                    raise self.fail(f"value nests deeper than {self.depth} levels")
                # Each array element takes a byte at least, each map entry two (key length, value).
                n = self.count("entry count of a value", 1 if tag == _ANY_ARRAY else 2)
                open.append(n if tag == _ANY_ARRAY else -n)
            else:
                raise self.fail(f"value has unknown type tag {tag}")
            while open:
                left = open[-1]
                if left == 0:
                    open.pop()
                elif left > 0:
                    open[-1] = left - 1
                    break
                else:
                    open[-1] = left + 1
                    self.string("key in a value")
                    break
            else:
                return


def _refuse_constant(name: str) -> None:
    """Python's json reads NaN, Infinity and -Infinity; RFC 8259 and JavaScript's JSON.parse do not."""
    raise ValueError(f"{name} is not JSON")


STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
"""A decoder of RFC 8259 JSON only, made once: json.loads with any option builds a decoder per call
(2.8 µs for a small awareness state, against 1.5). Shared with the awareness check in `protocol`."""


def _check_json(walk: _Walk, what: str, value: Any) -> None:
    """Depth, finite numbers, strings that are Unicode scalar values (no lone surrogates), iteratively."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > walk.depth:
                raise walk.fail(f"{what} nests deeper than {walk.depth} levels")
            if isinstance(item, dict):
                for key in item:
                    _check_json_string(walk, what, key)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_json_string(walk, what, item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise walk.fail(f"{what} has a number out of range")


def _check_json_string(walk: _Walk, what: str, text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise walk.fail(f"{what} has a lone surrogate") from None


def _content(walk: _Walk, info: int) -> int:
    """One item's content; returns its length in clock units."""
    ref = info & 0x0F
    if ref == 4:
        return walk.utf16_length("string")
    if ref == 8:
        n = walk.count("value count", 1)
        for _ in range(n):
            walk.any()
        return n
    if ref == 1:
        return walk.uint("deleted length", MAX_CLOCK)
    if ref == 6:
        walk.string("format key")
        walk.json("format value")
        return 1
    if ref == 7:
        if walk.pos >= walk.end:
            raise walk.fail(f"type missing, the {walk.kind} ends early")
        type_ref = walk.data[walk.pos]
        walk.pos += 1
        if type_ref not in (_STRICT_TYPE_REFS if walk.strict else _YRS_TYPE_REFS):
            raise walk.fail(f"unsupported type ref {type_ref}")
        if type_ref == _TYPE_XML_ELEMENT:
            walk.string("element name")
        return 1
    if ref == 3:
        walk.bytes("binary")
        return 1
    if ref == 5:
        walk.json("embed")
        return 1
    if ref == 9:
        walk.string("subdocument guid")
        walk.any(map_only=walk.strict)
        return 1
    # 2 is the legacy ContentJSON: yrs reads n + 1 strings where yjs and yrs itself write n, so a
    # document holding one cannot even be read back once pycrdt has written it. Refused, stored or not.
    raise walk.fail(f"unsupported content type {ref}")


def _structs(walk: _Walk) -> dict[int, int]:
    ends: dict[int, int] = {}
    data = walk.data
    strict = walk.strict
    for _ in range(walk.count("client count", 3)):
        n = walk.count("struct count", 2)
        start = walk.pos
        client = walk.uint("client id", MAX_CLIENT_ID)
        walk.client_raw = data[start : walk.pos]
        clock = walk.uint("first clock", MAX_CLOCK)
        if strict and client in ends:
            raise walk.fail(f"client {client} is listed twice")
        walk.client = client
        first = clock
        for _ in range(n):
            walk.clock = clock
            if walk.pos >= walk.end:
                raise walk.fail(f"struct missing, the {walk.kind} ends early")
            info = data[walk.pos]
            walk.pos += 1
            kind = info & 0x1F
            if kind in (_GC, _SKIP):
                if info != kind:
                    # yjs reads a GC or Skip whatever the high bits; yrs only with none set.
                    raise walk.fail(f"GC or skip with flag bits {info:#04x}")
                length = walk.uint("length", MAX_CLOCK)
                if length == 0:
                    # yrs keeps these (unlike empty items); their clock range ends before it starts,
                    # and finding a block among them divides by zero (`BlockStore::find_index`).
                    raise walk.fail("GC or skip of length 0")
            else:
                if strict and info & 0x10:
                    raise walk.fail(f"info bit 4 set ({info:#04x}): yjs and yrs read it differently")
                if info & _HAS_ORIGIN:
                    walk.id("origin")
                if info & _HAS_RIGHT_ORIGIN:
                    walk.id("right origin")
                if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
                    parent = walk.uint("parent kind", _U32)
                    if parent > 1 and strict:
                        raise walk.fail(f"parent kind {parent}: yjs reads it as an id, yrs (past 2^32) may not")
                    if parent == 1:
                        walk.string("root name")
                    else:
                        walk.id("parent")
                        walk.names_parent = True
                    if info & _HAS_PARENT_SUB:
                        walk.string("key")
                length = _content(walk, info)
            # A length of 0 is allowed: pycrdt writes an empty String when an edit splits a surrogate
            # pair, and yjs and yrs both read it.
            clock += length
            if clock > MAX_CLOCK:
                raise walk.fail(f"ends at clock {clock}, beyond {MAX_CLOCK}")
        if clock == first:
            # yrs drops zero-length structs, and a client left with none panics (`BlockSet::exclude`,
            # front().unwrap()) as soon as the document already holds some of that client's structs.
            raise walk.fail(f"client {client} has no struct of non-zero length")
        ends[client] = clock
        walk.client = -1
    return ends


def _delete_set(walk: _Walk) -> None:
    seen: set[int] = set()
    for _ in range(walk.count("delete set client count", 2)):
        client = walk.uint("delete set client id", MAX_CLIENT_ID)
        if walk.strict:
            if client in seen:
                raise walk.fail(f"delete set lists client {client} twice")
            seen.add(client)
        for _ in range(walk.count("delete range count", 2)):
            clock = walk.uint("deleted clock", MAX_CLOCK)
            length = walk.uint("deleted length", MAX_CLOCK)
            if clock + length > MAX_CLOCK:
                raise walk.fail(f"delete range {client}:{clock}+{length} ends beyond {MAX_CLOCK}")


def check_update(update: bytes, *, strict: bool = True) -> bool:
    """Walk a whole Yjs v1 update; raise `InvalidUpdateError` saying what does not fit.

    Returns whether an item of it names its parent by id (a first entry in a nested type, a new key of
    a nested map): no walk can tell whether that parent is a shared type or, say, a string, which yrs
    refuses only when it integrates the update. A caller must then apply it to its document before
    relaying or storing it (`Room.receive` does). `strict=False` is for stored rows (see the module
    docstring).
    """
    keystroke = _KEYSTROKE.fullmatch(update)
    if keystroke is not None:
        length, text = keystroke.groups()
        if len(text) == length[0] and (text.isascii() or _is_utf8(text)):
            return False
    elif _DELETION.fullmatch(update) is not None:
        return False
    return _walk_update(update, strict)[1]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def struct_ends(update: bytes, *, strict: bool = True) -> dict[int, int]:
    """`check_update` by the full walk, always; returns, for each client with structs in the update,
    the clock after its last one (what `get_state` of it shows when nothing is missing)."""
    return _walk_update(update, strict)[0]


def _walk_update(update: bytes, strict: bool) -> tuple[dict[int, int], bool]:
    walk = _Walk(update, strict)
    ends = _structs(walk)
    _delete_set(walk)
    if strict and walk.pos != walk.end:
        raise walk.fail(f"{walk.end - walk.pos} bytes after the delete set")
    return ends, walk.names_parent


def check_state_vector(state_vector: bytes) -> dict[int, int]:
    """Walk a state vector (client -> clock); raise `InvalidUpdateError` saying what does not fit."""
    walk = _Walk(state_vector, strict=True, kind="state vector")
    n = walk.count("length", 2)
    if n > MAX_STATE_VECTOR_CLIENTS:
        raise walk.fail(f"{n} clients, more than {MAX_STATE_VECTOR_CLIENTS}")
    clocks = {}
    for _ in range(n):
        client = walk.uint("client id", MAX_CLIENT_ID)
        clocks[client] = walk.uint("clock", MAX_CLOCK)
    if walk.pos != walk.end:
        raise walk.fail(f"{walk.end - walk.pos} bytes after the last entry")
    return clocks
