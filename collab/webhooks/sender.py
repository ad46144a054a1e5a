"""The webhook sender: seals, describes and delivers the outbox's events, retrying until they land.

Every server runs one, but only the one holding the outbox's lease sends: it is
renewed every `LEASE_RENEWAL` by a task of its own, and a sender stops starting
deliveries `LEASE - LEASE_RENEWAL` after its last renewal, before another can
take it (`LEASE` after). Each document's events then go out one at a time, in
the order they were committed, to each URL; a rename waits for both its names.
Per URL up to `CONCURRENCY` documents are sent at once, so a busy document never
holds up another.

A failed delivery waits `events.retry_delay` (doubling to a minute) and is
tried again until `--webhook-retry-for` has passed since its event, then is
kept as failed for `collab webhooks`. A URL that answers an error keeps each
document's backoff; a URL that does not answer at all (refused, reset, timed
out) is unreachable: it is tried one delivery at a time, and the first that
succeeds makes every delivery that failed meanwhile due at once, so a receiver
back from an outage gets its backlog in order without waiting out each backoff.

The sender's database work is one transaction per look at the outbox (what the
deliveries since the last look came to, then what to send next), queued on
the store's thread with the commits, and looks are spaced by at least ten times
what the last one took there: a large backlog slows its own delivery, not the
commits. HTTP requests run on tasks of their own: nothing here is on the relay's
path. Cancelled mid-request (a shutdown), a delivery stays in the outbox and is
sent again: at least once, never at most once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..config import Settings
from ..errors import CollabError, DeliveryError, StorageError
from ..metrics import Counter, Gauge, Histogram, Metric
from ..store import Store
from ..store.engines import recording
from ..store.outbox import Delivery, OutboxTables, Recording
from .events import body_of, retry_delay
from .http import post, shown
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["WebhookOptions", "Webhooks"]

logger = logging.getLogger("collab.webhooks")

POLL_INTERVAL = 0.5
"""Seconds between looks at the outbox when nothing wakes the sender sooner (a delivery ending does)."""
MIN_GAP = 0.05
"""Seconds between two looks at least, and ten times what the last one took on the store's thread."""
LEASE = 15.0
"""Seconds the lease is held for without renewing it."""
LEASE_RENEWAL = LEASE / 3
"""Seconds between renewals; a sender stops starting deliveries once `LEASE - LEASE_RENEWAL` have passed since
its last renewal, so clocks up to that far apart never let two senders start deliveries at once."""
CONCURRENCY = 8
"""Deliveries in flight at once per URL (each to a different document)."""
BATCH = 200
"""Deliveries read per URL and per look; events described per look."""
DESCRIBING = 4
"""Events described at once (each may load its document from the store)."""
DESCRIBE_TIMEOUT = 10.0
"""Seconds a look spends describing at most; what is left waits for the next look."""
COUNT_INTERVAL = 5.0
"""Seconds between counts of what waits (the /metrics gauges)."""
MAX_CONNECTION_EVENTS = 10_000
"""connection.* events held in memory until the next look writes them; beyond, they are dropped and counted."""
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Outcome = Callable[[OutboxTables], object]
"""A write the next look makes: what a delivery came to, or an event's details."""


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """The `--webhook-*` settings the sender needs."""

    recording: Recording
    key: bytes
    quiet: float
    max_wait: float
    timeout: float
    retry_for: float

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookOptions | None:
        """None without `--webhook`; `ConfigError` for a webhook without a secret."""
        key = settings.webhook_key()
        events = recording(settings)
        if events is None or key is None:
            return None
        return cls(
            events,
            key,
            settings.webhook_quiet,
            settings.webhook_max_wait,
            settings.webhook_timeout,
            settings.webhook_retry_for,
        )

    @property
    def targets(self) -> tuple[str, ...]:
        return self.recording.targets


class Webhooks:
    """The sender of one server process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        options: WebhookOptions,
        describe: Callable[[str], Awaitable[dict[str, Any]]],
        holder: str | None = None,
    ) -> None:
        """`describe(name)`: a document.changed's details (`collab.webhooks.describe`); `holder`: this process's
        name in the lease, unique among the processes on the database (default: host, pid and a random part)."""
        self.store = store
        self.options = options
        self.describe = describe
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lease_until = 0.0
        """Unix time the lease this process holds runs out (0: it holds none)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._wake = asyncio.Event()
        self._count_at = 0.0
        self._in_flight: dict[str, dict[str, asyncio.Task[None]]] = {target: {} for target in options.targets}
        """Per URL, the delivery under way per name (a rename's under both of its names)."""
        self._next: dict[str, deque[Delivery]] = {target: deque() for target in options.targets}
        """Per URL, what the last look found may go, not started yet: each is still the first of its names until
        it is sent (later events have later ids), so one starts whenever a delivery ends, until the next look."""
        self._outcomes: list[tuple[tuple[int, str] | None, Outcome]] = []
        """Writes for the next look, each with the (event, URL) whose delivery it settles (None: a description)."""
        self._settled: set[tuple[int, str]] = set()
        """Deliveries done whose outcome is not written yet: not to be sent again meanwhile."""
        self._unreachable: dict[str, str] = {}
        """URLs whose last attempt got no answer at all, and why: tried one delivery at a time until one succeeds."""
        self._recovered_at: dict[str, float] = {}
        """Per URL, when it answered again after being unreachable: what failed before is due at once."""
        self._connections: deque[tuple[str, str, float, dict[str, Any], str]] = deque()
        """connection.* events not written yet: type, name, time, details, uid (one written twice stays one)."""
        self._outbox_failing = False
        self.deliveries = Counter(
            "collab_webhook_deliveries_total",
            "Webhook delivery attempts by result: delivered, failed (to be retried), gave_up",
            ("result",),
        )
        for result in ("delivered", "failed", "gave_up"):
            self.deliveries.inc(result, amount=0)
        self.delivery_seconds = Histogram(
            "collab_webhook_delivery_seconds", "Time each webhook delivery attempt took", DELIVERY_BUCKETS
        )
        self.dropped = Counter(
            "collab_webhook_dropped_events_total", "connection.* events dropped: more were waiting than kept"
        )
        self.dropped.inc(amount=0)
        self._pending = 0
        self._failed = 0
        self._oldest: float | None = None
        self._unknown = 0

    @property
    def holding(self) -> bool:
        """Whether this process is the one sending (and may start deliveries now)."""
        return time.time() < self._lease_until - LEASE_RENEWAL

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._lease_forever(), name="collab-webhooks-lease"),
            asyncio.create_task(self._run_forever(), name="collab-webhooks"),
        ]

    async def stop(self) -> None:
        """Stop sending: deliveries under way are cancelled (sent again later), what was settled is written, the
        lease is given up. A database that fails now is logged: what was not written is sent again."""
        if not self._tasks:
            return
        self._stopping = True  # a delivery cancelled below starts no other
        deliveries = {task for by_name in self._in_flight.values() for task in by_name.values()}
        for task in [*self._tasks, *deliveries]:
            task.cancel()
        await asyncio.gather(*self._tasks, *deliveries, return_exceptions=True)
        self._tasks = []
        outcomes, connections = self._take_writes()
        holding = self._lease_until > 0

        def last_writes(outbox: OutboxTables) -> None:
            self._write(outbox, outcomes, connections)
            if holding:
                outbox.give_up_lease(self.holder)

        try:
            await self.store.outbox(last_writes)
        except StorageError as error:
            logger.warning(
                "webhooks: could not write what the last deliveries came to (they will be sent again): %s", error
            )

    def connection_event(self, type: str, name: str, details: dict[str, Any]) -> None:
        """Queue a connection.opened/closed event (if asked for), written to the outbox at the next look."""
        if type not in self.options.recording.types:
            return
        if len(self._connections) >= MAX_CONNECTION_EVENTS:
            self.dropped.inc()
            return
        self._connections.append((type, name, time.time(), details, str(uuid.uuid4())))

    def metrics(self) -> list[Metric]:
        return [
            self.deliveries,
            self.delivery_seconds,
            Gauge("collab_webhook_pending", "Webhook deliveries waiting to be sent or retried", lambda: self._pending),
            Gauge(
                "collab_webhook_failed",
                "Webhook deliveries given up on, kept for collab webhooks",
                lambda: self._failed,
            ),
            Gauge(
                "collab_webhook_oldest_pending_seconds",
                "Age of the oldest event waiting for a webhook (0: none)",
                lambda: 0 if self._oldest is None else max(0.0, time.time() - self._oldest),
            ),
            Gauge("collab_webhook_sender", "1 if this process is the one sending webhooks", lambda: int(self.holding)),
            self.dropped,
        ]

    # The lease.

    async def _lease_forever(self) -> None:
        while True:
            now = time.time()
            was_holding = self._lease_until > 0
            try:
                held = await self.store.outbox(
                    partial(OutboxTables.take_lease, holder=self.holder, now=now, until=now + LEASE)
                )
            except StorageError as error:
                logger.warning("webhooks: cannot renew the lease (this process stops sending meanwhile): %s", error)
            else:
                self._lease_until = now + LEASE if held else 0.0
                if held != was_holding:
                    logger.info("webhooks: %s", "this process sends" if held else "another process sends")
                    self._wake.set()
            if not self.holding:
                self._cancel_deliveries()
            await asyncio.sleep(LEASE_RENEWAL)

    # The looks.

    async def _run_forever(self) -> None:
        while True:
            spent = 0.0
            try:
                spent = await self._look()
                if self._outbox_failing:
                    logger.warning("webhook outbox readable again; sending")
                    self._outbox_failing = False
            except StorageError as error:
                if not self._outbox_failing:
                    logger.error("webhook outbox cannot be read, retrying: %s", error)
                    self._outbox_failing = True
            except Exception:
                logger.exception("webhook sender failed a look at the outbox; trying again")
            if not self.holding:
                self._cancel_deliveries()  # another process may take the lease: none of ours may still run then
            gap = max(MIN_GAP, 10 * spent)
            await asyncio.sleep(gap)
            if not self._wake.is_set() and gap < POLL_INTERVAL:
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL - gap)
                except TimeoutError:
                    pass
            self._wake.clear()

    def _cancel_deliveries(self) -> None:
        """Cancel the deliveries under way (sent again by whoever sends next: at least once)."""
        for waiting in self._next.values():
            waiting.clear()
        for task in {task for by_name in self._in_flight.values() for task in by_name.values()}:
            task.cancel()

    async def _look(self) -> float:
        """One look: write what happened and seal in one transaction on the store's thread; read what may go next
        on the outbox's own connection; start deliveries; describe.

        Returns the seconds the transaction took on the store's thread (from its queueing to its end).
        """
        now = time.time()
        holding = self.holding
        for waiting in self._next.values():  # what the last look found may be sent already: this look says anew
            waiting.clear()
        outcomes, connections = self._take_writes()
        started = time.perf_counter()
        try:
            undescribed = await self.store.outbox(
                lambda outbox: self._write_and_seal(outbox, now, holding, outcomes, connections)
            )
        except BaseException:
            self._outcomes[:0] = outcomes  # written by the next look (writing one twice changes nothing)
            self._connections.extendleft(reversed(connections))
            raise
        spent = time.perf_counter() - started
        self._settled.difference_update(key for key, _ in outcomes if key is not None)
        count = now >= self._count_at
        if count:
            self._count_at = now + COUNT_INTERVAL
        if holding or count:
            queued, counts = await self.store.read_outbox(lambda outbox: self._read(outbox, now, holding, count))
            if counts is not None:
                self._counted(counts)
            if holding and self.holding:  # no await since the read: what it found may still go
                for target, heads in queued.items():
                    self._next[target] = deque(heads)
                    self._send(target)
        if undescribed:
            await self._describe_all(undescribed)
        return spent

    def _take_writes(self) -> tuple[list[tuple[tuple[int, str] | None, Outcome]], list[Any]]:
        outcomes, self._outcomes = self._outcomes, []
        connections = list(self._connections)
        self._connections.clear()
        return outcomes, connections

    def _write(
        self,
        outbox: OutboxTables,
        outcomes: list[tuple[tuple[int, str] | None, Outcome]],
        connections: list[tuple[str, str, float, dict[str, Any], str]],
    ) -> None:
        for _, outcome in outcomes:
            outcome(outbox)
        for type, name, at, details, uid in connections:
            outbox.add(type, name, at, details, self.options.recording, uid)

    def _write_and_seal(
        self,
        outbox: OutboxTables,
        now: float,
        holding: bool,
        outcomes: list[tuple[tuple[int, str] | None, Outcome]],
        connections: list[tuple[str, str, float, dict[str, Any], str]],
    ) -> list[tuple[int, str]]:
        """The look's transaction, on the store's thread: what is to describe, if this process sends."""
        self._write(outbox, outcomes, connections)
        if not holding:
            return []
        options = self.options
        outbox.seal_due(now - options.quiet, now - options.max_wait, options.recording)
        return outbox.undescribed(BATCH)

    def _read(
        self, outbox: OutboxTables, now: float, holding: bool, count: bool
    ) -> tuple[dict[str, list[Delivery]], tuple[int, int, float | None, int] | None]:
        """The look's read, on the outbox's own connection: what may go per URL, and the counts when due."""
        counts = outbox.counts(self.options.targets) if count else None
        if not holding:
            return {}, counts
        queued = {
            target: outbox.queued(target, now, self._recovered_at.get(target, 0.0), BATCH)
            for target in self.options.targets
        }
        return queued, counts

    def _counted(self, counts: tuple[int, int, float | None, int]) -> None:
        self._pending, self._failed, self._oldest, unknown = counts
        if unknown and unknown != self._unknown:
            logger.warning(
                "%d webhook deliveries wait for URLs no longer configured: collab webhooks lists them, --forget drops"
                " them",
                unknown,
            )
        self._unknown = unknown

    async def _describe_all(self, undescribed: list[tuple[int, str]]) -> None:
        """Describe sealed events, `DESCRIBING` at a time, for `DESCRIBE_TIMEOUT` at most; their details are
        written by the next look (at once)."""
        slots = asyncio.Semaphore(DESCRIBING)

        async def one(event_id: int, name: str) -> None:
            async with slots:
                details = await self._details(name)
            if details is not None:
                self._outcomes.append((None, lambda outbox: outbox.describe(event_id, details)))

        try:
            async with asyncio.timeout(DESCRIBE_TIMEOUT):
                await asyncio.gather(*(one(event_id, name) for event_id, name in undescribed))
        except TimeoutError:
            pass  # the rest waits for the next look
        self._wake.set()

    async def _details(self, name: str) -> dict[str, Any] | None:
        """The details of a document.changed of `name`; None if they cannot be known now (try again later)."""
        try:
            return await self.describe(name)
        except (StorageError, TimeoutError) as error:
            if not isinstance(error, StorageError) or not self._outbox_failing:
                logger.warning("webhooks: cannot describe document %r now, trying again: %s", name, error or "timeout")
            return None
        except CollabError as error:  # a document that cannot be read (a corrupt row): said, and the rest goes on
            logger.error("webhooks: cannot describe document %r: %s", name, error)
            return {"state_vector": None, "error": str(error)}

    # Deliveries.

    def _busy(self, target: str) -> int:
        return len(set(self._in_flight[target].values()))

    def _room_for(self, target: str) -> int:
        return 1 if target in self._unreachable else CONCURRENCY

    def _send(self, target: str) -> None:
        """Start what the last look let go, within the URL's room: one delivery per name at a time."""
        if self._stopping or not self.holding:
            return
        in_flight, queued = self._in_flight[target], self._next[target]
        room = self._room_for(target) - self._busy(target)
        while queued and room > 0:
            delivery = queued.popleft()
            if (delivery.event_id, target) in self._settled or any(key in in_flight for key in delivery.keys):
                continue
            task = asyncio.create_task(self._deliver(target, delivery), name=f"webhook {delivery.uid}")
            for key in delivery.keys:
                in_flight[key] = task
            room -= 1

    async def _deliver(self, target: str, delivery: Delivery) -> None:
        body = body_of(delivery)
        stamp = int(time.time())
        headers = {
            "X-Collab-Event": delivery.type,
            "X-Collab-Delivery": delivery.uid,
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(self.options.key, stamp, body),
        }
        started = time.perf_counter()
        try:
            await post(target, body, headers, timeout=self.options.timeout)
        except DeliveryError as error:
            self._failed_to(target, delivery, error)
        except Exception as error:  # a bug here must not resend at once, forever: a failed attempt, backed off
            logger.exception("webhooks: delivering to %s failed unexpectedly", shown(target))
            self._failed_to(target, delivery, DeliveryError(f"{type(error).__name__} (the server logged it)", 0))
        else:
            self._delivered(target, delivery)
        finally:
            self.delivery_seconds.observe(time.perf_counter() - started)
            in_flight = self._in_flight[target]
            for key in delivery.keys:
                in_flight.pop(key, None)
            self._send(target)
            self._wake.set()

    def _settle(self, target: str, delivery: Delivery, outcome: Outcome) -> None:
        key = (delivery.event_id, target)
        self._settled.add(key)
        self._outcomes.append((key, outcome))

    def _delivered(self, target: str, delivery: Delivery) -> None:
        event_id = delivery.event_id
        self._settle(target, delivery, lambda outbox: outbox.delivered(event_id, target))
        self.deliveries.inc("delivered")
        if self._unreachable.pop(target, None) is not None:
            self._recovered_at[target] = time.time()
            logger.warning("webhook %s answers again; sending what waits", shown(target))

    def _failed_to(self, target: str, delivery: Delivery, error: DeliveryError) -> None:
        attempts = delivery.attempts + 1
        now = time.time()
        give_up = now - delivery.since >= self.options.retry_for
        next_at = now + retry_delay(attempts)
        event_id, message = delivery.event_id, "".join(c if c.isprintable() else "?" for c in str(error))
        unreachable = error.status is None
        self._settle(
            target,
            delivery,
            lambda outbox: outbox.retry(
                event_id, target, attempts, now if unreachable else None, next_at, message, give_up=give_up
            ),
        )
        what = f"{delivery.type} of {delivery.name!r} (event {delivery.uid})"
        if give_up:
            self.deliveries.inc("gave_up")
            logger.error("webhook %s: gave up %s after %d attempts: %s", shown(target), what, attempts, message)
            return
        self.deliveries.inc("failed")
        if error.status is None:
            if target not in self._unreachable:
                logger.warning(
                    "webhook %s unreachable (%s); retrying with backoff, one delivery at a time", shown(target), message
                )
            self._unreachable[target] = message
        elif attempts == 1:
            logger.warning("webhook %s refused %s: %s; retrying with backoff", shown(target), what, message)
