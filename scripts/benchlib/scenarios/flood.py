"""`flood`: clients flood one room as fast as TCP allows while a typist in another room types at a human rate.

Fairness, issue 9: a flood must hurt no one else. `flooders` clients in the flood room each send a
typist's keystrokes (one update per frame, prepared before the clock starts) as fast as their socket
takes them: a burst of frames, then a wait while the transport's write buffer is above its high-water
mark. collab, at its default `--max-messages-per-second`, slows them by reading their sockets more slowly
(TCP backpressure); the reference has no limit. Meanwhile a typist in another room sends `rate`
keystrokes per second to `readers` readers (the flood room has `audience` readers), and every delivery's
latency is measured as in `fanout`.

Reported: the typist's delivery latency (p50, p99, max), and the flood rate the server accepted (what a
reader in the flood room received per second during the window) next to what the flooders managed to
write into their sockets. The flooders' connections must still be open at the end (collab throttles, it
does not close), and the typist's room must converge. What the flooders wrote but the server had not read
yet when the window closed is dropped with their connections: at a throttled rate it would take minutes
to drain, and the flood room is not what is measured.
"""

from __future__ import annotations

import asyncio
import time

from ..context import Context, close_all
from ..peer import Peer, join
from ..results import Meter, Result, percentile
from ..servers import Target
from .common import fill_room, wait_until
from .fanout import Latencies, paced, verify

DRAIN_TIMEOUT = 30.0
BURST = 64
"""Frames a flooder writes at a time before it checks its socket can take more."""


class Flooder:
    """One client sending its frames as fast as its socket takes them, until told to stop."""

    def __init__(self, peer: Peer, frames: list[bytes]) -> None:
        self.peer = peer
        self.frames = frames
        self.sent = 0
        self.stopped = False

    async def run(self) -> None:
        ws, frames = self.peer.ws, self.frames
        while self.sent < len(frames) and not self.stopped and not ws.closed.done():
            ws.write_frames(frames[self.sent : self.sent + BURST])
            self.sent = min(len(frames), self.sent + BURST)
            await ws.drain()  # waits while the write buffer is above the high-water mark
            await asyncio.sleep(0)  # drain() does not yield when the socket can take more

    def abort(self) -> None:
        """Drop the connection and what it still had in flight (see the module docstring)."""
        if self.peer.ws.transport is not None:
            self.peer.ws.transport.abort()


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.flood
    result = Result("flood", target.name, params=vars(size).copy())
    n = max(1, round(size.rate * size.seconds))
    flood_room, typist_room = ctx.room("flood", 0), ctx.room("flood", 1)
    flood_streams = [ctx.stream("flood", i, size.cap) for i in range(size.flooders)]
    typist_stream = ctx.stream("flood-typist", 0, n)
    audience = await fill_room(target.url(flood_room), size.audience, keep=False)
    watcher = audience[0]
    flooders = [Flooder(await join(target.url(flood_room), keep=False), s.frames) for s in flood_streams]
    typists = await fill_room(target.url(typist_room), 1 + size.readers)
    latencies = Latencies([typist_stream])
    for peer in typists:
        latencies.listen(peer, 0 if peer.index == 0 else None)
    try:
        with Meter(target) as meter:
            start = time.perf_counter()
            flooding = [asyncio.create_task(flooder.run()) for flooder in flooders]
            # Let the flood reach its steady state (past collab's burst allowance) before typing.
            await asyncio.sleep(size.warmup)
            received_before = watcher.updates
            typing_started = time.perf_counter()
            await paced(typists[0], typist_stream.frames, latencies.sent_at[0], typing_started + 0.01, size.rate)
            window = time.perf_counter() - typing_started
            accepted = watcher.updates - received_before
            drained = await wait_until(lambda: len(latencies.samples) >= n * size.readers, DRAIN_TIMEOUT)
            for flooder in flooders:
                flooder.stopped = True
            await asyncio.gather(*flooding)
            flood_seconds = time.perf_counter() - start
        meter.record(result)
        open_at_end = all(not flooder.peer.ws.closed.done() for flooder in flooders)
        samples = latencies.samples
        result.checks["drained"] = drained
        result.checks["flooders_not_closed"] = open_at_end
        result.metrics = {
            "typist_p50_ms": round(percentile(samples, 50) * 1000, 3),
            "typist_p99_ms": round(percentile(samples, 99) * 1000, 3),
            "typist_max_ms": round(max(samples) * 1000, 3),
            "flood_accepted_per_s": round(accepted / window),
            "flood_written_per_s": round(sum(flooder.sent for flooder in flooders) / flood_seconds),
            "deliveries": len(samples),
        }
        if meter.server_cpu is not None:
            # What the flood costs the server: the share of one core it took, typist included.
            result.metrics["server_cpu_pct"] = round(meter.server_cpu / meter.wall * 100, 1)
        if any(flooder.sent == len(flooder.frames) for flooder in flooders):
            result.notes.append(f"a flooder sent all {size.cap} prepared keystrokes: raise flood.cap")
        for flooder in flooders:
            flooder.abort()
        result.checks["converged"] = await verify(target, [typist_room], [typists], [[typist_stream]], 1)
    finally:
        for flooder in flooders:
            flooder.abort()
        await close_all([*audience, *typists])
    return result
