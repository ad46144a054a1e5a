"""The webhook outbox: events written in the same transaction as the change that caused them.

    webhook_events(id, uid, type, name, also, first_at, last_at, gathering, details, created_at)
        -- one row per event, until every webhook got it; a document.changed row is `gathering` while its
           document keeps changing (one per document at most), then sealed by the sender's debounce;
           `also`: a rename's new name, whose events it must come before too
    webhook_deliveries(event_id, target, attempts, next_at, since, unreachable_at, last_error, failed)
        -- one row per event and webhook URL, deleted once that URL answered 2xx; `failed` once given up
           (`--webhook-retry-for` after `since`, or the event); `unreachable_at`: its last failure got no answer
    webhook_lease(id = 1, holder, until)
        -- the one process that sends, so that each document's events go out one at a time, in order
    webhook_config(id = 1, targets, types)
        -- what the server last started with: what commands writing the database without a server record

An engine that records (`Recording`: the server's, when webhooks are configured,
or the stored one for a command run without a server) adds to these tables
inside its commit, its delete and its rename: a change committed is an event
committed, and a crash between the two cannot happen. A commit only ever
inserts events or stretches the gathering one of its document; the sender
(`collab.webhooks`), holding the lease, seals, describes, delivers and deletes.
The SQL here runs on SQLite and PostgreSQL alike (the memory engine runs it on
an in-memory SQLite database); each engine creates the tables in a migration.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .tables import Execute, ExecuteMany

__all__ = [
    "CHANGED",
    "CONNECTION_EVENTS",
    "CREATED",
    "DELETED",
    "DOCUMENT_EVENTS",
    "EVENT_TYPES",
    "RENAMED",
    "STORED",
    "Delivery",
    "Listing",
    "OutboxRow",
    "OutboxTables",
    "Recording",
    "RecordingSetting",
    "changes_of",
    "resolve",
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
    """Webhook URLs, each once: each sealed event gets one delivery row per URL."""
    types: frozenset[str]


STORED: Literal["stored"] = "stored"
"""An engine's `recording` for a command that writes the database without a server (`collab delete`, `import`...):
record as the server last started on it said (`webhook_config`), so that its changes have their events too."""

RecordingSetting = Recording | Literal["stored"] | None
"""What an engine is told to record: a server's own (None: webhooks off), or `STORED`."""


def resolve(outbox: OutboxTables, setting: RecordingSetting) -> Recording | None:
    """What an engine opening records: for `STORED`, what the database says; a server's own is stored for the
    commands run while it does not run (None clears it: webhooks are off then)."""
    if setting == STORED:
        return outbox.configured()
    outbox.configure(setting)
    return setting


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one webhook URL."""

    event_id: int
    uid: str
    """The idempotency id: the same for every attempt and every URL."""
    type: str
    name: str
    also: str | None
    """A rename's new name: its events wait for this one too."""
    first_at: float
    last_at: float
    created_at: float
    details: Mapping[str, Any]
    """What the event says besides its name and times."""
    attempts: int
    since: float
    """Since when it is retried: its event's time, or when `collab webhooks --retry` made it pending again."""

    @property
    def keys(self) -> tuple[str, ...]:
        """The names whose order this delivery keeps: one at a time per name."""
        return (self.name,) if self.also is None else (self.name, self.also)


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
class Listing:
    """What `collab webhooks` shows: the first rows, and how many there are per state in all."""

    rows: list[OutboxRow]
    totals: dict[str, int]


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

    def add(
        self,
        type: str,
        name: str,
        at: float,
        details: Mapping[str, Any],
        recording: Recording,
        uid: str | None = None,
    ) -> None:
        """An event complete at once (created, deleted, renamed, a connection), with its deliveries; an event of
        `uid` already stored is not added again (a connection event written twice at a shutdown)."""
        also = details.get("to") if type == RENAMED else None
        if type in (DELETED, RENAMED):  # what changed before comes first, whether this one is sent or not
            self._seal_gathering(name, recording)
            if also is not None:
                self._seal_gathering(also, recording)
        if type not in recording.types:
            return
        rows = list(
            self.execute(
                """INSERT INTO webhook_events
                       (uid, type, name, also, first_at, last_at, gathering, details, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, FALSE, ?, ?) ON CONFLICT (uid) DO NOTHING RETURNING id""",
                [uid or _uid(), type, name, also, at, at, json.dumps(details), at],
            )
        )
        if rows:
            self._deliver(rows[0][0], at, recording)

    def _seal_gathering(self, name: str, recording: Recording) -> None:
        for (event_id,) in list(
            self.execute(
                "UPDATE webhook_events SET gathering = FALSE WHERE gathering AND name = ? RETURNING id", [name]
            )
        ):
            self._deliver(event_id, 0.0, recording)

    def _deliver(self, event_id: int, at: float, recording: Recording) -> None:
        self.write(
            """INSERT INTO webhook_deliveries (event_id, target, attempts, next_at, failed) VALUES (?, ?, 0, ?, FALSE)
               ON CONFLICT (event_id, target) DO NOTHING""",
            [[event_id, target, at] for target in dict.fromkeys(recording.targets)],
        )

    # The configuration commands without a server record by.

    def configure(self, recording: Recording | None) -> None:
        """Store what the server starting records (None: nothing), for commands run while none runs."""
        if recording is None:
            self.write("DELETE FROM webhook_config", [[]])
            return
        self.write(  # an upsert: the processes of a cluster start (and store this) at the same time
            """INSERT INTO webhook_config (id, targets, types) VALUES (1, ?, ?)
               ON CONFLICT (id) DO UPDATE SET targets = excluded.targets, types = excluded.types""",
            [[json.dumps(list(recording.targets)), json.dumps(sorted(recording.types))]],
        )

    def configured(self) -> Recording | None:
        """What the server last started with recorded; None if it recorded nothing (or none ever started)."""
        rows = list(self.execute("SELECT targets, types FROM webhook_config"))
        if not rows:
            return None
        targets, types = rows[0]
        return Recording(tuple(json.loads(targets)), frozenset(json.loads(types)))

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
        """Sealed events whose details are still to be written (a document.changed's state vector): (id, name),
        oldest first."""
        rows = self.execute(
            "SELECT id, name FROM webhook_events WHERE NOT gathering AND details IS NULL ORDER BY id LIMIT ?",
            [limit],
        )
        return [(int(event_id), str(name)) for event_id, name in rows]

    def describe(self, event_id: int, details: Mapping[str, Any]) -> None:
        """Write a sealed event's details: from now on it can be sent."""
        self.write(
            "UPDATE webhook_events SET details = ? WHERE id = ? AND details IS NULL", [[json.dumps(details), event_id]]
        )

    def queued(self, target: str, now: float, recovered_at: float, limit: int) -> list[Delivery]:
        """What may go to `target` now, oldest first, at most `limit`: for each name, its first delivery not given
        up, if described and due (its backoff over, or, if its last attempt got no answer, that was before
        `recovered_at`, when the URL answered again). A rename is first for both of its names, or waits."""
        rows = self.execute(
            """WITH pending AS (
                   SELECT d.event_id, e.name, e.also FROM webhook_deliveries d
                   JOIN webhook_events e ON e.id = d.event_id WHERE d.target = ? AND NOT d.failed),
               keyed AS (
                   SELECT event_id, name AS key FROM pending
                   UNION ALL SELECT event_id, also FROM pending WHERE also IS NOT NULL),
               firsts AS (SELECT key, min(event_id) AS first FROM keyed GROUP BY key)
               SELECT d.event_id, e.uid, e.type, e.name, e.also, e.first_at, e.last_at, e.created_at, e.details,
                      d.attempts, coalesce(d.since, e.created_at)
               FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
               JOIN firsts own ON own.key = e.name AND own.first = d.event_id
               LEFT JOIN firsts other ON other.key = e.also
               WHERE d.target = ? AND NOT d.failed AND e.details IS NOT NULL
                 AND (d.next_at <= ? OR d.unreachable_at <= ?) AND (e.also IS NULL OR other.first = d.event_id)
               ORDER BY d.event_id LIMIT ?""",
            [target, target, now, recovered_at, limit],
        )
        return [
            Delivery(
                int(event_id),
                str(uid),
                str(type),
                str(name),
                None if also is None else str(also),
                float(first_at),
                float(last_at),
                float(created_at),
                json.loads(details),
                int(attempts),
                float(since),
            )
            for event_id, uid, type, name, also, first_at, last_at, created_at, details, attempts, since in rows
        ]

    def delivered(self, event_id: int, target: str) -> None:
        """Forget the delivery, and the event once no URL still waits for it."""
        self.write("DELETE FROM webhook_deliveries WHERE event_id = ? AND target = ?", [[event_id, target]])
        self.write(
            """DELETE FROM webhook_events WHERE id = ? AND NOT gathering
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries WHERE event_id = ?)""",
            [[event_id, event_id]],
        )

    def retry(
        self,
        event_id: int,
        target: str,
        attempts: int,
        unreachable_at: float | None,
        next_at: float,
        error: str,
        *,
        give_up: bool,
    ) -> None:
        """Record a failed attempt: try again at `next_at`, or never (`give_up`: kept, listed). `unreachable_at`:
        when, if it got no answer at all (then it is due again as soon as the URL answers another)."""
        self.write(
            """UPDATE webhook_deliveries SET attempts = ?, unreachable_at = ?, next_at = ?, last_error = ?, failed = ?
               WHERE event_id = ? AND target = ?""",
            [[attempts, unreachable_at, next_at, error[:500], give_up, event_id, target]],
        )

    def retry_failed(self, now: float) -> int:
        """Make every delivery given up on pending again, due now and retried for `--webhook-retry-for` from `now`
        (`collab webhooks --retry`); how many."""
        [(count,)] = self.execute("SELECT count(*) FROM webhook_deliveries WHERE failed")
        self.write(
            "UPDATE webhook_deliveries SET failed = FALSE, attempts = 0, next_at = 0, since = ? WHERE failed", [[now]]
        )
        return int(count)

    def forget(self, targets: Iterable[str] | None) -> int:
        """Drop the deliveries given up on, and those to URLs not among `targets` (None: keep those), then the
        events no URL waits for any more (`collab webhooks --forget`); how many deliveries went."""
        kept = list(dict.fromkeys(targets or ()))
        where = "failed" if targets is None else f"failed OR target NOT IN ({', '.join('?' * len(kept))})"
        if targets is not None and not kept:
            where = "TRUE"
        [(count,)] = self.execute(f"SELECT count(*) FROM webhook_deliveries WHERE {where}", kept)
        self.write(f"DELETE FROM webhook_deliveries WHERE {where}", [kept])
        self.write(
            """DELETE FROM webhook_events WHERE NOT gathering
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries WHERE event_id = webhook_events.id)""",
            [[]],
        )
        return int(count)

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

    def totals(self) -> dict[str, int]:
        """How many rows `listing` would give per state, however many that is."""
        [(gathering,)] = self.execute("SELECT count(*) FROM webhook_events WHERE gathering")
        rows = self.execute("SELECT failed, count(*) FROM webhook_deliveries GROUP BY failed")
        by_state = {"gathering": int(gathering), "pending": 0, "failed": 0}
        for failed, count in rows:
            by_state["failed" if failed else "pending"] += int(count)
        return by_state

    def listing(self, *, failed_only: bool = False, limit: int = 1000) -> Listing:
        """Events not yet delivered everywhere, oldest first, one row per delivery (one for a gathering event):
        the first `limit` (`totals` counts them all)."""
        rows = self.execute(
            f"""SELECT e.id, e.uid, e.type, e.name, e.first_at, e.last_at, e.gathering,
                       d.target, d.attempts, d.next_at, d.last_error, d.failed
                FROM webhook_events e LEFT JOIN webhook_deliveries d ON d.event_id = e.id
                {"WHERE d.failed" if failed_only else ""}
                ORDER BY e.id, d.target LIMIT ?""",
            [limit],
        )
        listed = [
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
        return Listing(listed, self.totals())


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
