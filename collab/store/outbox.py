"""The webhook outbox: events written in the same transaction as the change that caused them.

    webhook_events(id, uid, type, name, first_at, last_at, gathering, details, created_at)
        -- one row per event, until every webhook got it; a document.changed row is `gathering` while its
           document keeps changing (one per document at most), then sealed by the sender's debounce
    webhook_deliveries(event_id, target, attempts, next_at, last_error, failed)
        -- one row per event and webhook URL, deleted once that URL answered 2xx; `failed` once given up
    webhook_lease(id = 1, holder, until)
        -- the one process that sends, so that each document's events go out one at a time, in order

An engine that records (`Recording`, given when webhooks are configured) adds to
these tables inside its commit, its delete and its rename: a change committed
is an event committed, and a crash between the two cannot happen. A commit
only ever inserts events or stretches the gathering one of its document; the
sender (`collab.webhooks`), holding the lease, seals, delivers and deletes.
The SQL here runs on SQLite and PostgreSQL alike (the memory engine runs it on
an in-memory SQLite database); each engine creates the tables in a migration.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tables import Execute, ExecuteMany

__all__ = [
    "CHANGED",
    "CONNECTION_EVENTS",
    "CREATED",
    "DELETED",
    "DOCUMENT_EVENTS",
    "EVENT_TYPES",
    "RENAMED",
    "Delivery",
    "OutboxRow",
    "OutboxTables",
    "Recording",
    "changes_of",
]

CHANGED = "document.changed"
CREATED = "document.created"
DELETED = "document.deleted"
RENAMED = "document.renamed"
DOCUMENT_EVENTS = (CHANGED, CREATED, DELETED, RENAMED)
CONNECTION_EVENTS = ("connection.opened", "connection.closed")
EVENT_TYPES = DOCUMENT_EVENTS + CONNECTION_EVENTS


@dataclass(frozen=True, slots=True)
class Recording:
    """What an engine adds to the outbox with each change: the webhooks configured, and the events they take."""

    targets: tuple[str, ...]
    """Webhook URLs: each sealed event gets one delivery row per URL."""
    types: frozenset[str]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one webhook URL."""

    event_id: int
    uid: str
    """The idempotency id: the same for every attempt and every URL."""
    type: str
    name: str
    first_at: float
    last_at: float
    created_at: float
    details: Mapping[str, Any] | None
    """What the event says besides its name and times; None for a document.changed not described yet."""
    attempts: int
    next_at: float


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """What `collab webhooks` lists: an event, with one of its deliveries (None while it is gathering)."""

    event_id: int
    uid: str
    type: str
    name: str
    first_at: float
    last_at: float
    target: str | None
    attempts: int
    next_at: float | None
    last_error: str | None
    state: str
    """gathering (changes still coming), pending (being delivered or retried) or failed (given up)."""


@dataclass(frozen=True, slots=True)
class OutboxTables:
    """The outbox through one connection, in one transaction the caller holds."""

    execute: Execute
    """For statements that give rows (SELECT, RETURNING)."""
    write: ExecuteMany
    """For those that give none, once per row of parameters."""

    # What engines record, inside the transaction of the change.

    def changed(self, changes: Mapping[str, tuple[float, float]], recording: Recording) -> None:
        """Documents changed (name -> first and last time, this commit): stretch or open their gathering event."""
        if CHANGED not in recording.types:
            return
        for name, (first_at, last_at) in sorted(changes.items()):
            self.write(
                """INSERT INTO webhook_events (uid, type, name, first_at, last_at, gathering, created_at)
                   VALUES (?, ?, ?, ?, ?, TRUE, ?)
                   ON CONFLICT (name) WHERE gathering DO UPDATE SET last_at = CASE
                       WHEN excluded.last_at > webhook_events.last_at THEN excluded.last_at
                       ELSE webhook_events.last_at END""",
                [[_uid(), CHANGED, name, first_at, last_at, first_at]],
            )

    def add(self, type: str, name: str, at: float, details: Mapping[str, Any], recording: Recording) -> None:
        """An event complete at once (created, deleted, renamed, a connection), with its deliveries."""
        if type not in recording.types:
            return
        if type in (DELETED, RENAMED):
            self._seal_gathering(name, recording)  # what changed before comes first
        [(event_id,)] = self.execute(
            """INSERT INTO webhook_events (uid, type, name, first_at, last_at, gathering, details, created_at)
               VALUES (?, ?, ?, ?, ?, FALSE, ?, ?) RETURNING id""",
            [_uid(), type, name, at, at, json.dumps(details), at],
        )
        self._deliver(event_id, at, recording)

    def _seal_gathering(self, name: str, recording: Recording) -> None:
        for (event_id,) in list(
            self.execute(
                "UPDATE webhook_events SET gathering = FALSE WHERE gathering AND name = ? RETURNING id", [name]
            )
        ):
            self._deliver(event_id, 0.0, recording)

    def _deliver(self, event_id: int, at: float, recording: Recording) -> None:
        self.write(
            "INSERT INTO webhook_deliveries (event_id, target, attempts, next_at, failed) VALUES (?, ?, 0, ?, FALSE)",
            [[event_id, target, at] for target in recording.targets],
        )

    # What the sender does, holding the lease.

    def take_lease(self, holder: str, now: float, until: float) -> bool:
        """Become (or stay) the sender until `until`, unless another holds a lease that has not run out."""
        rows = self.execute(
            """INSERT INTO webhook_lease (id, holder, until) VALUES (1, ?, ?)
               ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until
               WHERE webhook_lease.holder = excluded.holder OR webhook_lease.until < ?
               RETURNING holder""",
            [holder, until, now],
        )
        return bool(list(rows))

    def give_up_lease(self, holder: str) -> None:
        self.write("UPDATE webhook_lease SET until = 0 WHERE holder = ?", [[holder]])

    def seal_due(self, quiet_since: float, gathering_since: float, recording: Recording) -> list[int]:
        """Seal the document.changed events quiet since `quiet_since` or gathering since `gathering_since`."""
        sealed = [
            event_id
            for (event_id,) in self.execute(
                """UPDATE webhook_events SET gathering = FALSE
                   WHERE gathering AND (last_at <= ? OR first_at <= ?) RETURNING id""",
                [quiet_since, gathering_since],
            )
        ]
        for event_id in sorted(sealed):
            self._deliver(event_id, 0.0, recording)
        return sealed

    def undescribed(self, limit: int) -> list[tuple[int, str]]:
        """Sealed events whose details are still to be written (a document.changed's state vector): (id, name)."""
        rows = self.execute(
            "SELECT id, name FROM webhook_events WHERE NOT gathering AND details IS NULL ORDER BY id LIMIT ?",
            [limit],
        )
        return [(int(event_id), str(name)) for event_id, name in rows]

    def describe(self, event_id: int, details: Mapping[str, Any]) -> None:
        self.write(
            "UPDATE webhook_events SET details = ? WHERE id = ? AND details IS NULL", [[json.dumps(details), event_id]]
        )

    def queued(self, target: str, limit: int) -> list[Delivery]:
        """The first delivery to `target` of each document, not given up, oldest first, at most `limit`: what may
        go now without breaking any document's order (and without one document's backlog hiding the others')."""
        rows = self.execute(
            """SELECT d.event_id, e.uid, e.type, e.name, e.first_at, e.last_at, e.created_at, e.details,
                      d.attempts, d.next_at
               FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
               WHERE d.target = ? AND d.event_id IN (
                   SELECT min(first.event_id) FROM webhook_deliveries first
                   JOIN webhook_events event ON event.id = first.event_id
                   WHERE first.target = ? AND NOT first.failed GROUP BY event.name)
               ORDER BY d.event_id LIMIT ?""",
            [target, target, limit],
        )
        return [
            Delivery(
                int(event_id),
                str(uid),
                str(type),
                str(name),
                float(first_at),
                float(last_at),
                float(created_at),
                None if details is None else json.loads(details),
                int(attempts),
                float(next_at),
            )
            for event_id, uid, type, name, first_at, last_at, created_at, details, attempts, next_at in rows
        ]

    def delivered(self, event_id: int, target: str) -> None:
        """Forget the delivery, and the event once no URL still waits for it."""
        self.write("DELETE FROM webhook_deliveries WHERE event_id = ? AND target = ?", [[event_id, target]])
        self.write(
            """DELETE FROM webhook_events WHERE id = ? AND NOT gathering
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries WHERE event_id = ?)""",
            [[event_id, event_id]],
        )

    def due_now(self, target: str) -> None:
        """Make every delivery to `target` not given up due at once (it answers again)."""
        self.write("UPDATE webhook_deliveries SET next_at = 0 WHERE target = ? AND NOT failed", [[target]])

    def retry(self, event_id: int, target: str, attempts: int, next_at: float, error: str, *, give_up: bool) -> None:
        self.write(
            """UPDATE webhook_deliveries SET attempts = ?, next_at = ?, last_error = ?, failed = ?
               WHERE event_id = ? AND target = ?""",
            [[attempts, next_at, error[:500], give_up, event_id, target]],
        )

    def counts(self, targets: Iterable[str]) -> tuple[int, int, float | None, int]:
        """Deliveries pending and failed, the oldest pending one's event time, and those to URLs not in `targets`."""
        known = list(targets)
        rows = list(
            self.execute(
                """SELECT d.target, d.failed, count(*), min(e.created_at)
                   FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id GROUP BY d.target, d.failed"""
            )
        )
        pending = sum(int(count) for target, failed, count, _ in rows if not failed and target in known)
        failed = sum(int(count) for _, failed, count, _ in rows if failed)
        oldest = min((float(at) for target, failed, _, at in rows if not failed and target in known), default=None)
        unknown = sum(int(count) for target, failed, count, _ in rows if not failed and target not in known)
        return pending, failed, oldest, unknown

    # What `collab webhooks` reads.

    def listing(self, *, failed_only: bool = False, limit: int = 1000) -> list[OutboxRow]:
        """Events not yet delivered everywhere, oldest first, one row per delivery (one for a gathering event)."""
        rows = self.execute(
            f"""SELECT e.id, e.uid, e.type, e.name, e.first_at, e.last_at, e.gathering,
                       d.target, d.attempts, d.next_at, d.last_error, d.failed
                FROM webhook_events e LEFT JOIN webhook_deliveries d ON d.event_id = e.id
                {"WHERE d.failed" if failed_only else ""}
                ORDER BY e.id, d.target LIMIT ?""",
            [limit],
        )
        return [
            OutboxRow(
                int(event_id),
                str(uid),
                str(type),
                str(name),
                float(first_at),
                float(last_at),
                None if target is None else str(target),
                int(attempts or 0),
                None if next_at is None else float(next_at),
                None if last_error is None else str(last_error),
                "gathering" if gathering else "failed" if failed else "pending",
            )
            for (event_id, uid, type, name, first_at, last_at, gathering), (
                target,
                attempts,
                next_at,
                last_error,
                failed,
            ) in ((row[:7], row[7:]) for row in rows)
            if target is not None or gathering
        ]


def changes_of(ops: Sequence[Any]) -> dict[str, tuple[float, float]]:
    """Per document appended to in a batch of `WriteOp`s, the first and last time: what `OutboxTables.changed`
    takes. Compactions are not changes (they store what was appended)."""
    changes: dict[str, tuple[float, float]] = {}
    for op in ops:
        if op.kind == "append":
            first, last = changes.get(op.name, (op.at, op.at))
            changes[op.name] = (min(first, op.at), max(last, op.at))
    return changes


def _uid() -> str:
    return str(uuid.uuid4())
