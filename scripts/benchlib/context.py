"""What every scenario of one run shares: sizes, a run id for room names, and workloads made once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .peer import Peer
from .sizes import Sizes
from .workload import Stream, load_or_type

__all__ = ["Context", "close_all"]

CLIENT_ID_BASE = 1_000_000


@dataclass
class Context:
    sizes: Sizes
    run_id: str
    run_dir: Path
    seed: int = 1
    cache: Path | None = None
    """Where generated workloads are kept between runs (None: make them every run)."""
    generation_s: float = 0.0
    """Time spent making (or reading) workloads, before any clock starts."""
    _streams: dict[tuple[str, int, int, str], Stream] = field(default_factory=dict)

    def room(self, scenario: str, index: int) -> str:
        return f"{scenario}-{self.run_id}-{index}"

    def stream(self, scenario: str, index: int, n: int, pattern: str = "typing") -> Stream:
        """Writer `index`'s n keystrokes for `scenario`: made on first use, the same for every server."""
        key = (scenario, index, n, pattern)
        stream = self._streams.get(key)
        if stream is None:
            started = time.perf_counter()
            client_id = CLIENT_ID_BASE + len(self._streams)
            stream = load_or_type(n, client_id, self.seed * 7919 + len(self._streams), self.cache, pattern)
            self._streams[key] = stream
            self.generation_s += time.perf_counter() - started
        return stream


async def close_all(peers: Iterable[Peer], timeout: float = 15.0) -> None:
    """Close connections, a bounded number at a time, giving up on stragglers after `timeout`."""
    peers = list(peers)
    semaphore = asyncio.Semaphore(200)

    async def close(peer: Peer) -> None:
        async with semaphore:
            await peer.ws.close(timeout=2.0)

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(close(peer) for peer in peers))
    except TimeoutError:
        for peer in peers:
            if peer.ws.transport is not None:
                peer.ws.transport.abort()
