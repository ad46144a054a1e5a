"""A y-websocket client as cheap as the protocol allows: it counts frames and keeps their bytes.

A `Peer` answers the server's sync step 1 (it has nothing the server lacks: writers only send their
updates after joining), asks for the server's state with its own step 1, and is `synced` once the step 2
arrives. Every other message costs one call and a couple of byte comparisons: update messages are
counted and, when `keep` is set, kept as the bytes received, to be decoded once at the end
(`received_text`). Scenarios hang their own per-update work on `on_update`.

Message bytes (see collab.protocol): 0 0 ... sync step 1, 0 1 ... sync step 2, 0 2 ... update,
1 ... awareness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from pycrdt import Doc, Text, merge_updates

from collab.formats import CONTENT_ROOT as TEXT_NAME
from collab.sync.protocol import SyncStep1, SyncStep2, Update, parse_frame
from collab.sync.room import EMPTY_STATE_VECTOR, EMPTY_UPDATE

from .wsclient import WsClient, connect

__all__ = ["EMPTY_STATE_VECTOR", "TEXT_NAME", "Peer", "join", "text_of"]

DECODE_CHUNK = 64


class Peer:
    """One joined client of one room."""

    __slots__ = ("_answer", "frames", "index", "keep", "kept", "on_update", "step2", "synced", "updates", "ws")

    def __init__(self, ws: WsClient, *, keep: bool = True, index: int = 0) -> None:
        self.ws = ws
        self.keep = keep
        self.kept: list[bytes] = []
        """Sync step 2 and update messages, as received (when `keep`)."""
        self.frames = 0
        self.updates = 0
        self.synced: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        """Resolves to the time.perf_counter() at which the server's sync step 2 arrived."""
        self.on_update: Callable[[Peer, bytes], None] | None = None
        self.index = index
        self.step2 = b""
        self._answer: asyncio.Future[bytes] | None = None
        ws.set_handler(self._on_message)

    def _on_message(self, message: bytes) -> None:
        self.frames += 1
        if message[0] != 0:
            return  # awareness: nothing to do for a passive peer
        kind = message[1]
        if kind == 2:
            self.updates += 1
            if self.keep:
                self.kept.append(message)
            if self.on_update is not None:
                self.on_update(self, message)
        elif kind == 1:
            if self.keep:
                self.kept.append(message)
            if not self.synced.done():
                self.step2 = message
                self.synced.set_result(time.perf_counter())
            elif self._answer is not None and not self._answer.done():
                self._answer.set_result(message)
        elif kind == 0:
            self.ws.send(SyncStep2(EMPTY_UPDATE).encode())

    def send_sync_step1(self, state_vector: bytes = EMPTY_STATE_VECTOR) -> None:
        self.ws.send(SyncStep1(state_vector).encode())

    async def barrier(self, state_vector: bytes, timeout: float = 60.0) -> bytes:
        """Send a sync step 1 and wait for its answer: the server has then handled everything sent before."""
        self._answer = asyncio.get_running_loop().create_future()
        self.send_sync_step1(state_vector)
        async with asyncio.timeout(timeout):
            return await self._answer

    def received_text(self, own_updates: Iterable[bytes] = ()) -> str:
        """Decode everything kept (plus what this peer wrote itself) into the document's text."""
        return text_of(updates_in(self.kept), own_updates)

    async def close(self) -> None:
        await self.ws.close()


def updates_in(messages: Iterable[bytes]) -> list[bytes]:
    """The Yjs updates carried by sync step 2 and update messages."""
    updates = []
    for message in messages:
        for parsed in parse_frame(message):
            if isinstance(parsed, (Update, SyncStep2)):
                updates.append(parsed.update)
    return updates


def text_of(*update_lists: Iterable[bytes]) -> str:
    """The text of a document made of these updates.

    Applied in merged chunks: one by one, a typist's keystrokes cost pycrdt more and more each, and one
    merge_updates over tens of thousands of them is slower still.
    """
    updates = [update for updates in update_lists for update in updates]
    doc: Doc[Text] = Doc()
    for i in range(0, len(updates), DECODE_CHUNK):
        chunk = updates[i : i + DECODE_CHUNK]
        doc.apply_update(chunk[0] if len(chunk) == 1 else merge_updates(*chunk))
    return str(doc.get(TEXT_NAME, type=Text))


async def join(url: str, *, keep: bool = True, index: int = 0, timeout: float = 30.0) -> Peer:
    """Connect, sync, and return once the server's sync step 2 has arrived."""
    async with asyncio.timeout(timeout):
        ws = await connect(url, timeout)
        peer = Peer(ws, keep=keep, index=index)
        peer.send_sync_step1()
        await peer.synced
    return peer
