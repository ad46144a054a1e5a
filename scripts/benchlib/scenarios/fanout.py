"""`fanout`: rooms of clients, a few writers typing at a fixed rate; delivery latency and convergence.

Writer w sends its k-th keystroke at start + k / rate (writers staggered evenly within one interval) and notes when,
by time.perf_counter() (not loop.time(), which uvloop caches per iteration in milliseconds). Every other client of
the room, on receiving an update, reads the writer's client id from the update's first bytes (`writer_of`) and
counts that writer's updates: the k-th one received is the k-th sent, since a server relays one connection's updates
in order. Latency is receive time minus send time, on one monotonic clock (all clients live in this process). The
rate is meant to be well below saturation.

With `preload`, each writer's first `preload` keystrokes are uploaded (merged, by a separate connection) before
anyone joins: the clients start from a long document, and the writers go on with their long runs, which is what
makes each keystroke cost pycrdt more (see workload.PATTERNS).
"""

from __future__ import annotations

import asyncio
import time

from ..context import Context, close_all
from ..peer import EMPTY_STATE_VECTOR, Peer, join, text_of
from ..results import Meter, Result, percentile
from ..servers import Target
from ..workload import Stream, chunked, writer_of
from .common import fill_room, server_text, wait_until

DRAIN_TIMEOUT = 30.0


class Latencies:
    """Send times per writer, and every delivery's latency."""

    def __init__(self, streams: list[Stream]) -> None:
        self.writer_index = {stream.client_id: i for i, stream in enumerate(streams)}
        self.sent_at: list[list[float]] = [[] for _ in streams]
        self.samples: list[float] = []
        self.echoes = 0

    def listen(self, peer: Peer, own_writer: int | None) -> None:
        received = [0] * len(self.sent_at)
        writer_index, sent_at, samples = self.writer_index, self.sent_at, self.samples
        perf_counter = time.perf_counter

        def on_update(peer: Peer, message: bytes) -> None:
            now = perf_counter()
            w = writer_index[writer_of(message)]
            if w == own_writer:
                self.echoes += 1
                return
            samples.append(now - sent_at[w][received[w]])
            received[w] += 1

        peer.on_update = on_update


async def upload(url: str, streams: list[Stream], count: int) -> None:
    """Send each stream's first `count` keystrokes, merged 100 at a time, and wait until the server has them."""
    uploader = await join(url, keep=False)
    try:
        for stream in streams:
            for i, frame in enumerate(chunked(stream, 100, count)):
                uploader.ws.write_frame(frame)
                if i % 100 == 99:
                    await uploader.ws.drain()
        await uploader.barrier(EMPTY_STATE_VECTOR)
    finally:
        await uploader.close()


async def paced(peer: Peer, frames: list[bytes], sent_at: list[float], start: float, rate: float) -> None:
    interval = 1.0 / rate
    for k, frame in enumerate(frames):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at.append(time.perf_counter())
        peer.ws.write_frame(frame)


async def write_all_paced(
    peers: list[list[Peer]], streams: list[list[Stream]], sent_at: list[list[float]], rate: float, skip: int = 0
) -> None:
    """Every room's writers (the first `len(streams[r])` peers of room r) send their stream's frames after the
    first `skip`, each at `rate` per second, their starts spread evenly over one interval; `sent_at[i]` gets
    writer i's send times (i = room * writers + writer)."""
    writers = len(streams[0])
    total = len(streams) * writers
    start = time.perf_counter() + 0.05
    await asyncio.gather(
        *(
            paced(
                peers[r][w],
                streams[r][w].frames[skip:],
                sent_at[r * writers + w],
                start + (r * writers + w) / total / rate,
                rate,
            )
            for r in range(len(streams))
            for w in range(writers)
        )
    )


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.fanout
    result = Result("fanout", target.name, params=vars(size).copy())
    n = max(1, round(size.rate * size.seconds))
    rooms = [ctx.room("fanout", r) for r in range(size.rooms)]
    streams = [
        [ctx.stream("fanout", r * size.writers + w, size.preload + n, size.pattern) for w in range(size.writers)]
        for r in range(size.rooms)
    ]
    if size.preload:
        for room, room_streams in zip(rooms, streams, strict=True):
            await upload(target.url(room), room_streams, size.preload)
    peers = [await fill_room(target.url(room), size.clients) for room in rooms]
    latencies = Latencies([stream for room_streams in streams for stream in room_streams])
    for r, room_peers in enumerate(peers):
        for peer in room_peers:
            latencies.listen(peer, r * size.writers + peer.index if peer.index < size.writers else None)
    expected_deliveries = size.rooms * size.writers * n * (size.clients - 1)
    try:
        with Meter(target) as meter:
            await write_all_paced(peers, streams, latencies.sent_at, size.rate, size.preload)
            drained = await wait_until(lambda: len(latencies.samples) >= expected_deliveries, DRAIN_TIMEOUT)
        meter.record(result)
        samples = latencies.samples
        result.checks["drained"] = drained
        result.metrics = {
            "p50_ms": round(percentile(samples, 50) * 1000, 3),
            "p99_ms": round(percentile(samples, 99) * 1000, 3),
            "max_ms": round(max(samples) * 1000, 3),
            "deliveries": len(samples),
            "updates": size.rooms * size.writers * n,
        }
        if meter.server_cpu is not None:
            result.metrics["server_us_per_update"] = round(meter.server_cpu / (size.rooms * size.writers * n) * 1e6, 1)
        if latencies.echoes:
            result.notes.append(f"the server echoed {latencies.echoes} updates to their senders")
        result.checks["converged"] = await verify(target, rooms, peers, streams, size.writers)
    finally:
        await close_all(peer for room_peers in peers for peer in room_peers)
    return result


async def verify(
    target: Target, rooms: list[str], peers: list[list[Peer]], streams: list[list[Stream]], writers: int
) -> bool:
    """Every client, and the server, has every keystroke of the room."""
    ok = True
    for room, room_peers, room_streams in zip(rooms, peers, streams, strict=True):
        expected = text_of(*(stream.updates for stream in room_streams))
        for peer in room_peers:
            own = room_streams[peer.index].updates if peer.index < writers else []
            ok &= peer.received_text(own) == expected
        ok &= await server_text(target, room) == expected
        await asyncio.sleep(0)
    return ok
