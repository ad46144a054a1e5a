"""What `/metrics` reports about a running server: counters it keeps, gauges it reads.

It is handed what it reads (the store, and the connection and room counts as
callables) rather than the server, so it imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cluster import Relay
from ..metrics import Counter, Gauge, Histogram, Metric
from ..store import Commit, Store
from ..sync.protocol import Auth, Awareness, Message, QueryAwareness, SyncStep1, SyncStep2, Update

__all__ = ["COMMIT_SECONDS_BUCKETS", "ServerMetrics"]

COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

RECEIVED_KINDS: dict[type, str] = {
    SyncStep1: "sync_step1",
    SyncStep2: "sync_step2",
    Update: "update",
    Awareness: "awareness",
    QueryAwareness: "query_awareness",
    Auth: "auth",
}
# An outgoing frame holds one message: its first byte (and the second, for sync) says which.
SENT_KINDS: dict[int, str] = {0: "sync_step1", 1: "sync_step2", 2: "update"}
SENT_TOP_KINDS: dict[int, str] = {1: "awareness", 2: "auth", 3: "query_awareness"}


class ServerMetrics:
    """collab's metrics; the hot path only bumps counters.

    It counts the store's commits through `store.on_commit`, which it sets: one `ServerMetrics` per store.
    """

    def __init__(
        self, store: Store, connections: Callable[[], int], rooms: Callable[[], int], relay: Relay | None = None
    ) -> None:
        """`connections()` and `rooms()`: the gauges' current values, read at each scrape; `relay`'s own too."""
        self._store = store
        self._relay = relay
        self._connections = connections
        self._rooms = rooms
        by_type = ("type",)
        self.messages_received = Counter("collab_messages_received_total", "Messages received, by type", by_type)
        self.bytes_received = Counter("collab_received_bytes_total", "Bytes of messages received, by type", by_type)
        self.messages_sent = Counter("collab_messages_sent_total", "Messages sent, by type", by_type)
        self.bytes_sent = Counter("collab_sent_bytes_total", "Bytes of messages sent, by type", by_type)
        self.rejected = Counter(
            "collab_rejected_messages_total",
            "Messages, connections and awareness entries refused, by reason",
            ("reason",),
        )
        self.auth_failures = Counter("collab_auth_failures_total", "Refused tokens and origins, by reason", ("reason",))
        self.updates_persisted = Counter("collab_updates_persisted_total", "Updates committed to the store")
        self.compactions = Counter("collab_compactions_total", "Document logs compacted into snapshots")
        for unlabelled in (self.updates_persisted, self.compactions):
            unlabelled.inc(amount=0)  # a sample of 0 from the start, not none until the first commit
        self.commit_seconds = Histogram(
            "collab_store_commit_seconds", "Duration of group commits to the store", COMMIT_SECONDS_BUCKETS
        )
        store.on_commit = self.count_commit

    def count_commit(self, commit: Commit) -> None:
        self.updates_persisted.inc(amount=commit.updates)
        self.compactions.inc(amount=commit.compactions)
        self.commit_seconds.observe(commit.seconds)

    def count_received(self, messages: list[Message]) -> None:
        for message in messages:
            kind = RECEIVED_KINDS[type(message)]
            self.messages_received.inc(kind)
            self.bytes_received.inc(kind, amount=len(message.raw))

    def count_sent(self, frame: bytes) -> None:
        top = frame[0]
        kind = SENT_KINDS.get(frame[1], "sync") if top == 0 else SENT_TOP_KINDS.get(top, "unknown")
        self.messages_sent.inc(kind)
        self.bytes_sent.inc(kind, amount=len(frame))

    def all(self) -> list[Metric]:
        store = self._store
        return [
            Gauge("collab_connections", "Open WebSocket connections", self._connections),
            Gauge("collab_rooms_loaded", "Rooms (documents) in memory", self._rooms),
            self.messages_received,
            self.bytes_received,
            self.messages_sent,
            self.bytes_sent,
            self.updates_persisted,
            self.compactions,
            self.commit_seconds,
            Gauge("collab_store_pending_writes", "Writes queued but not yet committed", lambda: store.pending),
            Gauge("collab_store_failing", "1 while store commits fail (they are retried)", lambda: int(store.failing)),
            self.rejected,
            self.auth_failures,
            *(self._relay.metrics() if self._relay is not None else ()),
        ]
