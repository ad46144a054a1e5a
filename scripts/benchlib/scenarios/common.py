"""Pieces several scenarios use: filling rooms with clients, checking what everyone ended with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..peer import Peer, join, text_of, updates_in
from ..servers import Target

__all__ = ["fill_room", "server_text", "wait_until"]


async def fill_room(url: str, clients: int, *, keep: bool = True) -> list[Peer]:
    """`clients` synced peers in one room; peer i has index i."""
    return list(await asyncio.gather(*(join(url, keep=keep, index=i) for i in range(clients))))


async def server_text(target: Target, room: str) -> str:
    """The room's text as a newcomer gets it from the server (its sync step 2)."""
    peer = await join(target.url(room), keep=False)
    try:
        return text_of(updates_in([peer.step2]))
    finally:
        await peer.close()


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True
