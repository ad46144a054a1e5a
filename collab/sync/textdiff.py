"""The edits that turn one text into another, small enough to merge with what others type meanwhile. No I/O.

A restore (`collab.sync.restore`) makes a document's `Y.Text` equal to an
older version of it. Replacing it whole would be correct but would delete
every character and insert them again: a concurrent insertion anywhere would
then land inside deleted text, and every client would download the whole text
again. So the change is a diff: the common prefix and suffix are trimmed (cheap,
and all a typical edit needs), then `difflib.SequenceMatcher` (autojunk off:
its heuristic throws away the commonest characters of any text longer than 200)
finds what the middles share, by characters when they are short, by lines when
they are long, refining each changed run of lines by characters.

Both steps are bounded, since a text can be made to cost the square of its
length in each:

- finding the matches: `SequenceMatcher` recurses on what lies between each
  match and the next, so lines swapped pairwise (every match one line long)
  cost lines x lines. Each of its searches is charged what it will scan before
  it starts, against one budget for the whole diff (`WORK`); once that is
  spent, every stretch not yet matched is replaced whole, which is still right.
- applying the edits: yrs finds each edit's position by walking the text's
  items from its start, and every edit splits items, so n edits cost about n x
  (the text's items + 2n). `coalesced` merges edits a few characters apart,
  and keeps at most `edits_for(...)` of them, merging across the smallest gaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from difflib import Match, SequenceMatcher
from itertools import accumulate, pairwise
from typing import NamedTuple

from pycrdt import Text

__all__ = ["Edit", "apply_edits", "coalesced", "edit_text", "edits_for", "text_edits"]

CHARACTER_PAIRS = 4_000_000
"""Largest product of two lengths diffed by characters (2,000 x 2,000); longer middles are diffed by lines first."""
WORK = 1_000_000
"""Steps the searches of one diff may take together: one step is one position a search looks at, 0.04-0.8 us
in CPython (more for lines than for characters), so at most about a second."""
POPULAR_LINE = 50
"""A line the new text has more often than this (blank lines, closing braces) never starts a match by itself,
but still extends one (`SequenceMatcher`'s `isjunk`): otherwise each of them is compared with every other."""
CHUNK = 4096
"""Characters compared at once while trimming the common prefix and suffix."""
NEAR = 8
"""Edits fewer than this many unchanged characters apart are made as one: splitting the text's items costs
more than inserting those characters again."""
MAX_EDITS = 2_000
"""Most edits one change makes: 2,000 edits on a text of few items take ~0.15 s."""
MIN_EDITS = 16
ITEM_STEPS = 50_000_000
"""Items yrs may walk past to make one change's edits (edits x items: ~10 ns each, half a second)."""
ITEM_BYTES = 5
"""Fewest bytes an item takes in an update: a document of n bytes has at most n / ITEM_BYTES items."""


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
    budget = _Budget(WORK)
    if len(old_middle) * len(new_middle) <= CHARACTER_PAIRS:
        edits = _by_characters(old_middle, new_middle, budget)
    else:
        edits = _by_lines(old_middle, new_middle, budget)
    return [Edit(prefix + edit.start, prefix + edit.end, edit.insert) for edit in edits]


def edits_for(update_size: int) -> int:
    """How many edits one change may make to a text of a document whose whole update is `update_size` bytes
    (see `ITEM_STEPS`): MAX_EDITS for a document up to ~125 KB, fewer for larger ones, never under MIN_EDITS."""
    return max(MIN_EDITS, min(MAX_EDITS, ITEM_STEPS * ITEM_BYTES // max(update_size, 1)))


def coalesced(old: str, edits: list[Edit], most: int = MAX_EDITS) -> list[Edit]:
    """`edits` (of `text_edits(old, ...)`) with those fewer than NEAR characters apart made one, and then at
    most `most` of them: the unchanged text between two edits merged is deleted and inserted again."""
    if len(edits) <= 1:
        return edits
    gaps = [later.start - earlier.end for earlier, later in pairwise(edits)]
    apart = [index for index, gap in enumerate(gaps) if gap >= NEAR]
    if len(apart) >= most:  # keep the widest gaps (the earliest of equal ones) between the edits made
        apart = sorted(sorted(apart, key=lambda index: -gaps[index])[: most - 1])
    merged: list[Edit] = []
    first = 0
    for last in [*apart, len(edits) - 1]:
        merged.append(_merge(old, edits[first : last + 1]))
        first = last + 1
    return merged


def apply_edits(text: Text, old: str, edits: list[Edit], most: int = MAX_EDITS) -> None:
    """Make `edits` (from `text_edits(old, ...)`, where `old` is `str(text)`) to the pycrdt `text`, at most
    `most` of them (`coalesced`; `edits_for` says how many fit a document's size).

    pycrdt counts a text's positions in UTF-8 bytes, not code points, so each position is converted,
    walking the edits in order and shifting by what the ones before changed.
    """
    offset = 0  # bytes of `old` before the previous edit's start
    position = 0  # ... and that start, in code points
    shift = 0  # bytes the edits so far added (negative: removed)
    for edit in coalesced(old, edits, most):
        offset += _utf8_length(old, position, edit.start)
        position = edit.start
        removed = _utf8_length(old, edit.start, edit.end)
        at = offset + shift
        if removed:
            del text[at : at + removed]
        if edit.insert:
            text.insert(at, edit.insert)
        shift += len(edit.insert.encode()) - removed


def edit_text(text: Text, new: str, most: int = MAX_EDITS) -> None:
    """Make the pycrdt `text` read `new` with the smallest edits `text_edits` finds, at most `most` of them
    (`apply_edits`), inside the caller's transaction if any: one update then carries them all."""
    old = str(text)
    apply_edits(text, old, text_edits(old, new), most)


def _merge(old: str, edits: list[Edit]) -> Edit:
    """One edit doing what consecutive `edits` do, the unchanged text between them inserted again."""
    if len(edits) == 1:
        return edits[0]
    parts = [edits[0].insert]
    for earlier, later in pairwise(edits):
        parts += (old[earlier.end : later.start], later.insert)
    return Edit(edits[0].start, edits[-1].end, "".join(parts))


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


class _Budget:
    """Search steps left to one diff (shared by its line diff and every refinement by characters)."""

    def __init__(self, steps: int) -> None:
        self.left = steps


class _BoundedMatcher(SequenceMatcher[Hashable]):
    """A `SequenceMatcher` whose searches stop matching once `budget` is spent.

    A search of a[alo:ahi] looks, for each element, at every position b holds it at (unless it is junk): its
    cost is known before it starts, from sums of those counts over a (`_steps`). A search the budget cannot
    pay finds no match, so `get_matching_blocks` leaves that stretch unmatched: the opcodes replace it whole.
    """

    def __init__(
        self,
        isjunk: Callable[[Hashable], bool] | None,
        a: Sequence[Hashable],
        b: Sequence[Hashable],
        budget: _Budget,
    ) -> None:
        super().__init__(isjunk, a, b, autojunk=False)
        self._budget = budget
        self._lengths = len(a), len(b)
        counts = Counter(element for element in b if isjunk is None or not isjunk(element))
        self._steps = list(accumulate((1 + counts[element] for element in a), initial=0))

    def find_longest_match(self, alo: int = 0, ahi: int | None = None, blo: int = 0, bhi: int | None = None) -> Match:
        ahi = self._lengths[0] if ahi is None else ahi
        bhi = self._lengths[1] if bhi is None else bhi
        steps = self._steps[ahi] - self._steps[alo]
        if steps > self._budget.left:
            return Match(alo, blo, 0)
        self._budget.left -= steps
        return super().find_longest_match(alo, ahi, blo, bhi)


def _by_characters(old: str, new: str, budget: _Budget) -> list[Edit]:
    """Character-level edits, or one replacement when the middles are too long to diff by characters."""
    if not old or not new or len(old) * len(new) > CHARACTER_PAIRS or not budget.left:
        return [Edit(0, len(old), new)]
    matcher = _BoundedMatcher(None, old, new, budget)
    return [Edit(i1, i2, new[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _by_lines(old: str, new: str, budget: _Budget) -> list[Edit]:
    """Line-level edits, each changed run refined by characters."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    popular = {line for line, count in Counter(new_lines).items() if count > POPULAR_LINE}
    matcher = _BoundedMatcher(popular.__contains__, old_lines, new_lines, budget)
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
