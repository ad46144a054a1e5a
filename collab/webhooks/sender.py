"""The webhook sender: a task that seals, describes and delivers the outbox's events, retrying until they land.

Every server runs one, but only the one holding the outbox's lease sends (the
others take over within `LEASE` of it stopping): each document's events then
go out one at a time, in the order they were committed, to each URL. Per URL,
up to `CONCURRENCY` documents are sent at once, so one busy document never
holds up another. A failed delivery waits `events.retry_delay` (doubling to a
minute) and is tried again until `--webhook-retry-for` has passed since its
event, then is kept as failed for `collab webhooks`. While a URL fails, only
one of its deliveries is tried at a time; the first that succeeds makes all
the others due at once, so a receiver back from an outage gets its backlog in
order and without waiting out each backoff.

The sender's database work is queued on the store's thread with the commits
(`Store.outbox`), and its HTTP requests run on their own tasks: nothing here
is on the relay's path. Cancelled mid-request (a shutdown), a delivery stays
in the outbox and is sent again: at least once, never at most once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import CollabError, DeliveryError, StorageError
from ..metrics import Counter, Gauge, Histogram, Metric
from ..store import Store
from ..store.outbox import Delivery, OutboxTables, Recording
from .events import body_of, retry_delay
from .http import post
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["WebhookOptions", "Webhooks", "shown"]

logger = logging.getLogger("collab.webhooks")

POLL_INTERVAL = 0.5
"""Seconds between looks at the outbox when nothing wakes the sender sooner (a delivery ending does)."""
LEASE = 15.0
"""Seconds the sending process holds the lease without renewing it (renewed every third of that)."""
CONCURRENCY = 8
"""Deliveries in flight at once per URL (each to a different document)."""
BATCH = 200
"""Deliveries read per URL and per look; undescribed events described per look."""
COUNT_INTERVAL = 5.0
"""Seconds between counts of what waits (the /metrics gauges)."""
MAX_CONNECTION_EVENTS = 10_000
"""connection.* events held in memory until the next look writes them; beyond, they are dropped and counted."""
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """The `--webhook-*` settings the sender needs."""

    targets: tuple[str, ...]
    key: bytes
    types: frozenset[str]
    quiet: float
    max_wait: float
    timeout: float
    retry_for: float

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookOptions | None:
        """None without `--webhook`; `ConfigError` for a webhook without a secret."""
        key = settings.webhook_key()
        if not settings.webhooks or key is None:
            return None
        return cls(
            settings.webhooks,
            key,
            frozenset(settings.webhook_events),
            settings.webhook_quiet,
            settings.webhook_max_wait,
            settings.webhook_timeout,
            settings.webhook_retry_for,
        )

    @property
    def recording(self) -> Recording:
        return Recording(self.targets, self.types)


@dataclass(slots=True)
class _Look:
    """What one look at the outbox found."""

    holding: bool
    undescribed: list[tuple[int, str]] = field(default_factory=list)
    queued: dict[str, list[Delivery]] = field(default_factory=dict)
    counts: tuple[int, int, float | None, int] | None = None


def shown(url: str) -> str:
    """`url` fit for a log line: without a password in it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}").geturl()


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
        self.holding = False
        """Whether this process is the one sending."""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._renew_at = 0.0
        self._count_at = 0.0
        self._in_flight: dict[str, dict[str, asyncio.Task[None]]] = {target: {} for target in options.targets}
        """Per URL, the delivery under way per document name."""
        self._failing: dict[str, str] = {}
        """URLs whose last delivery failed, and why: tried one delivery at a time until one succeeds."""
        self._connections: deque[tuple[str, str, float, dict[str, Any]]] = deque()
        self._outbox_failing = False
        self.deliveries = Counter(
            "collab_webhook_deliveries_total",
            "Webhook deliveries by result: delivered, failed (to be retried), gave_up",
            ("result",),
        )
        for result in ("delivered", "failed", "gave_up"):
            self.deliveries.inc(result, amount=0)
        self.delivery_seconds = Histogram(
            "collab_webhook_delivery_seconds", "Time webhooks took to answer deliveries", DELIVERY_BUCKETS
        )
        self.dropped = Counter(
            "collab_webhook_dropped_events_total", "connection.* events dropped: more were waiting than kept"
        )
        self.dropped.inc(amount=0)
        self._pending = 0
        self._failed = 0
        self._oldest: float | None = None
        self._unknown = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="collab-webhooks")

    async def stop(self) -> None:
        """Stop sending: deliveries under way are cancelled (sent again later); the lease is given up."""
        if self._task is None:
            return
        self._task.cancel()
        tasks = [task for by_name in self._in_flight.values() for task in by_name.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(self._task, *tasks, return_exceptions=True)
        self._task = None
        if self._connections:
            await self._write_connection_events()
        if self.holding:
            try:
                await self.store.outbox(lambda outbox: outbox.give_up_lease(self.holder))
            except StorageError as error:
                logger.warning(
                    "could not give up the webhook lease (another process takes over in %gs): %s", LEASE, error
                )

    def connection_event(self, type: str, name: str, details: dict[str, Any]) -> None:
        """Queue a connection.opened/closed event (if asked for), written to the outbox at the next look."""
        if type not in self.options.types:
            return
        if len(self._connections) >= MAX_CONNECTION_EVENTS:
            self.dropped.inc()
            return
        self._connections.append((type, name, time.time(), details))

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

    # The loop.

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._look()
                if self._outbox_failing:
                    logger.warning("webhook outbox readable again; sending")
                    self._outbox_failing = False
            except StorageError as error:
                if not self._outbox_failing:
                    logger.error("webhook outbox cannot be read, retrying: %s", error)
                    self._outbox_failing = True
            except Exception:
                logger.exception("webhook sender failed a look at the outbox; trying again")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            except TimeoutError:
                pass

    async def _look(self) -> None:
        if self._connections:
            await self._write_connection_events()
        now = time.time()
        look = await self.store.outbox(lambda outbox: self._read(outbox, now))
        if look.counts is not None:
            self._pending, self._failed, self._oldest, unknown = look.counts
            if unknown and unknown != self._unknown:
                logger.warning(
                    "%d webhook deliveries wait for URLs no longer configured: collab webhooks lists them", unknown
                )
            self._unknown = unknown
        if not look.holding:
            return
        for event_id, name in look.undescribed:
            details = await self._details(name)
            await self.store.outbox(partial(OutboxTables.describe, event_id=event_id, details=details))
        if look.undescribed:
            self._wake.set()  # their deliveries are due now
        for target, queued in look.queued.items():
            self._send(target, queued, now)

    def _read(self, outbox: OutboxTables, now: float) -> _Look:
        """One transaction: renew the lease when due, seal what the debounce lets go, read what to send."""
        if now >= self._renew_at:
            holding = outbox.take_lease(self.holder, now, now + LEASE)
            if holding != self.holding:
                logger.info("webhooks: %s", "this process sends" if holding else "another process sends")
            self.holding = holding
            self._renew_at = now + LEASE / 3
        look = _Look(self.holding)
        if now >= self._count_at:
            look.counts = outbox.counts(self.options.targets)
            self._count_at = now + COUNT_INTERVAL
        if not self.holding:
            return look
        options = self.options
        outbox.seal_due(now - options.quiet, now - options.max_wait, options.recording)
        look.undescribed = outbox.undescribed(BATCH)
        for target in options.targets:
            if len(self._in_flight[target]) < self._room_for(target):
                look.queued[target] = outbox.queued(target, BATCH)
        return look

    async def _details(self, name: str) -> dict[str, Any]:
        try:
            return await self.describe(name)
        except StorageError:
            raise
        except (CollabError, TimeoutError) as error:  # a document that cannot be read: say so, send the rest
            logger.error("webhooks: cannot describe document %r: %s", name, error)
            return {"state_vector": None, "error": str(error)}

    def _room_for(self, target: str) -> int:
        return 1 if target in self._failing else CONCURRENCY

    def _send(self, target: str, queued: list[Delivery], now: float) -> None:
        """Start the due ones of `queued` (each document's first delivery): one per document at a time."""
        in_flight = self._in_flight[target]
        for delivery in queued:
            if len(in_flight) >= self._room_for(target):
                return
            if delivery.name in in_flight or delivery.details is None or delivery.next_at > now:
                continue
            in_flight[delivery.name] = asyncio.create_task(
                self._deliver(target, delivery), name=f"webhook {delivery.uid}"
            )

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
            try:
                await post(target, body, headers, timeout=self.options.timeout)
            except DeliveryError as error:
                await self._failed_to(target, delivery, str(error))
                return
            self.delivery_seconds.observe(time.perf_counter() - started)
            recovered = self._failing.pop(target, None)
            await self.store.outbox(lambda outbox: self._delivered(outbox, target, delivery, recovered is not None))
            self.deliveries.inc("delivered")
            if recovered is not None:
                logger.warning("webhook %s answers again; sending what waits", shown(target))
        except StorageError as error:  # sent (or not), but not recorded: it will be sent again
            logger.error("webhooks: could not record a delivery to %s, it will be sent again: %s", shown(target), error)
        finally:
            self._in_flight[target].pop(delivery.name, None)
            self._wake.set()

    def _delivered(self, outbox: OutboxTables, target: str, delivery: Delivery, recovered: bool) -> None:
        outbox.delivered(delivery.event_id, target)
        if recovered:
            outbox.due_now(target)

    async def _failed_to(self, target: str, delivery: Delivery, error: str) -> None:
        attempts = delivery.attempts + 1
        now = time.time()
        give_up = now - delivery.created_at >= self.options.retry_for
        delay = retry_delay(attempts)
        await self.store.outbox(
            lambda outbox: outbox.retry(delivery.event_id, target, attempts, now + delay, error, give_up=give_up)
        )
        if give_up:
            self.deliveries.inc("gave_up")
            logger.error(
                "webhook %s: gave up %s of %r (event %s) after %d attempts: %s",
                shown(target),
                delivery.type,
                delivery.name,
                delivery.uid,
                attempts,
                error,
            )
            return
        self.deliveries.inc("failed")
        if target not in self._failing:
            logger.warning("webhook %s fails (%s); retrying with backoff", shown(target), error)
        self._failing[target] = error

    async def _write_connection_events(self) -> None:
        events = list(self._connections)
        self._connections.clear()
        recording = self.options.recording

        def write(outbox: OutboxTables) -> None:
            for type, name, at, details in events:
                outbox.add(type, name, at, details, recording)

        try:
            await self.store.outbox(write)
        except StorageError:
            self._connections.extendleft(reversed(events))  # kept for the next look
            raise
