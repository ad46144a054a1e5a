"""A client's awareness, with no I/O: its own entry (state and clock) and what the server said of everyone.

The clock rules are y-protocols': every new state of our own goes out at a higher clock, and so does its
renewal. A stock client drops a remote state it has not heard of for 30 s (`outdatedTimeout`) and renews its
own every 15 s; a client that never renewed vanished from every web editor half a minute after it came.

Across a reconnect, the states of the lost connection are dropped at once (`lost`): nobody is shown while
nothing is heard. What changed meanwhile is counted once the new connection's greeting is in (`greeted`), as
the difference from what was shown before: someone who left during the gap is a change, someone the greeting
shows as before is none. A renewal or an echo that changes nothing is no change either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..sync.protocol import AwarenessEntry, awareness_message

__all__ = ["RENEWAL_INTERVAL", "Presence"]

RENEWAL_INTERVAL = 15.0
"""Seconds between two renewals of our own state: half of y-protocols' `outdatedTimeout`, as its client does."""


_ABSENT = object()


class Presence:
    """Our own awareness entry and the states the current connection was told about (ours once echoed)."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.states: dict[int, Any] = {}
        """Every state the server told the current connection about, by client id."""
        self.changes = 0
        """How many times another client's state changed (came, moved, left) as this client saw it."""
        self._clock = 0
        self._local = "null"
        self._shown: dict[int, Any] | None = {}
        """Others as they were shown before the current connection's greeting (None: it is in)."""

    @property
    def present(self) -> bool:
        """Whether we publish a state (we have not left)."""
        return self._local != "null"

    def others(self) -> dict[int, Any]:
        return {client_id: state for client_id, state in self.states.items() if client_id != self.client_id}

    def publish(self, state: dict[str, Any] | None) -> bytes:
        """The frame that makes `state` ours (None: we leave)."""
        self._local = json.dumps(state)
        self._clock += 1
        return self._frame()

    def renewal(self) -> bytes | None:
        """The frame that keeps our state from being taken for outdated, if we have one."""
        if not self.present:
            return None
        self._clock += 1
        return self._frame()

    def greeting(self) -> bytes | None:
        """Our state for a new connection, if we have one. The server broadcast the previous connection's
        removal at clock + 1: clock + 2 is newer everywhere."""
        if not self.present:
            return None
        self._clock += 2
        return self._frame()

    def answer(self) -> bytes | None:
        """Our state as it is, for a server that asks (QueryAwareness)."""
        return self._frame() if self.present else None

    def receive(self, entries: Iterable[AwarenessEntry]) -> None:
        """Take what the server said; count each real change of another client's state once greeted."""
        for entry in entries:
            client_id = entry.client_id
            before = self.states.get(client_id, _ABSENT)
            if entry.is_removal:
                self.states.pop(client_id, None)
                changed = before is not _ABSENT
            else:
                state = json.loads(entry.state)  # parse_frame checked it is strict JSON
                self.states[client_id] = state
                changed = before is _ABSENT or before != state
            if changed and client_id != self.client_id and self._shown is None:
                self.changes += 1

    def lost(self) -> None:
        """The connection is gone: show nobody until the next one says who is there."""
        if self._shown is None:
            self._shown = self.others()
        self.states.clear()

    def greeted(self) -> None:
        """The new connection's greeting is in (its sync step 2 came after it): count what changed meanwhile."""
        if self._shown is not None and self.others() != self._shown:
            self.changes += 1
        self._shown = None

    def _frame(self) -> bytes:
        return awareness_message([AwarenessEntry(self.client_id, self._clock, self._local)])
