"""One document being edited: its pycrdt Doc, the peers connected to it, their presence.

A room knows no sockets and no SQL. Each peer is something it can hand a frame
to (`Peer.send`, which must not block); the store is the `Store` interface.

The hot path is `receive`: every update of a frame is decoded first (so nothing
invalid is relayed, stored or merged), then relayed as the exact bytes that
were validated, queued for the store, and queued for the server's Doc. The Doc
is brought up to date in batches (`flush`), because pycrdt integrates one
merged batch of a typist's keystrokes much faster than the keystrokes one by
one; whoever needs the Doc current (a sync step 1, a snapshot) flushes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from pycrdt import Doc, get_state, get_update, merge_updates

from .errors import CorruptDocumentError, InvalidUpdateError
from .presence import Presence
from .protocol import (
    Auth,
    Awareness,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    awareness_message,
)
from .store import Store, StoredRecord

__all__ = ["Peer", "Room", "check_update"]

logger = logging.getLogger("collab.room")

# A v1 update with no structs and no deletions: what a client with nothing new sends in step 2.
EMPTY_UPDATE = b"\x00\x00"
# The state vector of an empty document: what a newcomer with nothing sends in step 1.
EMPTY_STATE_VECTOR = b"\x00"


class Peer(Protocol):
    """What a room needs of a connection."""

    @property
    def id(self) -> str: ...

    def send(self, frame: bytes) -> None:
        """Queue one frame for this peer without blocking; drop it if the peer is gone."""
        ...


def check_update(update: bytes) -> None:
    """Decode a Yjs v1 update completely, without applying it; raise `InvalidUpdateError` if it does not."""
    try:
        get_state(update)
    except ValueError as error:
        raise InvalidUpdateError(f"invalid Yjs update: {error}") from error


class Room:
    """A document and the peers editing it."""

    def __init__(
        self,
        name: str,
        store: Store,
        *,
        doc: Doc | None = None,
        log_length: int = 0,
        compact_after: int = 1000,
        schedule: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """`schedule(callback)` runs a flush later (e.g. `loop.call_soon`); without it, flushes are immediate."""
        self.name = name
        self._doc: Doc = doc if doc is not None else Doc()
        self._stored: bytes | None = None
        """The document as loaded from the store, checked but not yet applied to `_doc` (see `from_records`)."""
        self._stored_state = b""
        self.peers: dict[Peer, None] = {}
        self.presence = Presence()
        self.log_length = log_length
        """Updates appended to the store since its last snapshot."""
        self.compact_after = compact_after
        self._store = store
        self._schedule = schedule
        self._pending: list[bytes] = []

    @classmethod
    def from_records(cls, name: str, records: list[StoredRecord], store: Store, **options: object) -> Room:
        """Rebuild a room from what the store holds; raise `CorruptDocumentError` naming a bad record.

        Every record is decoded here, in full, so a document that cannot be read is refused before anyone
        is served; but the Doc is built from them only when first needed (`doc`). Until then a newcomer
        is answered from the stored bytes (`state_vector`, `diff`): building a large Doc costs several
        times what decoding it does (4-6 ms against ~1 ms for a 100,000-keystroke document), and a
        newcomer to a room just loaded from disk need not wait for it.
        """
        states = []
        for record in records:
            try:
                states.append(get_state(record.data))
            except ValueError as error:
                raise CorruptDocumentError(
                    f"document {name!r}: stored {record.kind} #{record.id} does not decode ({error})"
                ) from error
        log_length = sum(record.kind == "update" for record in records)
        room = cls(name, store, log_length=log_length, **options)  # type: ignore[arg-type]
        if len(records) == 1:
            room._stored, room._stored_state = records[0].data, states[0]
        elif records:
            room._stored = merge_updates(*(record.data for record in records))
            room._stored_state = get_state(room._stored)
        return room

    @property
    def doc(self) -> Doc:
        """The server's copy of the document (built from what was loaded on first use)."""
        if self._stored is not None:
            stored, self._stored = self._stored, None
            self._doc.apply_update(stored)
        return self._doc

    # Membership.

    def join(self, peer: Peer) -> None:
        """Add a peer and greet it: our state vector, then everyone's presence."""
        self.peers[peer] = None
        peer.send(SyncStep1(self.state_vector()).encode())
        present = self.presence.current()
        if present:
            peer.send(awareness_message(present))

    def leave(self, peer: Peer) -> None:
        """Remove a peer and tell the others its cursors are gone."""
        self.peers.pop(peer, None)
        removals = self.presence.remove_owner(peer)
        if removals and self.peers:
            self._broadcast(awareness_message(removals))

    # Messages.

    def receive(self, peer: Peer, messages: list[Message]) -> None:
        """Handle the messages of one frame from `peer`, all validated before any takes effect."""
        for message in messages:
            if type(message) is Update or type(message) is SyncStep2:
                check_update(message.update)
        for message in messages:
            if type(message) is Update:
                self._accept_update(peer, message.update, message.raw)
            elif type(message) is SyncStep2:
                self._accept_update(peer, message.update, b"")
            elif type(message) is SyncStep1:
                peer.send(SyncStep2(self.diff(message.state_vector)).encode())
            elif type(message) is Awareness:
                self._accept_awareness(peer, message)
            elif type(message) is QueryAwareness:
                peer.send(awareness_message(self.presence.current()))
            elif type(message) is Auth:
                logger.debug("ignored auth message from client %s in %r", peer.id, self.name)

    def _accept_update(self, sender: Peer, update: bytes, frame: bytes) -> None:
        if update == EMPTY_UPDATE:
            return
        frame = frame or Update(update).encode()
        for peer in self.peers:
            if peer is not sender:
                peer.send(frame)
        self.log_length += 1
        self._pending.append(update)
        if len(self._pending) == 1:
            if self._schedule is None:
                self.flush()
            else:
                self._schedule(self.flush)

    def _accept_awareness(self, sender: Peer, message: Awareness) -> None:
        accepted = self.presence.apply(sender, message.entries)
        if not accepted:
            return
        # Echo to the sender too: a lone stock client counts that echo as a sign of life.
        self._broadcast(message.encode() if len(accepted) == len(message.entries) else awareness_message(accepted))

    def _broadcast(self, frame: bytes) -> None:
        for peer in self.peers:
            peer.send(frame)

    # The server's copy of the document.

    def flush(self) -> None:
        """Store and apply queued updates in one batch; compact the log when it is long.

        The store gets the batch merged, as the Doc does: one write queued per batch rather than one per
        update, and less for the store's thread to merge again (scripts/bench saturate: the per-update
        queue entries and that merging took about a third of the server's CPU). A batch is what one turn
        of the event loop accepted, so an update is queued for the store at most one turn after it came.
        """
        pending = self._pending
        if pending:
            self._pending = []
            batch = pending[0] if len(pending) == 1 else merge_updates(*pending)
            self._store.append(self.name, batch, len(pending))
            self.doc.apply_update(batch)
        if self.log_length >= self.compact_after:
            self.compact()

    def compact(self) -> None:
        """Replace the store's log for this document with a snapshot, if anything was logged."""
        if self._pending:
            self.flush()
        if self.log_length:
            self._store.compact(self.name, self.doc.get_update())
            self.log_length = 0

    def state_vector(self) -> bytes:
        if self._stored is not None and not self._pending:
            return self._stored_state
        self.flush()
        return self.doc.get_state()

    def diff(self, state_vector: bytes) -> bytes:
        """What a peer with `state_vector` is missing."""
        try:
            if self._stored is not None and not self._pending:
                return self._stored if state_vector == EMPTY_STATE_VECTOR else get_update(self._stored, state_vector)
            self.flush()
            return self.doc.get_update(state_vector)
        except ValueError as error:
            raise InvalidUpdateError(f"invalid state vector: {error}") from error

    def __repr__(self) -> str:
        return f"<Room {self.name!r} peers={len(self.peers)} log={self.log_length}>"
