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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pycrdt import Doc, get_state, get_update, merge_updates

from ..errors import CorruptDocumentError, DocumentTooLargeError, InvalidUpdateError
from ..logs import fields
from ..metrics import Counter
from ..store import Store, StoredRecord
from .journal import SAMPLE_EVERY, Journal, display_names
from .presence import Presence
from .protocol import (
    Auth,
    Awareness,
    AwarenessEntry,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    awareness_message,
    awareness_messages,
)
from .yupdate import EMPTY_STATE_VECTOR, EMPTY_UPDATE
from .yupdate import check_update as walk_update

if TYPE_CHECKING:
    from ..auth import Grant
    from ..cluster import Publisher

__all__ = ["EMPTY_STATE_VECTOR", "EMPTY_UPDATE", "Origin", "Peer", "Room", "check_records", "check_update"]

logger = logging.getLogger("collab.room")


class Peer(Protocol):
    """What a room needs of a connection."""

    @property
    def id(self) -> str: ...

    @property
    def grant(self) -> Grant | None:
        """What the connection's token allows (None without access control); its `subject` owns client ids."""
        ...

    def send(self, frame: bytes) -> None:
        """Queue one frame for this peer without blocking; drop it if the peer is gone."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start closing this peer's connection with `code` (its room ended: `Room.end`)."""
        ...


class Origin:
    """Another collab process, as the rooms of this one see it: it owns the presence of its own connections.

    One object per process and token `sub` (`subject`), so that `Presence` holds all of that process's
    clients of one person together, with the rules a connection of that person has here (an owner with a
    `sub` accepts no claims, the same `sub` takes over at once), and drops them when it stops beating
    (`Room.origin_gone`).
    """

    __slots__ = ("process", "subject")

    def __init__(self, process: str, subject: str | None = None) -> None:
        self.process = process
        self.subject = subject

    def __repr__(self) -> str:
        return f"<Origin {self.process} sub={self.subject!r}>"


REMOTE_CLIENT_IDS = 1_000_000
"""Client ids one other process may hold in a room: each of its connections is held to MAX_CLIENT_IDS there."""


def check_update(update: bytes) -> bool:
    """Decode a Yjs v1 update completely, without applying it; raise `InvalidUpdateError` if it does not.

    Returns True when only applying it to the document can tell whether it fits (an item names its
    parent by id; see `yupdate.check_update`).

    collab's own walk comes first (`yupdate.check_update`): it refuses, with the reason, what could crash
    or poison pycrdt (deep values, clocks past 32 bits, ...) and what yjs would read differently, so
    nothing reaches native code unchecked. `get_state` then decodes it as pycrdt will, so an update
    the walk accepts but yrs refuses is still refused here, not later in `flush`. One keystroke:
    0.26 -> 0.8 us (the walk's fast path), a 100,000-keystroke merged update 18 -> 100 ms.
    """
    names_parent = walk_update(update)
    try:
        get_state(update)
    except ValueError as error:
        raise InvalidUpdateError(f"invalid Yjs update: {error}") from error
    return names_parent


def check_records(name: str, records: list[StoredRecord]) -> list[bytes]:
    """Check stored rows before pycrdt reads them; return each one's state vector.

    Raises `CorruptDocumentError` naming the document and the row, so loading or exporting reports a
    row that would crash or poison pycrdt instead of running it (see `yupdate`, `strict=False`). Rows
    the store marks `checked` were walked before they were stored and are not walked again: the walk
    costs several times pycrdt's own decoding (a 100,000-keystroke document: ~7 ms against ~1 ms), and
    a room loaded from disk answers its first newcomer only after this.
    """
    states = []
    for record in records:
        try:
            if not record.checked:
                walk_update(record.data, strict=False)
            states.append(get_state(record.data))
        except (InvalidUpdateError, ValueError) as error:
            raise CorruptDocumentError(
                f"document {name!r}: stored {record.kind} #{record.id} does not decode ({error})"
            ) from error
    return states


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
        max_document_size: int = 0,
        schedule: Callable[[Callable[[], None]], object] | None = None,
        rejected: Counter | None = None,
        publisher: Publisher | None = None,
        journal: Journal | None = None,
    ) -> None:
        """`schedule(callback)` runs a flush later (e.g. `loop.call_soon`); without it, flushes are immediate.

        `max_document_size`: bytes an update may not grow the document beyond (0: no limit).
        `rejected`: where dropped awareness entries are counted, by reason (the server's metrics).
        `publisher`: where what this room accepts from its own peers goes for the other processes (`--relay`).
        `journal`: where the room says who was there while it was edited (see `collab.sync.journal`).
        """
        self.name = name
        self._doc: Doc = doc if doc is not None else Doc()
        self._stored: bytes | None = None
        """The document as loaded from the store, checked but not yet applied to `_doc` (see `from_records`)."""
        self._stored_state = b""
        self.peers: dict[Peer, None] = {}
        self.presence = Presence()
        self._rejected = rejected
        self.log_length = log_length
        """Updates appended to the store since its last snapshot."""
        self.compact_after = compact_after
        self._store = store
        self._schedule = schedule
        self._pending: list[bytes] = []
        self._relayed: list[bytes] = []
        """Updates from other processes, for the Doc only: their own process stores them."""
        self._publisher = publisher
        self.ended = False
        """Set by `end`: the room takes nothing more (its document was deleted or renamed)."""
        self.relayed_from: set[str] = set()
        """Processes whose updates this room holds but did not store: a snapshot (`compact`) folds them in."""
        self.max_document_size = max_document_size
        self.size = 0
        """The document's size in bytes, cheaply: as loaded or last compacted, plus every update accepted
        since. An upper bound of len(doc.get_update()) (updates overlap and delete), measured exactly
        again at compaction and before refusing an update for it (`_check_growth`)."""
        self._size_exact = True
        self._journal = journal
        self._next_sample = 0.0
        """Unix time from which edits sample who is there again (`_edited`)."""
        self._unsampled = False
        """Edits came since the last sample: a peer leaving is sampled first."""

    @classmethod
    def from_records(
        cls,
        name: str,
        records: list[StoredRecord],
        store: Store,
        *,
        compact_after: int = 1000,
        max_document_size: int = 0,
        schedule: Callable[[Callable[[], None]], object] | None = None,
        rejected: Counter | None = None,
        publisher: Publisher | None = None,
        journal: Journal | None = None,
    ) -> Room:
        """Rebuild a room from what the store holds; raise `CorruptDocumentError` naming a bad record.

        Every record is decoded here, in full, so a document that cannot be read is refused before anyone
        is served; but the Doc is built from them only when first needed (`doc`). Until then a newcomer
        is answered from the stored bytes (`state_vector`, `diff`): building a large Doc costs several
        times what decoding it does (4-6 ms against ~1 ms for a 100,000-keystroke document), and a
        newcomer to a room just loaded from disk need not wait for it.
        """
        states = check_records(name, records)
        log_length = sum(record.kind == "update" for record in records)
        room = cls(
            name,
            store,
            log_length=log_length,
            compact_after=compact_after,
            max_document_size=max_document_size,
            schedule=schedule,
            rejected=rejected,
            publisher=publisher,
            journal=journal,
        )
        if len(records) == 1:
            room._stored, room._stored_state = records[0].data, states[0]
        elif records:
            room._stored = merge_updates(*(record.data for record in records))
            room._stored_state = get_state(room._stored)
        room.size = len(room._stored) if room._stored is not None else 0
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
        """Greet a peer (our state vector, then everyone's presence), then add it: a greeting that fails leaves
        the room as it was."""
        greeting = [SyncStep1(self.state_vector()).encode(), *awareness_messages(self.presence.current())]
        self.peers[peer] = None
        for frame in greeting:
            peer.send(frame)

    def leave(self, peer: Peer, now: float | None = None) -> None:
        """Remove a peer and tell the others its cursors are gone (or handed to its reconnection).

        `now`: the caller's monotonic clock, the same one it gives `receive` (default: `time.monotonic()`).
        """
        if self._unsampled:
            self._sample(time.time())
        self.peers.pop(peer, None)
        changes = self.presence.remove_owner(peer, time.monotonic() if now is None else now)
        for frame in awareness_messages(changes):
            self._broadcast(frame)
        if not self.ended:  # an ended room's name may already be another document's
            self._publish_presence(changes, peer.grant.subject if peer.grant is not None else None)

    # Messages.

    def receive(self, peer: Peer, messages: list[Message], now: float | None = None) -> None:
        """Handle the messages of one frame from `peer`, all validated before any takes effect.

        `now`: the caller's monotonic clock, which presence keeps its times in (default: `time.monotonic()`).
        """
        growth = 0
        trial: set[int] = set()
        for index, message in enumerate(messages):
            if type(message) is Update or type(message) is SyncStep2:
                growth += len(message.update)
                if self.max_document_size and self.size + growth > self.max_document_size:
                    self._check_growth(growth)
                if check_update(message.update):
                    trial.add(index)
        for index, message in enumerate(messages):
            if type(message) is Update:
                self._accept_update(peer, message.update, message.raw, index in trial)
            elif type(message) is SyncStep2:
                self._accept_update(peer, message.update, b"", index in trial)
            elif type(message) is SyncStep1:
                peer.send(SyncStep2(self.diff(message.state_vector)).encode())
            elif type(message) is Awareness:
                self._accept_awareness(peer, message, time.monotonic() if now is None else now)
            elif type(message) is QueryAwareness:
                # Answered even when nobody is present: the asker waits for an answer.
                for frame in list(awareness_messages(self.presence.current())) or [awareness_message(())]:
                    peer.send(frame)
            elif type(message) is Auth:
                logger.debug("ignored auth message from client %s in %r", peer.id, self.name)

    def accept_own_update(self, update: bytes, size: int) -> None:
        """Take an update the server made (a restore: `collab.sync.restore`) as a client's is taken: checked,
        applied to the Doc at once, relayed to every peer, stored, published.

        `size`: the document's size once the update is applied, as its maker measured it. The size limit holds
        it to that, not to the update's length: a restore that shrinks a document deletes much, and its update
        is long. Raises `DocumentTooLargeError` if it is past the limit, `InvalidUpdateError` if the update
        does not apply; nothing of it took effect then.
        """
        if self.max_document_size and size > self.max_document_size:
            raise DocumentTooLargeError(
                f"it would be {size} bytes, more than the limit of {self.max_document_size} bytes"
            )
        check_update(update)
        self._accept_update(None, update, b"", trial=True)

    def _accept_update(self, sender: Peer | None, update: bytes, frame: bytes, trial: bool = False) -> None:
        """Relay (to every peer but `sender`), queue for the store and the Doc; an update that only the Doc can
        judge (`trial`) is applied first, and refused with `InvalidUpdateError` if it does not integrate."""
        if update == EMPTY_UPDATE:
            return
        if trial:
            self._apply_now(update)
            self._edited()
        frame = frame or Update(update).encode()
        for peer in self.peers:
            if peer is not sender:
                peer.send(frame)
        self.log_length += 1
        self.size += len(update)
        self._size_exact = False
        if trial:
            self._store.append(self.name, update, 1)
            if self._publisher is not None:
                self._publisher.publish(self.name, frame)
            return
        self._pending.append(update)
        if len(self._pending) == 1:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """The first update queued this turn: flush on the next turn (or now, without a scheduler)."""
        if self._schedule is None:
            self.flush()
        else:
            self._schedule(self.flush)

    def _apply_now(self, update: bytes) -> None:
        """Integrate one update into the Doc at once (after what is queued), or refuse it.

        yrs refuses, when integrating, an item whose parent is not a shared type; the walk cannot see
        that, since the parent may be anywhere in the document. Such an update goes no further: it is
        not relayed (a stock client would choke on it too) and not stored (it would poison every later
        load). A failed apply leaves the Doc as it was (tests/test_hostile_updates.py checks).
        """
        self.flush()
        try:
            self.doc.apply_update(update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # pycrdt's PanicException derives from BaseException
            raise InvalidUpdateError(f"invalid Yjs update: it does not apply to the document ({error})") from error

    def _check_growth(self, growth: int) -> None:
        """Raise `DocumentTooLargeError` if `growth` more bytes would take the document beyond its limit.

        The running size over-counts (an update may repeat or delete what the document has), so it is
        measured exactly first; that costs a get_update() (about 1 ms per MB) only near the limit, and
        once per update accepted since the last measure.
        """
        if not self._size_exact:
            self.flush()
            self.size = len(self._stored) if self._stored is not None else len(self.doc.get_update())
            self._size_exact = True
        if self.size + growth > self.max_document_size:
            raise DocumentTooLargeError(
                f"document would exceed {self.max_document_size} bytes ({self.size} + {growth})"
            )

    def _accept_awareness(self, sender: Peer, message: Awareness, now: float) -> None:
        """Apply the presence rules (collab.sync.presence) and broadcast what they accepted."""
        grant = sender.grant
        accepted, dropped = self.presence.apply(
            sender, message.entries, now, grant.subject if grant is not None else None
        )
        if dropped:
            logger.debug("dropped awareness entries", extra=fields(conn=sender.id, room=self.name, **dropped))
            if self._rejected is not None:
                for reason, count in dropped.items():
                    self._rejected.inc(reason, amount=count)
        if not accepted:
            return
        unchanged = len(accepted) == len(message.entries) and all(
            mine is theirs for mine, theirs in zip(accepted, message.entries, strict=True)
        )
        # Echo to the sender too: a lone stock client counts that echo as a sign of life.
        frame = message.encode() if unchanged else awareness_message(accepted)
        self._broadcast(frame)
        subject = grant.subject if grant is not None else None
        if unchanged and self._publisher is not None:
            self._publisher.publish(self.name, frame, subject)
        else:
            self._publish_presence(accepted, subject)

    def _publish_presence(self, entries: list[AwarenessEntry], removed_by: str | None) -> None:
        """Publish awareness entries for the other processes, each under the `sub` of the id's owner here (a
        removal under `removed_by`'s, whose the id was), so that they apply the same ownership rules."""
        if self._publisher is None or not entries:
            return
        by_subject: dict[str | None, list[AwarenessEntry]] = {}
        for entry in entries:
            subject = removed_by if entry.is_removal else self.presence.subject_of(entry.client_id)
            by_subject.setdefault(subject, []).append(entry)
        for subject, group in by_subject.items():
            for frame in awareness_messages(group):
                self._publisher.publish(self.name, frame, subject)

    def _broadcast(self, frame: bytes) -> None:
        for peer in self.peers:
            peer.send(frame)

    def _edited(self) -> None:
        """Edits were integrated: sample who is there, unless a sample was taken less than SAMPLE_EVERY ago."""
        if self._journal is None:
            return
        now = time.time()
        if now >= self._next_sample:
            self._sample(now)
        else:
            self._unsampled = True

    def _sample(self, now: float) -> None:
        if self._journal is None or self.ended:  # an ended room's name may already be another document's
            return
        self._journal.present(self.name, now, display_names(self.presence.current()))
        self._next_sample = now + SAMPLE_EVERY
        self._unsampled = False

    # The server's copy of the document.

    def flush(self) -> None:
        """Store and apply queued updates in one batch; compact the log when it is long.

        The store gets the batch merged, as the Doc does: one write queued per batch rather than one per
        update, and less for the store's thread to merge again (scripts/bench saturate: the per-update
        queue entries and that merging took about a third of the server's CPU). A batch is what one turn
        of the event loop accepted, so an update is queued for the store at most one turn after it came.
        """
        if self._relayed:
            self._apply_relayed()
            self._edited()
        pending = self._pending
        if pending:
            self._edited()
            self._pending = []
            try:
                batch = pending[0] if len(pending) == 1 else merge_updates(*pending)
                self.doc.apply_update(batch)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                # Every update was checked before it was queued, so this is a bug (in collab's walk or
                # in yrs): keep every update that does apply, and only those, rather than lose the batch
                # or store a row that would fail every later load.
                logger.exception(
                    "room %r: a batch of %d updates did not apply; applying one by one", self.name, len(pending)
                )
                batch = self._apply_each(pending)
            self._store.append(self.name, batch, len(pending))
            if self._publisher is not None:
                self._publisher.publish(self.name, Update(batch).encode())
        if self.log_length >= self.compact_after:
            self.compact()

    def _apply_each(self, updates: list[bytes]) -> bytes:
        """Apply updates one at a time, dropping (and logging) those that fail; return the rest merged."""
        applied = []
        for update in updates:
            try:
                self.doc.apply_update(update)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                logger.exception("room %r: dropped an update that does not apply (%d bytes)", self.name, len(update))
            else:
                applied.append(update)
        return merge_updates(*applied) if applied else EMPTY_UPDATE

    def end(self, code: int, reason: str, keep_pending: bool = True) -> None:
        """The document was deleted or renamed: queue what is pending for the store (`keep_pending`: a rename
        takes it along) or drop it (a delete: queued later, it would start a new document), take nothing more,
        and close every peer with `code`."""
        if keep_pending:
            self.flush()
        else:
            self._pending, self._relayed = [], []
        self.ended = True
        for peer in list(self.peers):
            peer.close(code, reason)

    def compact(self) -> None:
        """Replace the store's log for this document with a snapshot, if anything was logged or relayed.

        Updates relayed from other processes are stored by those processes; a snapshot holds them too, which
        is how they survive their process dying before its commit (issue: "survivors' compaction folds
        their in-memory state in").
        """
        if self.ended:
            return
        if self._pending or self._relayed:
            self.flush()
        if self.log_length or self.relayed_from:
            snapshot = self.doc.get_update()
            self._store.compact(self.name, snapshot)
            self.log_length = 0
            self.relayed_from.clear()
            self.size = len(snapshot)
            self._size_exact = True

    # What other processes relayed (see collab.cluster).

    def receive_relayed(self, origin: Origin, messages: list[Message], now: float | None = None) -> None:
        """Handle one frame another process accepted from its peers: updates and awareness, nothing else.

        Its updates are checked as a client's are (what comes out of Redis is as hostile as what comes off
        a socket: an update that does not decode refuses the whole frame with `InvalidUpdateError` before any
        of it is applied; one that only the Doc can judge is refused when applied), relayed to every peer here,
        and applied to the Doc, but neither stored (their own process does that) nor published again, and
        not held to --max-document-size (their process accepted them: refusing would split the document).
        Sync messages are never relayed between processes (a stale process's step 2 must not be merged as
        news), so they are ignored here.
        """
        trial: set[int] = set()
        for index, message in enumerate(messages):
            if type(message) is Update and check_update(message.update):
                trial.add(index)
        for index, message in enumerate(messages):
            if type(message) is Update:
                self._accept_relayed(origin, message.update, message.raw, index in trial)
            elif type(message) is Awareness:
                self._accept_relayed_awareness(origin, message, time.monotonic() if now is None else now)

    def _accept_relayed_awareness(self, origin: Origin, message: Awareness, now: float) -> None:
        """Apply another process's awareness; what it hands over to a peer of this room (a claim promoted when
        the id's owner left) is published, since the other processes only know the id's old owner."""
        accepted, _ = self.presence.apply(origin, message.entries, now, origin.subject, REMOTE_CLIENT_IDS)
        if not accepted:
            return
        theirs = {id(entry) for entry in message.entries}
        if len(accepted) == len(message.entries) and all(id(entry) in theirs for entry in accepted):
            self._broadcast(message.encode())
            return
        self._broadcast(awareness_message(accepted))
        self._publish_presence([entry for entry in accepted if id(entry) not in theirs], None)

    def merge_stored(self, records: list[StoredRecord]) -> int:
        """Merge what the store holds into the room (a gap in the relay: something may have been missed).

        Every peer gets what it lacks as one update; returns its size (0 when nothing was missed). Raises
        `CorruptDocumentError` for a row that does not decode, as a load does.
        """
        check_records(self.name, records)
        if not records:
            return 0
        stored = records[0].data if len(records) == 1 else merge_updates(*(record.data for record in records))
        missing = get_update(stored, self.state_vector())
        if missing == EMPTY_UPDATE:
            return 0
        self._accept_relayed(None, missing, b"", False)
        return len(missing)

    def origin_gone(self, origin: Origin, now: float | None = None) -> None:
        """Another process stopped: drop the presence of its clients; fold in its unstored updates (`compact`)."""
        changes = self.presence.remove_owner(origin, time.monotonic() if now is None else now, vanished=True)
        for frame in awareness_messages(changes):
            self._broadcast(frame)
        # Removals are not published (every process drops a vanished one's clients itself); handovers are.
        self._publish_presence([entry for entry in changes if not entry.is_removal], None)
        if origin.process in self.relayed_from:
            self.compact()

    def _accept_relayed(self, origin: Origin | None, update: bytes, frame: bytes, trial: bool) -> None:
        if update == EMPTY_UPDATE:
            return
        if trial:
            self._apply_now(update)
            self._edited()
        else:
            self._relayed.append(update)
            if len(self._relayed) == 1 and not self._pending:
                self._flush_soon()
        frame = frame or Update(update).encode()
        for peer in self.peers:
            peer.send(frame)
        self.size += len(update)
        self._size_exact = False
        if origin is not None:  # None: from the store, so stored already
            self.relayed_from.add(origin.process)

    def _apply_relayed(self) -> None:
        relayed, self._relayed = self._relayed, []
        batch = relayed[0] if len(relayed) == 1 else merge_updates(*relayed)
        try:
            self.doc.apply_update(batch)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            logger.exception(
                "room %r: a batch of %d relayed updates did not apply; applying one by one", self.name, len(relayed)
            )
            self._apply_each(relayed)

    def state_vector(self) -> bytes:
        if self._stored is not None and not self._pending and not self._relayed:
            return self._stored_state
        self.flush()
        return self.doc.get_state()

    def diff(self, state_vector: bytes) -> bytes:
        """What a peer with `state_vector` is missing."""
        try:
            if self._stored is not None and not self._pending and not self._relayed:
                return self._stored if state_vector == EMPTY_STATE_VECTOR else get_update(self._stored, state_vector)
            self.flush()
            return self.doc.get_update(state_vector)
        except ValueError as error:
            raise InvalidUpdateError(f"invalid state vector: {error}") from error

    def __repr__(self) -> str:
        return f"<Room {self.name!r} peers={len(self.peers)} log={self.log_length}>"
