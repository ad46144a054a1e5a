"""The loaded rooms: load on first join, once however many join at once; unload when idle.

A room is loaded from the store before any joiner is answered. If the load
fails, every waiting joiner gets the error and the next joiner tries again: a
document that could not be read is never served as empty. A room that has been
empty for `unload_after` seconds is compacted, and dropped from memory only
once the store confirms that everything it wrote is durable.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import ServerBusyError
from ..metrics import Counter
from ..store import Store
from ..sync.room import Peer, Room

__all__ = ["Rooms"]

logger = logging.getLogger("collab.rooms")


MAX_JOIN_ATTEMPTS = 8
"""Loads one join may wait for: a room unloads again before its joiner gets it only in a rare race."""


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
    ) -> None:
        """`rejected`: where rooms count the awareness entries they drop (the server's metrics)."""
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
        return room

    async def join(self, name: str, peer: Peer) -> Room:
        """Add `peer` to room `name`, loading it first if needed.

        Raises `StorageError` if it cannot be loaded, `ServerBusyError` if it is full
        or no more rooms may be loaded.
        """
        for _ in range(MAX_JOIN_ATTEMPTS):
            room = self.join_loaded(name, peer)
            if room is not None:
                return room
            await self.load(name)  # unloaded again before the join when another peer came and went: retry
        raise ServerBusyError(f"document {name!r} keeps unloading; try again")

    def leave(self, room: Room, peer: Peer) -> None:
        """Remove `peer`; schedule the room's unload if it is now empty."""
        room.leave(peer, asyncio.get_running_loop().time())  # the clock connections give Room.receive
        if not room.peers and room.name not in self._unloading and self._rooms.get(room.name) is room:
            self._unloading[room.name] = asyncio.create_task(self._unload_when_idle(room), name=f"unload {room.name}")

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
            )
        except Exception:
            logger.exception("could not load room %r", name)
            raise
        finally:
            del self._loading[name]
        self._rooms[name] = room
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
            logger.debug("unloaded room %r", room.name)

    async def close(self) -> None:
        """Compact every room and wait until the store has it all; the rooms stay readable."""
        for task in self._unloading.values():
            task.cancel()
        self._unloading.clear()
        for room in self._rooms.values():
            room.compact()
        await self.store.flush()
