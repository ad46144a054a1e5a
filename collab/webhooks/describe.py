"""What a document.changed event says of its document: its state vector now, and its export if asked for.

Taken when the event is sealed, from the room if the document is loaded here
(what clients see, committed or about to be), else from the store; either way
it covers every change the event stands for, which were committed before it
was sealed. Rendering an export runs in a thread, as the HTTP API's does.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING, Any

from pycrdt import get_state

from ..formats import doc_from_updates, render, update_from_records
from ..store import Store
from ..sync.room import EMPTY_STATE_VECTOR

if TYPE_CHECKING:  # the server hands them in
    from ..server.rooms import Rooms

__all__ = ["Describer"]

LOAD_TIMEOUT = 10.0


class Describer:
    """The details of a document.changed event: `state_vector` (base64), and `text` or `json` with `include`."""

    def __init__(self, store: Store, rooms: Rooms, include: str, limit: int) -> None:
        self.store = store
        self.rooms = rooms
        self.include = include
        """none, text or json (`--webhook-include`)."""
        self.limit = limit
        self._threads = asyncio.Semaphore(1)

    async def __call__(self, name: str) -> dict[str, Any]:
        room = self.rooms.get(name)
        if room is not None:
            state = room.state_vector()
            update = room.diff(EMPTY_STATE_VECTOR) if self.include != "none" else b""
        else:
            async with asyncio.timeout(LOAD_TIMEOUT):
                records = await self.store.load(name)
            if not records:
                return {"state_vector": None}  # deleted (or renamed) before the event was sent
            async with self._threads:
                update = await asyncio.to_thread(update_from_records, name, records)
            state = get_state(update)
        details: dict[str, Any] = {"state_vector": base64.b64encode(state).decode()}
        if self.include != "none":
            details.update(await self._export(update))
        return details

    async def _export(self, update: bytes) -> dict[str, Any]:
        fmt = "txt" if self.include == "text" else "json"
        async with self._threads:
            data = await asyncio.to_thread(lambda: render(doc_from_updates([update]), fmt))
        if len(data) > self.limit:
            return {f"{self.include}_omitted": f"larger than {self.limit} bytes ({len(data)})"}
        if fmt == "txt":
            return {"text": data.decode()}
        return {"json": json.loads(data)["roots"]}
