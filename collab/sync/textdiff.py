"""The edits that turn one text into another, small enough to merge with what others type meanwhile. No I/O.

A restore (`collab.sync.restore`) and a text upload make a document's `Y.Text`
equal to a given string. Replacing it whole would be correct but would delete
every character and insert them again: a concurrent insertion anywhere would
then land inside deleted text, and every client would download the whole text
again. So the change is a diff: the common prefix and suffix are trimmed (cheap,
and all a typical edit needs), then `difflib.SequenceMatcher` (autojunk off:
its heuristic throws away the commonest characters of any text longer than 200)
finds what the middles share, by characters when they are short, by lines when
they are long, refining each changed run of lines by characters while a budget
lasts. Its cost grows with the product of the two lengths, so each step that
would take too long (see the limits below, measured) gives way to replacing
that stretch whole, which is still correct.
"""

from __future__ import annotations

from collections import Counter
from difflib import SequenceMatcher
from typing import NamedTuple

from pycrdt import Text

__all__ = ["Edit", "apply_edits", "edit_text", "text_edits"]

CHARACTER_PAIRS = 4_000_000
"""Largest product of two lengths diffed by characters: 2,000 x 2,000 characters take about 80 ms."""
CHARACTER_BUDGET = 40_000_000
"""Character pairs all the refinements of one diff may take together (about a second)."""
LINE_WORK = 2_000_000
"""Most line comparisons a diff by lines may need (each line of one text times the times the other has it):
10,000 lines with a few hundred edits need ~200,000 (0.2 s)."""
POPULAR_LINE = 50
"""A line the new text has more often than this (blank lines, closing braces) never starts a match by itself,
but still extends one (`SequenceMatcher`'s `isjunk`): otherwise each of them is compared with every other."""
CHUNK = 4096
"""Characters compared at once while trimming the common prefix and suffix."""


class Edit(NamedTuple):
    """Replace `old[start:end]` (code points) by `insert`."""

    start: int
    end: int
    insert: str


def text_edits(old: str, new: str) -> list[Edit]:
    """The edits that turn `old` into `new`, in order and not overlapping; [] if they are equal."""
    if old == new:
        return []
    prefix = _common_prefix(old, new)
    suffix = _common_suffix(old[prefix:], new[prefix:])
    old_middle, new_middle = old[prefix : len(old) - suffix], new[prefix : len(new) - suffix]
    budget = [CHARACTER_BUDGET]
    if len(old_middle) * len(new_middle) <= CHARACTER_PAIRS:
        edits = _by_characters(old_middle, new_middle, budget)
    else:
        edits = _by_lines(old_middle, new_middle, budget)
    return [Edit(prefix + edit.start, prefix + edit.end, edit.insert) for edit in edits]


def apply_edits(text: Text, old: str, edits: list[Edit]) -> None:
    """Make `edits` (from `text_edits(old, ...)`, where `old` is `str(text)`) to the pycrdt `text`.

    pycrdt counts a text's positions in UTF-8 bytes, not code points, so each position is converted,
    walking the edits in order and shifting by what the ones before changed.
    """
    offset = 0  # bytes of `old` before the previous edit's start
    position = 0  # ... and that start, in code points
    shift = 0  # bytes the edits so far added (negative: removed)
    for edit in edits:
        offset += _utf8_length(old, position, edit.start)
        position = edit.start
        removed = _utf8_length(old, edit.start, edit.end)
        at = offset + shift
        if removed:
            del text[at : at + removed]
        if edit.insert:
            text.insert(at, edit.insert)
        shift += len(edit.insert.encode()) - removed


def edit_text(text: Text, new: str) -> None:
    """Make the pycrdt `text` read `new` with the smallest edits `text_edits` finds (inside the caller's
    transaction, if any: one update then carries them all)."""
    old = str(text)
    apply_edits(text, old, text_edits(old, new))


def _utf8_length(text: str, start: int, end: int) -> int:
    return len(text[start:end].encode()) if end > start else 0


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, a chunk at a time (a character at a time costs ~50 ns each)."""
    limit = min(len(a), len(b))
    length = 0
    while length + CHUNK <= limit and a[length : length + CHUNK] == b[length : length + CHUNK]:
        length += CHUNK
    while length < limit and a[length] == b[length]:
        length += 1
    return length


def _common_suffix(a: str, b: str) -> int:
    """Length of the longest common suffix, as `_common_prefix`."""
    limit = min(len(a), len(b))
    length = 0
    while (
        length + CHUNK <= limit
        and a[len(a) - length - CHUNK : len(a) - length] == b[len(b) - length - CHUNK : len(b) - length]
    ):
        length += CHUNK
    while length < limit and a[len(a) - length - 1] == b[len(b) - length - 1]:
        length += 1
    return length


def _by_characters(old: str, new: str, budget: list[int]) -> list[Edit]:
    """Character-level edits, or one replacement when `budget` (pairs left, shared by a whole diff) is spent."""
    if not old or not new or len(old) * len(new) > min(CHARACTER_PAIRS, budget[0]):
        return [Edit(0, len(old), new)]
    budget[0] -= len(old) * len(new)
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    return [Edit(i1, i2, new[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _by_lines(old: str, new: str, budget: list[int]) -> list[Edit]:
    """Line-level edits, each changed run refined by characters; one replacement if lines would cost too much."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    counts = Counter(new_lines)
    popular = {line for line, count in counts.items() if count > POPULAR_LINE}
    work = sum(counts[line] for line in old_lines if line not in popular)
    if work > LINE_WORK:
        return [Edit(0, len(old), new)]
    matcher = SequenceMatcher(popular.__contains__, old_lines, new_lines, autojunk=False)
    old_starts = _starts(old_lines)
    new_starts = _starts(new_lines)
    edits: list[Edit] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        start, end = old_starts[i1], old_starts[i2]
        inserted = new[new_starts[j1] : new_starts[j2]]
        edits.extend(
            Edit(start + e.start, start + e.end, e.insert) for e in _by_characters(old[start:end], inserted, budget)
        )
    return edits


def _starts(lines: list[str]) -> list[int]:
    """Where each line starts, and where the last one ends."""
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return starts
