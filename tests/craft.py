"""Yjs v1 updates built by hand, byte by byte, for the inputs no honest client writes (see collab.sync.yupdate).

Apart from helpers.py on purpose: a byte-level encoder of the update format, used only by the tests
of update validation (test_yupdate, test_hostile_updates, test_fuzz_updates); helpers.py holds what
tests of clients, rooms and servers share.
"""

from __future__ import annotations

from collab.sync.protocol import encode_var_bytes, encode_var_string, encode_var_uint

# Item info byte: content type in the low bits, then flags.
STRING = 0x04
ANY = 0x08
HAS_ORIGIN = 0x80

NO_DELETIONS = b"\x00"


def var_int(value: int) -> bytes:
    """lib0 `writeVarInt`: sign and 6 bits in the first byte, 7 bits in each next one."""
    magnitude = abs(value)
    first = (magnitude & 0x3F) | (0x40 if value < 0 else 0)
    magnitude >>= 6
    if not magnitude:
        return bytes((first,))
    out = bytearray((first | 0x80,))
    while magnitude > 0x7F:
        out.append(0x80 | (magnitude & 0x7F))
        magnitude >>= 7
    out.append(magnitude)
    return bytes(out)


def root_item(info: int, content: bytes, root: str = "content") -> bytes:
    """An Item whose parent is the root type `root` (no origins)."""
    return bytes((info,)) + encode_var_uint(1) + encode_var_string(root) + content


def update(client: int, clock: int, *structs: bytes, deletions: bytes = NO_DELETIONS) -> bytes:
    """One client's structs from `clock` on, then a delete set (`delete_set(...)`)."""
    return (
        b"\x01"
        + encode_var_uint(len(structs))
        + encode_var_uint(client)
        + encode_var_uint(clock)
        + b"".join(structs)
        + deletions
    )


def text_update(client: int, clock: int, text: str, root: str = "content") -> bytes:
    """`text` inserted at the start of root text `root`, as client `client` at `clock`."""
    return update(client, clock, root_item(STRING, encode_var_string(text), root))


def delete_set(*ranges: tuple[int, int, int]) -> bytes:
    """A delete set of (client, clock, length) ranges, one client each."""
    out = encode_var_uint(len(ranges))
    for client, clock, length in ranges:
        out += encode_var_uint(client) + b"\x01" + encode_var_uint(clock) + encode_var_uint(length)
    return out


def deletion(client: int, clock: int, length: int) -> bytes:
    """An update with no structs that deletes one range."""
    return b"\x00" + delete_set((client, clock, length))


def nested_any(depth: int) -> bytes:
    """A ContentAny holding one array nested `depth` deep: [[[...]]] (what overflowed pycrdt's stack)."""
    value = b"\x75\x01" * (depth - 1) + b"\x75\x00"
    return update(9, 0, root_item(ANY, b"\x01" + value))


def any_update(*values: bytes) -> bytes:
    """A ContentAny of lib0 Any values already encoded."""
    return update(9, 0, root_item(ANY, encode_var_uint(len(values)) + b"".join(values)))


def any_string(text: str) -> bytes:
    return b"\x77" + encode_var_string(text)


def any_bytes(data: bytes) -> bytes:
    return b"\x74" + encode_var_bytes(data)


def state_vector(*entries: tuple[int, int]) -> bytes:
    return encode_var_uint(len(entries)) + b"".join(encode_var_uint(c) + encode_var_uint(k) for c, k in entries)
