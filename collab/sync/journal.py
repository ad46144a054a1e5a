"""What this process remembers of each document's editing, for its history: who was there, which changes were
restores. No I/O; kept in memory only, so it is lost at a restart, and each process of a cluster knows what
it saw.

A room samples the names its peers give in their awareness state (`user.name`, what the web editor and most
Yjs editors set) when it integrates edits, at most once every `SAMPLE_EVERY` seconds (and once more before a
peer leaves, if edits came since the last sample), and tells the journal; consecutive samples of the same
people become one span. The history asks which people stretches of time saw (`people`), and when restores
were made (`restores`: each starts a moment of its own, `collab.sync.moments`). Everything is bounded: a
name's length, the names of a sample, the spans and restores of a document, and the bytes all documents'
spans hold together (the documents edited least recently are forgotten first).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .protocol import AwarenessEntry

__all__ = ["SAMPLE_EVERY", "Journal", "display_names"]

SAMPLE_EVERY = 1.0
"""Seconds between a room's samples of who is there while edits come: parsing every peer's awareness state
costs ~2 us each, so a room of 1,000 peers spends 2 ms a second on it at most."""
SPAN_GAP = 10.0
"""Samples of the same people this close together extend one span; further apart, they start another."""
MAX_NAME = 64
"""Characters of a name kept."""
MAX_NAMES = 32
"""Names one sample keeps (the first in order)."""
MAX_SPANS = 1024
MAX_RESTORES = 64
"""Spans and restores kept per document, the oldest dropped first."""
MAX_BYTES = 8 * 2**20
"""About how many bytes every document's spans may hold together."""
SPAN_COST = 100
"""Bytes counted for a span besides its names' characters."""


def display_names(entries: Iterable[AwarenessEntry]) -> frozenset[str]:
    """The `user.name` of each awareness state that has one (a string, not empty), cut to MAX_NAME characters."""
    names: set[str] = set()
    for entry in entries:
        try:
            state = json.loads(entry.state)
        except ValueError:  # checked as JSON when it came, so only a bug gets here: no name, not a crash
            continue
        user = state.get("user") if isinstance(state, dict) else None
        name = user.get("name") if isinstance(user, dict) else None
        if isinstance(name, str) and name.strip():
            names.add(name.strip()[:MAX_NAME])
            if len(names) >= MAX_NAMES:
                break
    return frozenset(names)


@dataclass(slots=True)
class _Span:
    start: float
    end: float
    people: frozenset[str]

    @property
    def cost(self) -> int:
        return SPAN_COST + sum(len(name) for name in self.people)


@dataclass(slots=True)
class _Document:
    spans: deque[_Span] = field(default_factory=lambda: deque(maxlen=MAX_SPANS))
    restores: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_RESTORES))
    """(when, the time it restored to), oldest first."""
    cost: int = 0


class Journal:
    """Per document name, who was there while it was edited and which changes were restores (Unix times)."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._documents: dict[str, _Document] = {}
        """Least recently written first."""
        self._cost = 0

    def present(self, name: str, now: float, people: frozenset[str]) -> None:
        """`people` were connected to document `name` while it was edited at `now`."""
        document = self._touch(name)
        spans = document.spans
        last = spans[-1] if spans else None
        if last is not None and last.people == people and 0 <= now - last.end <= SPAN_GAP:
            last.end = now
            return
        if len(spans) == spans.maxlen:
            self._spend(document, -spans[0].cost)  # the append below drops it
        span = _Span(now, now, people)
        spans.append(span)
        self._spend(document, span.cost)
        self._forget_least_recent()

    def restored(self, name: str, now: float, at: float) -> None:
        """Document `name` was restored at `now` to its state at `at`."""
        self._touch(name).restores.append((now, at))

    def people(self, name: str, stretches: Sequence[tuple[float, float]]) -> list[list[str]]:
        """For each (start, end) of `stretches`, everyone seen connected to `name` then, sorted: in the samples
        taken then, or less than SAMPLE_EVERY away (a sample stands for the edits until the next one).

        Each stretch costs a binary search and the spans it finds: spans are in time order (they are made as
        time goes, and `present` extends only the last one).
        """
        document = self._documents.get(name)
        if document is None:
            return [[] for _ in stretches]
        spans = list(document.spans)
        starts = [span.start for span in spans]
        found: list[list[str]] = []
        for start, end in stretches:
            names: set[str] = set()
            for span in reversed(spans[: bisect_left(starts, end + SAMPLE_EVERY)]):
                if span.end <= start - SAMPLE_EVERY:
                    break
                names |= span.people
            found.append(sorted(names))
        return found

    def restores(self, name: str) -> list[tuple[float, float]]:
        """(when, the time it restored to) of each restore of `name` remembered, oldest first."""
        document = self._documents.get(name)
        return [] if document is None else list(document.restores)

    def forget(self, name: str) -> None:
        """Document `name` was deleted: what was seen of it is no one's any more."""
        document = self._documents.pop(name, None)
        if document is not None:
            self._cost -= document.cost

    def renamed(self, old: str, new: str) -> None:
        """Document `old` is now called `new`, its history with it."""
        document = self._documents.pop(old, None)
        self.forget(new)
        if document is not None:
            self._documents[new] = document

    def _touch(self, name: str) -> _Document:
        document = self._documents.pop(name, None)
        self._documents[name] = document = document if document is not None else _Document()
        return document

    def _spend(self, document: _Document, cost: int) -> None:
        document.cost += cost
        self._cost += cost

    def _forget_least_recent(self) -> None:
        """Drop whole documents, least recently written first, until the spans fit (never the one just written)."""
        while self._cost > self.max_bytes and len(self._documents) > 1:
            self.forget(next(iter(self._documents)))
