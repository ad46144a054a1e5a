"""The loaded rooms: load on first join, once however many join at once; unload when idle.

A room is loaded from the store before any joiner is answered. If the load
fails, every waiting joiner gets the error and the next joiner tries again: a
document that could not be read is never served as empty. A room that has been
empty for `unload_after` seconds is compacted, and dropped from memory only
once the store confirms that everything it wrote is durable.

With a relay (`--relay`, see `collab.cluster`) the rooms are also the relay's
`Listener`: a room is followed while it is loaded, and loaded from the store
*and* what the relay retains of it (what other processes accepted and may not
have committed yet); frames other processes publish reach its peers, a gap is
repaired by merging the store's copy in, and a process that stops beating takes
its clients' presence with it.

The rooms keep a `Journal` of who was connected while each document was edited,
and which changes were restores (`restore`), for its history: in memory only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from ..cluster import Relay, Relayed
from ..errors import (
    DOCUMENT_DELETED,
    DOCUMENT_RENAMED,
    MAX_REASON_BYTES,
    TRY_AGAIN_LATER,
    AlreadyExistsError,
    CollabError,
    DocumentTooLargeError,
    InvalidRoomNameError,
    InvalidUpdateError,
    NotFoundError,
    RestoreError,
    ServerBusyError,
    StorageError,
)
from ..formats import breathe, check_existed, update_from_records
from ..logs import fields
from ..metrics import Counter
from ..store import Store, StoredRecord
from ..sync.journal import Journal
from ..sync.names import validate_room_name
from ..sync.protocol import Awareness, Update, parse_frame
from ..sync.restore import Restore, holds, restore_update
from ..sync.room import EMPTY_STATE_VECTOR, EMPTY_UPDATE, Origin, Peer, Room
from ..sync.yupdate import check_state_vector
from ..units import format_time

__all__ = ["Rooms"]

logger = logging.getLogger("collab.rooms")


MAX_JOIN_ATTEMPTS = 8
"""Loads one join may wait for: a room unloads again before its joiner gets it only in a rare race."""
MAX_ORIGINS = 65_536
"""(process, sub) pairs remembered at once (each a presence holder); past it, those of processes not beating,
and those holding nothing any more, are forgotten."""
GAP_RELOAD_ATTEMPTS = 10
GAP_RELOAD_RETRY = 2.0
"""Seconds between attempts to read a room back from a store that is failing, after a gap."""
RESTORE_THREADS = 2
"""Restores worked out at once, each in a thread of the rooms' own: working one out holds the GIL in pycrdt's
native calls for up to seconds, and the loop's default executor also runs what must not wait that long (the
revocation poll, the lock check). Another restore asked for meanwhile is refused (503), not queued."""
RESTORE_ATTEMPTS = 3
"""Times a restore is worked out, when the document changed while it was (another process's restore, edits):
the last result is applied all the same, merged with what came meanwhile as any concurrent change is."""
CHANGED_WHILE_RESTORING = "the document changed while restoring (deleted or renamed): try again"
RENAMED_TO = "renamed to "
"""How the close reason of a rename (4411) begins, the new name after it: the web editor follows it there."""

T = TypeVar("T")


class Rooms:
    """Every room in memory, by name."""

    def __init__(
        self,
        store: Store,
        *,
        unload_after: float = 30.0,
        compact_after: int = 1000,
        max_rooms: int = 10_000,
        max_room_connections: int = 1_000,
        max_document_size: int = 0,
        rejected: Counter | None = None,
        relay: Relay | None = None,
    ) -> None:
        """`rejected`: where rooms count the awareness entries they drop (the server's metrics).

        `relay`: the other processes' rooms (`--relay`); the caller starts it with these rooms as its listener.
        """
        self.store = store
        self.unload_after = unload_after
        self.compact_after = compact_after
        self.max_rooms = max_rooms
        self.max_room_connections = max_room_connections
        self.max_document_size = max_document_size
        self.rejected = rejected
        self._rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Task[Room]] = {}
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self.relay = relay
        self._origins: dict[tuple[str, str | None], Origin] = {}
        self._reloads: dict[str, asyncio.Task[None]] = {}
        self._ending: set[str] = set()
        """Names being deleted or renamed: joins are refused (try again) until the store has done it."""
        self.journal = Journal()
        """Who was there while each document was edited, and its restores (`collab.sync.journal`)."""
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        """Per document name taking turns (`turn`): the lock, and how many hold or want it."""
        self._writes: dict[str, int] = {}
        """Per document name, the writes (`write`) under way: its room stays loaded for them."""
        self._restore_threads: ThreadPoolExecutor | None = None
        self._restore_slots = threading.BoundedSemaphore(RESTORE_THREADS)
        """Taken on the loop, given back by the thread as it finishes (a restore given up on still runs)."""
        self.on_connection: Callable[[str, str, dict[str, Any]], None] | None = None
        """Told ("connection.opened" or "connection.closed", room name, who) as peers join and leave: the
        webhooks' connection events, when asked for."""

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, name: str) -> bool:
        return name in self._rooms

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def join_loaded(self, name: str, peer: Peer) -> Room | None:
        """Add `peer` to room `name` if it is in memory (None if not: `join` loads it).

        Raises `ServerBusyError` if the room is full.
        """
        room = self._rooms.get(name)
        if room is None:
            return None
        if len(room.peers) >= self.max_room_connections:
            raise ServerBusyError(f"document {name!r} has its limit of {self.max_room_connections} connections")
        unloading = self._unloading.pop(name, None)
        if unloading is not None:
            unloading.cancel()
        room.join(peer)
        if self.on_connection is not None:
            self.on_connection("connection.opened", name, _who(peer))
        return room

    async def join(self, name: str, peer: Peer) -> Room:
        """Add `peer` to room `name`, loading it first if needed.

        Raises `StorageError` if it cannot be loaded, `ServerBusyError` if it is full
        or no more rooms may be loaded.
        """
        for _ in range(MAX_JOIN_ATTEMPTS):
            self._refuse_if_ending(name)
            room = self.join_loaded(name, peer)
            if room is not None:
                return room
            await self.load(name)  # unloaded again before the join when another peer came and went: retry
        raise ServerBusyError(f"document {name!r} keeps unloading; try again")

    def leave(self, room: Room, peer: Peer) -> None:
        """Remove `peer`; schedule the room's unload if it is now empty."""
        room.leave(peer, asyncio.get_running_loop().time())  # the clock connections give Room.receive
        if self.on_connection is not None:
            self.on_connection("connection.closed", room.name, _who(peer))
        self._unload_if_idle(room)

    def _unload_if_idle(self, room: Room) -> None:
        """Schedule the unload of `room` if nobody is in it, no write holds it (and none is scheduled yet)."""
        name = room.name
        if room.peers or name in self._unloading or name in self._writes:
            return
        if self._rooms.get(name) is room:
            self._unloading[name] = asyncio.create_task(self._unload_when_idle(room), name=f"unload {name}")

    async def load(self, name: str) -> Room:
        """The room `name`, loaded once even when many ask at the same time; `join` it to keep it."""
        room = self._rooms.get(name)
        if room is not None:
            return room
        task = self._loading.get(name)
        if task is None:
            if len(self._rooms) + len(self._loading) >= self.max_rooms:
                raise ServerBusyError(f"the server has its limit of {self.max_rooms} documents open")
            task = asyncio.create_task(self._load(name), name=f"load {name}")
            self._loading[name] = task
        # Shielded: one joiner giving up must not cancel the load the others wait for.
        return await asyncio.shield(task)

    async def _load(self, name: str) -> Room:
        try:
            # What the relay retains first, then the store: whatever is published after the one is read
            # is followed from `retained.position`, whatever before it is in `retained` or (older than the
            # retention) long committed.
            retained = await self.relay.retained(name) if self.relay is not None else None
            records = await self.store.load(name)
            loop = asyncio.get_running_loop()
            room = Room.from_records(
                name,
                records,
                self.store,
                compact_after=self.compact_after,
                max_document_size=self.max_document_size,
                rejected=self.rejected,
                schedule=loop.call_soon,
                publisher=self.relay,
                journal=self.journal,
            )
            if retained is not None:
                for message in retained.frames:
                    try:
                        self._receive(room, message, only_updates=not self._is_alive(message.origin))
                    except CollabError as error:
                        logger.warning(
                            "skipped a retained frame from %s: %s", message.origin, error, extra=fields(room=name)
                        )
        except Exception:
            logger.exception("could not load room %r", name)
            raise
        finally:
            del self._loading[name]
        self._refuse_if_ending(name)  # deleted or renamed while it loaded: what it read is gone
        self._rooms[name] = room
        if self.relay is not None and retained is not None:
            self.relay.follow(name, retained.position)
        logger.debug("loaded room %r from %d stored records", name, len(records))
        return room

    async def _unload_when_idle(self, room: Room) -> None:
        try:
            await asyncio.sleep(self.unload_after)
            room.compact()
            await self.store.flush()
        finally:
            if self._unloading.get(room.name) is asyncio.current_task():
                del self._unloading[room.name]
        if not room.peers and self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            if self.relay is not None:
                self.relay.unfollow(room.name)
            logger.debug("unloaded room %r", room.name)

    async def close(self) -> None:
        """Compact every room and wait until the store has it all; the rooms stay readable."""
        for task in [*self._unloading.values(), *self._reloads.values()]:
            task.cancel()
        self._unloading.clear()
        self._reloads.clear()
        for room in self._rooms.values():
            room.compact()
        if self._restore_threads is not None:
            self._restore_threads.shutdown(wait=False, cancel_futures=True)
            self._restore_threads = None
        await self.store.flush()

    # Deleting and renaming.

    async def delete(self, name: str) -> None:
        """Delete document `name`: its room ends here and on every other process (its clients are closed with
        4410, and the stock client does not reconnect; edits not yet queued for the store are dropped), then
        the store deletes it and its history.

        Raises `NotFoundError` if it is neither stored nor loaded, `StorageError` if the store fails.
        """
        self._ending.add(name)
        try:
            loaded = name in self._rooms
            await self._end_everywhere((name, DOCUMENT_DELETED, "document deleted"))
            try:
                await self.store.delete(name)
            except NotFoundError:
                if not loaded:  # a room nothing was stored for yet was a document all the same: it is gone
                    raise
        finally:
            self._ending.discard(name)
        self.journal.forget(name)
        logger.info("deleted the document", extra=fields(room=name))

    async def rename(self, old: str, new: str) -> None:
        """Rename document `old` to `new`, history included: the room of `old` ends everywhere (4411, the
        reason naming `new`), and so does any room of `new` another process holds unstored (1013: its clients
        reconnect to the renamed document); `new` is loaded from the store when someone joins it.

        Raises `NotFoundError` if `old` is not stored or loaded, `AlreadyExistsError` if `new` is,
        `StorageError` if the store fails.
        """
        self._ending.update((old, new))  # first: nobody opens either name while this looks and changes
        try:
            if new in self._rooms or await self.store.documents(new):
                raise AlreadyExistsError.for_name(new)
            if old not in self._rooms and not await self.store.documents(old):
                raise NotFoundError(f"no document named {old!r}")
            await self._end_everywhere(
                (old, DOCUMENT_RENAMED, _renamed_reason(new)),
                (new, TRY_AGAIN_LATER, "a document was renamed to this name: reconnect"),
            )
            await self.store.rename(old, new)
        finally:
            self._ending.difference_update((old, new))
        self.journal.renamed(old, new)
        logger.info("renamed the document", extra=fields(room=old, to=new))

    # Writing from outside a room (the HTTP write API).

    async def write(self, name: str, writer: Peer, change: Callable[[Room], Awaitable[bytes]]) -> bytes:
        """Apply to document `name` the update `change(room)` makes, as if `writer` (a peer not in the room) had
        sent it in a frame of its own: checked and held to the size limit as a client's update is, relayed to
        every peer here and on the other processes, queued for the store. Returns the document's state vector
        after it; `store.flush()` makes it durable.

        The room is loaded for it if it is not, and stays loaded until it is applied (`change` may await: work
        it out in a thread from `room.diff(...)`), then unloads again later if nobody joins. Raises
        `ServerBusyError` while the name is being deleted or renamed, or if it was while `change` worked (the
        update was made for a document that is gone); what `change` raises; `InvalidUpdateError` or
        `DocumentTooLargeError` for an update refused (nothing of it took effect); `StorageError` if the room
        cannot be loaded.
        """
        self._refuse_if_ending(name)
        room = await self._hold(name)
        try:
            update = await change(room)
            if room.ended:
                raise ServerBusyError(f"document {name!r} was deleted or renamed meanwhile; try again")
            self._refuse_if_ending(name)
            room.receive(writer, [Update(update)])
            room.flush()  # queued for the store now, not a loop turn later: the caller's store.flush() covers it
            return room.state_vector()
        finally:
            self._release(name)

    async def _hold(self, name: str) -> Room:
        """Room `name`, loaded, kept so for a write (`_release` lets it unload again): as a join does, so that a
        change worked out from it is never applied to another copy of the document."""
        for _ in range(MAX_JOIN_ATTEMPTS):
            room = await self.load(name)
            if self._rooms.get(name) is room:  # not unloaded (nor ended) since the load
                self._writes[name] = self._writes.get(name, 0) + 1
                unloading = self._unloading.pop(name, None)
                if unloading is not None:
                    unloading.cancel()
                return room
            self._refuse_if_ending(name)
        raise ServerBusyError(f"document {name!r} keeps unloading; try again")

    def _release(self, name: str) -> None:
        """A write `_hold` kept room `name` for is done: the room unloads later if nobody is in it."""
        writes = self._writes.pop(name) - 1
        if writes:
            self._writes[name] = writes
        room = self._rooms.get(name)
        if room is not None:
            self._unload_if_idle(room)

    # Restoring.

    async def restore(self, name: str, at: float) -> None:
        """Make document `name` read as it did at Unix time `at`, by a new change (`collab.sync.restore`) that its
        room takes as a client's update: every peer gets it, here and on the other processes, and it is stored
        (this returns once it is durable). The room is loaded for it if it is not (and unloaded again later if
        nobody joins).

        Restores of one document take turns (`turn`, with the write API's texts). The change is worked out in a
        thread from the room's state; if the document changed meanwhile it is worked out again
        (`RESTORE_ATTEMPTS`), and at last applied merged with what came, as any concurrent change is. Raises
        `NotFoundError` if there is no such document or none yet at `at`, `HistoryError` if no state so old is
        kept, `StorageError` (`CorruptDocumentError`) if it cannot be read, `RestoreError` if it holds what
        cannot be restored, if the result would pass the size limit, or if the document was deleted or renamed
        meanwhile (the version is not of its past: restoring would bring a deleted document back);
        `ServerBusyError` while it is being deleted or renamed, or while `RESTORE_THREADS` restores are being
        worked out; `InvalidUpdateError` (logged) if its own change does not apply, a bug.
        """
        async with self.turn(name):
            self._refuse_if_ending(name)
            infos = await self.store.documents(name)
            if not infos and name not in self._rooms:  # a room nothing is stored for yet is a document too
                raise NotFoundError(f"no document named {name!r}")
            if infos:
                check_existed(infos[0], at)
            records = await self.store.load(name, at)
            if not records:
                raise NotFoundError(f"document {name!r} did not exist yet at {format_time(at)}")
            try:
                room, restore = await self._work_out_restore(await self.load(name), records)
                if restore.update != EMPTY_UPDATE:
                    restored_at = time.time()  # before its log row is stamped: the history splits moments here
                    self._accept_restore(room, restore)
                    self.journal.restored(name, restored_at, at)
            finally:
                loaded = self._rooms.get(name)
                if loaded is not None:
                    self._unload_if_idle(loaded)
        await self.store.flush()  # answered once durable, as a delete or a rename is
        logger.info("restored the document", extra=fields(room=name, at=format_time(at), bytes=len(restore.update)))

    async def _work_out_restore(self, room: Room, records: list[StoredRecord]) -> tuple[Room, Restore]:
        """The restore of `room` to the version `records` hold, worked out against the room's state when it is
        applied (see `restore`), and the room to apply it to (the same document, reloaded if it was unloaded)."""
        name = room.name
        attempt = 1
        while True:
            # Bytes only cross to the thread (a pycrdt Doc is not thread safe); every row is checked there first.
            current, state = room.diff(EMPTY_STATE_VECTOR), room.state_vector()
            restore = await self._in_restore_thread(partial(_restore_of, name, records, current, state))
            if room.ended:  # deleted or renamed meanwhile, here or on another process
                raise RestoreError(CHANGED_WHILE_RESTORING)
            self._refuse_if_ending(name)
            if self._rooms.get(name) is not room:  # unloaded meanwhile (nobody was in it): read back
                room = await self.load(name)
            if _same_state(room.state_vector(), state) or attempt >= RESTORE_ATTEMPTS:
                return room, restore
            attempt += 1

    async def _in_restore_thread(self, work: Callable[[], T]) -> T:
        """`work()` in one of the restore threads; `ServerBusyError` if every one is busy."""
        if not self._restore_slots.acquire(blocking=False):
            raise ServerBusyError(f"restores busy ({RESTORE_THREADS} being worked out), try again")
        if self._restore_threads is None:
            self._restore_threads = ThreadPoolExecutor(RESTORE_THREADS, thread_name_prefix="collab-restore")
        try:
            future = self._restore_threads.submit(work)
        except BaseException:
            self._restore_slots.release()
            raise
        future.add_done_callback(lambda _: self._restore_slots.release())  # when the thread is done with it
        return await asyncio.wrap_future(future)

    def _accept_restore(self, room: Room, restore: Restore) -> None:
        try:
            room.accept_own_update(restore.update, restore.size)
        except DocumentTooLargeError as error:
            raise RestoreError(f"the document cannot be restored: {error}") from error
        except InvalidUpdateError:
            logger.exception("the restore's own change does not apply to its document", extra=fields(room=room.name))
            raise

    @asynccontextmanager
    async def turn(self, name: str) -> AsyncIterator[None]:
        """Hold the turn of document `name`: changes worked out from its state (restores, and the write API's
        texts and creations) take turns, first come first served, since two worked out from one state would
        both insert what it lacks: the text twice."""
        lock, users = self._turns.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._turns[name]

    async def _end_everywhere(self, *ends: tuple[str, int, str]) -> None:
        """End rooms (name, close code, reason) here, then on the other processes; returns once those have
        closed them and queued what they keep of them for their store."""
        for name, code, reason in ends:
            self._end(name, code, reason)
        if self.relay is not None:
            relay = self.relay
            await asyncio.gather(*(relay.end(name, code, reason) for name, code, reason in ends))

    def ended(self, name: str, code: int, reason: str) -> None:
        """Another process deleted or renamed document `name` (the relay calls this): its room ends here too, and
        the journal forgets it or, for a rename whose reason names the new name, moves it there."""
        self._end(name, code, reason)
        renamed_to = _renamed_to(reason) if code == DOCUMENT_RENAMED else None
        if renamed_to is not None:
            self.journal.renamed(name, renamed_to)
        elif code in (DOCUMENT_DELETED, DOCUMENT_RENAMED):
            self.journal.forget(name)

    def _end(self, name: str, code: int, reason: str) -> None:
        """End room `name`, if loaded: its clients are closed with `code`; for a deletion, what it has not
        queued for the store yet is dropped."""
        room = self._rooms.pop(name, None)
        unloading = self._unloading.pop(name, None)
        if unloading is not None:
            unloading.cancel()
        if room is not None:
            room.end(code, reason, keep_pending=code != DOCUMENT_DELETED)
            if self.relay is not None:
                self.relay.unfollow(name)

    def _refuse_if_ending(self, name: str) -> None:
        if name in self._ending:
            raise ServerBusyError(f"document {name!r} is being deleted or renamed; try again")

    # The relay's listener (collab.cluster.Listener).

    def relayed(self, name: str, message: Relayed) -> None:
        """A frame another process published: to the room's peers and Doc; `CollabError` if it is refused."""
        room = self._rooms.get(name)
        if room is not None:
            self._receive(room, message)

    def gap(self, name: str) -> None:
        """Something published for `name` may have been missed: merge in the store's copy (in the background)."""
        room = self._rooms.get(name)
        if room is not None and name not in self._reloads:
            self._reloads[name] = asyncio.create_task(self._merge_stored(room), name=f"reload {name}")

    def gone(self, process: str) -> None:
        """Process `process` stopped beating: its clients' presence goes, and what it relayed is folded into
        a snapshot here (it may have died before committing it)."""
        origins = [self._origins.pop(key) for key in [key for key in self._origins if key[0] == process]]
        loop = asyncio.get_running_loop()
        for origin in origins:
            for room in self._rooms.values():
                # One room a loop turn: each may compact (a whole-document snapshot); connections wait between.
                loop.call_soon(room.origin_gone, origin, loop.time())

    def _receive(self, room: Room, message: Relayed, only_updates: bool = False) -> None:
        """Hand `room` one relayed frame (without its awareness, for a frame of a process no longer beating)."""
        messages = parse_frame(message.frame)
        if only_updates:
            messages = [item for item in messages if type(item) is not Awareness]
        origin = self._origin(message.origin, message.subject)
        room.receive_relayed(origin, messages, asyncio.get_running_loop().time())

    def _origin(self, process: str, subject: str | None) -> Origin:
        origin = self._origins.get((process, subject))
        if origin is None:
            if len(self._origins) >= MAX_ORIGINS:
                self._forget_origins()
            origin = self._origins[(process, subject)] = Origin(process, subject)
        return origin

    def _forget_origins(self) -> None:
        """Drop the origins of processes no longer beating, and those no room's presence holds any more."""
        for process in {process for process, _ in self._origins if not self._is_alive(process)}:
            self.gone(process)
        for key, origin in list(self._origins.items()):
            if not any(room.presence.holds(origin) for room in self._rooms.values()):
                del self._origins[key]

    def _is_alive(self, process: str) -> bool:
        return self.relay is None or self.relay.is_alive(process)

    async def _merge_stored(self, room: Room) -> None:
        try:
            for attempt in range(GAP_RELOAD_ATTEMPTS):
                try:
                    records = await self.store.load(room.name)
                except StorageError as error:
                    logger.warning(
                        "cannot read the room back after a gap: %s",
                        error,
                        extra=fields(room=room.name, attempt=attempt),
                    )
                    await asyncio.sleep(GAP_RELOAD_RETRY)
                    continue
                if self._rooms.get(room.name) is room:
                    try:
                        missed = room.merge_stored(records)
                    except CollabError as error:
                        logger.error(
                            "cannot merge the stored room after a gap: %s", error, extra=fields(room=room.name)
                        )
                        return
                    logger.info("merged the store's copy after a gap", extra=fields(room=room.name, sent_bytes=missed))
                return
            logger.error("gave up reading the room back after a gap", extra=fields(room=room.name))
        finally:
            if self._reloads.get(room.name) is asyncio.current_task():
                del self._reloads[room.name]


def _who(peer: Peer) -> dict[str, Any]:
    """What a connection event says of its connection: its id, and its token's subject if it names one."""
    grant = peer.grant
    return {"connection": {"id": peer.id, "subject": None if grant is None else grant.subject}}


def _restore_of(name: str, records: list[StoredRecord], current: bytes, state: bytes) -> Restore:
    """In a restore thread: the restore of document `current` (state vector `state`) to the version `records`
    hold, refused unless that version is of its past."""
    version = update_from_records(name, records)
    if not holds(state, version):  # the document was deleted (and maybe begun anew) or renamed since
        raise RestoreError(CHANGED_WHILE_RESTORING)
    return restore_update(current, version, breathe)


def _same_state(one: bytes, other: bytes) -> bool:
    """Whether two state vectors say the same (their bytes may list the clients in another order)."""
    return one == other or check_state_vector(one) == check_state_vector(other)


def _renamed_reason(new: str) -> str:
    """The close reason of a rename to `new`: naming it if it fits in a close frame (and in the relay's entry,
    which refuses a longer one), else not at all rather than cut."""
    reason = RENAMED_TO + new
    return reason if len(reason.encode()) <= MAX_REASON_BYTES else "renamed"


def _renamed_to(reason: str) -> str | None:
    """The new name a rename's close reason (`_renamed_reason`) gives, or None if it gives none."""
    if not reason.startswith(RENAMED_TO):
        return None
    try:
        return validate_room_name(reason.removeprefix(RENAMED_TO))
    except InvalidRoomNameError:
        return None
