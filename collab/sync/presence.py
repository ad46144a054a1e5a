"""Awareness (presence) bookkeeping for one room, with no I/O: who is there, and who may say so.

The server keeps the latest awareness entry of every client id so that a newcomer
sees who is there, and remembers which connection introduced each id so that its
states can be removed when that connection goes away, however it goes. The clock
rules are those of y-protocols' `applyAwarenessUpdate`. On top of them, who may
change what (README, Security model):

- A connection owns the client ids it introduced; only it may update or remove
  them. An entry for an id another connection owns is dropped, never relayed:
  relayed, it made that id's own client adopt it (a stock client takes a newer
  state for its own id as its own, clock included).
- The same person may take an id over at once: a connection whose token has the
  same `sub` as the owner's. A stock client reconnects with the same id while the
  server may not yet know that its old connection is dead.
- An owner without a `sub` (no access control, or a token without one) accepts
  claims: another connection's newer entry for its id is kept, the newest one per
  id, and promoted in place of the removal when the owner leaves (closed, or cut
  by the keepalive). A quick reconnect keeps showing the user's cursor, the old
  one and then the new one with no gap, and no stranger takes the id of a user who
  is still connected. An owner with a `sub` accepts no claims from anyone else.
- A connection holds at most MAX_CLIENT_IDS ids, owned and claimed together; a
  stock client uses one per document.
- Clocks above MAX_CLOCK are dropped, so that the removal collab broadcasts for a
  departed owner (clock + 1) is always one a JavaScript client can read.
- A removal of an id that is not present is ignored, and stores nothing. A removed
  id is remembered (its clock, its owner's `sub`) for REMOVED_KEPT_FOR seconds, at
  most MAX_REMOVED a room: long enough to refuse the stale echoes that arrive
  after a removal (the stock client echoes every state it receives; accepted, an
  echo would bring the departed user back as a ghost owned by the echoing client),
  and while it is remembered only the same `sub` may bring the id back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .protocol import MAX_VAR_UINT, AwarenessEntry

__all__ = [
    "CLOCK_TOO_HIGH",
    "MAX_CLIENT_IDS",
    "MAX_CLOCK",
    "MAX_REMOVED",
    "NOT_OWNER",
    "REMOVED_KEPT_FOR",
    "TOO_MANY_IDS",
    "Applied",
    "Presence",
]

MAX_CLIENT_IDS = 4
MAX_CLOCK = MAX_VAR_UINT - 1
REMOVED_KEPT_FOR = 60.0
MAX_REMOVED = 1024

# Why entries were dropped: the labels of collab_rejected_messages_total.
NOT_OWNER = "awareness_not_owner"
TOO_MANY_IDS = "awareness_too_many_ids"
CLOCK_TOO_HIGH = "awareness_clock_too_high"


class Applied(NamedTuple):
    """What one awareness message changed."""

    accepted: list[AwarenessEntry]
    """The entries to broadcast, in order: the message's own, or the state a removal handed over."""
    dropped: dict[str, int]
    """How many entries were dropped, by reason (stale ones, which every stock client echoes, are not)."""


class _Removed(NamedTuple):
    clock: int
    subject: str | None
    at: float


class _Holder:
    """The ids one connection owns or claims, and who its token says it is."""

    __slots__ = ("claimed", "limit", "owned", "subject")

    def __init__(self, subject: str | None, limit: int) -> None:
        self.subject = subject
        self.limit = limit
        """How many ids it may own and claim together."""
        self.owned: set[int] = set()
        self.claimed: set[int] = set()

    def __len__(self) -> int:
        return len(self.owned) + len(self.claimed)


class Presence:
    """Latest awareness entry per client id, the connection that owns it, and the rules above."""

    __slots__ = ("_claims", "_entries", "_holders", "_owners", "_removed")

    def __init__(self) -> None:
        self._entries: dict[int, AwarenessEntry] = {}
        """Present clients only."""
        self._owners: dict[int, object] = {}
        self._holders: dict[object, _Holder] = {}
        self._claims: dict[int, tuple[object, AwarenessEntry]] = {}
        self._removed: dict[int, _Removed] = {}
        """Oldest first: insertion order is removal order."""

    def apply(
        self,
        owner: object,
        entries: Iterable[AwarenessEntry],
        now: float,
        subject: str | None = None,
        max_ids: int = MAX_CLIENT_IDS,
    ) -> Applied:
        """Apply the entries `owner` sent (`subject`: its token's `sub`); `now` is a monotonic time in seconds.

        `max_ids`: how many ids `owner` may hold, fixed when it first sends. A connection holds MAX_CLIENT_IDS;
        another collab process, which stands for all of its own connections in a room, holds many more (its
        own rules kept each of them to MAX_CLIENT_IDS).
        """
        holder = self._holders.get(owner)
        if holder is None:
            holder = self._holders[owner] = _Holder(subject, max_ids)
        accepted: list[AwarenessEntry] = []
        dropped: dict[str, int] = {}
        for entry in entries:
            reason = self._apply(owner, holder, entry, now, accepted)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
        if not holder.owned and not holder.claimed:
            del self._holders[owner]
        return Applied(accepted, dropped)

    def subject_of(self, client_id: int) -> str | None:
        """The `sub` of whoever holds `client_id` now (None: nobody, or an owner without one)."""
        owner = self._owners.get(client_id)
        return self._holders[owner].subject if owner is not None else None

    def holds(self, owner: object) -> bool:
        """Whether `owner` owns or claims any id here."""
        return owner in self._holders

    def current(self) -> list[AwarenessEntry]:
        """Every client that is present now."""
        return list(self._entries.values())

    def remove_owner(self, owner: object, now: float, vanished: bool = False) -> list[AwarenessEntry]:
        """`owner` is gone: drop its claims, release its ids; return what to broadcast (removals, handovers).

        `vanished`: the owner did not leave but stopped being heard from (another process that stopped
        beating, which may only have been cut off): its ids are removed, and remembered, at their current
        clock (a stock client takes a removal at the clock it has), so that each id's next renewal, clock + 1,
        is taken from whichever process it comes through (from the same person, for an owner with a `sub`).
        """
        holder = self._holders.pop(owner, None)
        if holder is None:
            return []
        for client_id in holder.claimed:
            if self._claims[client_id][0] is owner:
                del self._claims[client_id]
        return [self._release(client_id, holder, None, now, vanished) for client_id in list(holder.owned)]

    def __len__(self) -> int:
        return len(self._entries)

    def _apply(
        self, owner: object, holder: _Holder, entry: AwarenessEntry, now: float, accepted: list[AwarenessEntry]
    ) -> str | None:
        """Apply one entry; return why it was dropped, or None."""
        client_id, clock = entry.client_id, entry.clock
        if clock > MAX_CLOCK:
            return CLOCK_TOO_HIGH
        known = self._entries.get(client_id)
        if known is None:
            return self._introduce(owner, holder, entry, now, accepted)
        if clock < known.clock or (clock == known.clock and not entry.is_removal):
            return None  # stale
        current = self._owners[client_id]
        same_person = holder.subject is not None and holder.subject == self._holders[current].subject
        if current is owner or same_person:
            if entry.is_removal:
                accepted.append(self._release(client_id, self._holders[current], clock, now))
                return None
            if current is not owner:
                if client_id not in holder.claimed and len(holder) >= holder.limit:
                    return TOO_MANY_IDS
                self._take_over(client_id, owner, holder)
            self._entries[client_id] = entry
            accepted.append(entry)
            return None
        return self._claim(owner, holder, entry)

    def _introduce(
        self, owner: object, holder: _Holder, entry: AwarenessEntry, now: float, accepted: list[AwarenessEntry]
    ) -> str | None:
        """An entry for an id that is not present: `owner` introduces it, unless it is a stale echo."""
        if entry.is_removal:
            return None  # nothing to remove; remembering it would let anyone grow the room's memory
        client_id = entry.client_id
        removed = self._removed.get(client_id)
        if removed is not None:
            if removed.at + REMOVED_KEPT_FOR <= now:
                removed = None
            elif entry.clock <= removed.clock:
                return None  # stale
            elif removed.subject is not None and removed.subject != holder.subject:
                return NOT_OWNER
        if len(holder) >= holder.limit:
            return TOO_MANY_IDS
        self._removed.pop(client_id, None)
        self._entries[client_id] = entry
        self._owners[client_id] = owner
        holder.owned.add(client_id)
        accepted.append(entry)
        return None

    def _claim(self, owner: object, holder: _Holder, entry: AwarenessEntry) -> str:
        """A newer entry for an id another connection owns: never relayed; kept if that owner may hand it over."""
        client_id = entry.client_id
        claim = self._claims.get(client_id)
        mine = claim is not None and claim[0] is owner
        if entry.is_removal:
            if mine:  # the claimant withdraws its claim
                del self._claims[client_id]
                holder.claimed.discard(client_id)
            return NOT_OWNER
        if self._holders[self._owners[client_id]].subject is not None:
            return NOT_OWNER
        if not mine:
            if claim is not None and claim[1].clock >= entry.clock:
                return NOT_OWNER
            if len(holder) >= holder.limit:
                return TOO_MANY_IDS
            if claim is not None:
                self._holders[claim[0]].claimed.discard(client_id)  # a newer claim replaces it
        self._claims[client_id] = (owner, entry)
        holder.claimed.add(client_id)
        return NOT_OWNER

    def _take_over(self, client_id: int, owner: object, holder: _Holder) -> None:
        self._holders[self._owners[client_id]].owned.discard(client_id)
        self._owners[client_id] = owner
        holder.owned.add(client_id)
        if client_id in holder.claimed:
            holder.claimed.discard(client_id)
            del self._claims[client_id]

    def _release(
        self, client_id: int, holder: _Holder, clock: int | None, now: float, vanished: bool = False
    ) -> AwarenessEntry:
        """The owner removes `client_id` (with `clock`, or None: it left; `vanished`: see `remove_owner`).
        Return the entry to broadcast: the removal, or the claim that takes its place."""
        known = self._entries.pop(client_id)
        del self._owners[client_id]
        holder.owned.discard(client_id)
        removal_clock = known.clock if vanished else known.clock + 1 if clock is None else clock
        claim = self._claims.pop(client_id, None)
        if claim is not None:
            claimant, claimed = claim
            claimant_holder = self._holders[claimant]
            claimant_holder.claimed.discard(client_id)
            # Newer than what everyone has, so that they take it; within MAX_CLOCK, so it can be removed later.
            handover_clock = max(claimed.clock, known.clock + 1)
            if handover_clock <= MAX_CLOCK:
                handover = AwarenessEntry(client_id, handover_clock, claimed.state)
                self._entries[client_id] = handover
                self._owners[client_id] = claimant
                claimant_holder.owned.add(client_id)
                return handover
        self._remember_removed(client_id, removal_clock, holder.subject, now)
        return AwarenessEntry(client_id, removal_clock, "null")

    def _remember_removed(self, client_id: int, clock: int, subject: str | None, now: float) -> None:
        removed = self._removed
        removed.pop(client_id, None)
        removed[client_id] = _Removed(clock, subject, now)
        # The newest (just added) never expires here, so this ends; each entry is dropped once.
        while len(removed) > MAX_REMOVED or next(iter(removed.values())).at + REMOVED_KEPT_FOR <= now:
            del removed[next(iter(removed))]
