"""What `/metrics` reports about a running server: counters it keeps, gauges it reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..metrics import Counter, Gauge, Histogram, Metric
from ..sync.protocol import Auth, Awareness, Message, QueryAwareness, SyncStep1, SyncStep2, Update

if TYPE_CHECKING:
    from .app import CollabServer

__all__ = ["ServerMetrics"]

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
    """collab's metrics; the hot path only bumps counters."""

    def __init__(self, server: CollabServer) -> None:
        self._server = server
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
        server, store = self._server, self._server.store
        persisted = Counter("collab_updates_persisted_total", "Updates committed to the store")
        persisted.inc(amount=store.committed_updates)
        compactions = Counter("collab_compactions_total", "Document logs compacted into snapshots")
        compactions.inc(amount=store.committed_compactions)
        commit_seconds: Histogram = store.commit_seconds
        return [
            Gauge("collab_connections", "Open WebSocket connections", lambda: len(server.peers)),
            Gauge("collab_rooms_loaded", "Rooms (documents) in memory", lambda: len(server.rooms)),
            self.messages_received,
            self.bytes_received,
            self.messages_sent,
            self.bytes_sent,
            persisted,
            compactions,
            commit_seconds,
            Gauge("collab_store_pending_writes", "Writes queued but not yet committed", lambda: store.pending),
            Gauge("collab_store_failing", "1 while store commits fail (they are retried)", lambda: int(store.failing)),
            self.rejected,
            self.auth_failures,
        ]
