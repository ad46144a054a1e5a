"""Awareness (presence) bookkeeping for one room, with no I/O.

The server keeps the latest awareness entry of every client so that a newcomer
sees who is there, and remembers which connection introduced each client so
that its states can be removed when that connection goes away, however it goes.
The clock rules are those of y-protocols' `applyAwarenessUpdate`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from .protocol import AwarenessEntry

__all__ = ["Presence"]


class Presence:
    """Latest awareness entry per client id, and the connection that owns it."""

    __slots__ = ("_entries", "_owners")

    def __init__(self) -> None:
        # Removals are kept too: their clock decides whether a late message is stale.
        self._entries: dict[int, AwarenessEntry] = {}
        self._owners: dict[int, Hashable] = {}

    def apply(self, owner: Hashable, entries: Iterable[AwarenessEntry]) -> list[AwarenessEntry]:
        """Record the entries that are newer than what we know; return those (to broadcast)."""
        accepted = []
        for entry in entries:
            known = self._entries.get(entry.client_id)
            if known is not None and not (
                known.clock < entry.clock
                or (known.clock == entry.clock and entry.is_removal and not known.is_removal)
            ):
                continue
            self._entries[entry.client_id] = entry
            if entry.is_removal:
                self._owners.pop(entry.client_id, None)
            else:
                self._owners[entry.client_id] = owner
            accepted.append(entry)
        return accepted

    def current(self) -> list[AwarenessEntry]:
        """Every client that is present now."""
        return [entry for entry in self._entries.values() if not entry.is_removal]

    def remove_owner(self, owner: Hashable) -> list[AwarenessEntry]:
        """Remove the states `owner` introduced; return the removal entries to broadcast."""
        removals = []
        for client_id in [cid for cid, who in self._owners.items() if who == owner]:
            del self._owners[client_id]
            removal = AwarenessEntry(client_id, self._entries[client_id].clock + 1, "null")
            self._entries[client_id] = removal
            removals.append(removal)
        return removals

    def __len__(self) -> int:
        return len(self._owners)
