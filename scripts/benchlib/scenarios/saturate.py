"""`saturate`: writers send as fast as a bounded window allows; sustained updates/s and deliveries/s.

Each room has `writers` writers and `clients - writers` passive readers. A room's writers may have at most
`window` updates each that some reader has not received yet; within that, they send as fast as the loop
lets them. After `seconds`, the writers stop and the clock stops when every reader has every update.
Throughput is updates sent / that time; deliveries/s counts each update once per other client in its room
(a server that echoes an update to its sender, as the reference does, is not credited for the echo).
Afterwards every client's received updates are decoded and compared with what was written, and so is
what a newcomer gets from the server.
"""

from __future__ import annotations

import asyncio
import time

from ..context import Context, close_all
from ..peer import Peer, text_of
from ..results import Meter, Result
from ..servers import Target
from ..workload import Stream
from .common import fill_room, server_text, wait_until

DRAIN_TIMEOUT = 60.0


class RoomLoad:
    """One room's writers and readers, and the window that couples them.

    A writer that fills the window sleeps until the slowest reader has caught up to half of it, then sends
    a burst: waking per delivered update would cost the load generator a task switch per update.
    """

    def __init__(self, writers: list[Peer], readers: list[Peer], window: int) -> None:
        self.writers = writers
        self.readers = readers
        self.limit = window * len(writers)
        self.low_water = self.limit // 2
        self.sent = 0
        self.wake = asyncio.Event()
        self.waiting = False
        self.stopped = False
        self.last_delivery = 0.0
        for reader in readers:
            reader.on_update = self.on_delivery

    def delivered(self) -> int:
        return min(reader.updates for reader in self.readers)

    def on_delivery(self, reader: Peer, message: bytes) -> None:
        if self.waiting and self.sent - self.delivered() <= self.low_water:
            self.waiting = False
            self.wake.set()
        if reader.updates == self.sent:
            self.last_delivery = time.perf_counter()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()

    async def write(self, writer: Peer, stream: Stream) -> int:
        """Send `stream`'s frames, as much as the window allows at a time, until `stop()`; return how many."""
        frames = stream.frames
        sent = 0
        while sent < len(frames) and not self.stopped:
            room = self.limit - (self.sent - self.delivered())
            if room <= 0:
                self.waiting = True
                self.wake.clear()
                await self.wake.wait()
                continue
            burst = frames[sent : sent + room]
            writer.ws.write_frames(burst)
            self.sent += len(burst)
            sent += len(burst)
        return sent


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.saturate
    if size.clients <= size.writers:
        raise ValueError("saturate needs more clients than writers per room")
    result = Result("saturate", target.name, params=vars(size).copy())
    streams = [
        [ctx.stream("saturate", r * size.writers + w, size.cap) for w in range(size.writers)] for r in range(size.rooms)
    ]
    rooms = [ctx.room("saturate", r) for r in range(size.rooms)]
    peers = [await fill_room(target.url(room), size.clients) for room in rooms]
    loads = [RoomLoad(room_peers[: size.writers], room_peers[size.writers :], size.window) for room_peers in peers]
    loop = asyncio.get_running_loop()
    try:
        with Meter(target) as meter:
            start = time.perf_counter()
            timers = [loop.call_later(size.seconds, load.stop) for load in loads]
            counts = await asyncio.gather(
                *(
                    load.write(writer, stream)
                    for load, room_streams in zip(loads, streams, strict=True)
                    for writer, stream in zip(load.writers, room_streams, strict=True)
                )
            )
            for timer in timers:
                timer.cancel()  # if every writer ran out of keystrokes early
            drained = await wait_until(lambda: all(load.delivered() == load.sent for load in loads), DRAIN_TIMEOUT)
            end = max(load.last_delivery for load in loads) if drained else time.perf_counter()
        meter.record(result)
        total = sum(counts)
        elapsed = end - start
        result.metrics = {
            "updates_per_s": round(total / elapsed),
            "deliveries_per_s": round(total * (size.clients - 1) / elapsed),
            "updates": total,
            "seconds": round(elapsed, 3),
        }
        if meter.server_cpu is not None:
            # Less noisy than updates/s on a shared machine: what each update cost the server, all included.
            result.metrics["server_us_per_update"] = round(meter.server_cpu / total * 1e6, 2)
        result.checks["drained"] = drained
        if any(count == size.cap for count in counts):
            result.notes.append(f"a writer used all {size.cap} prepared keystrokes: raise saturate.cap")
        per_room = [counts[r * size.writers : (r + 1) * size.writers] for r in range(size.rooms)]
        result.checks["converged"] = await verify(target, rooms, loads, streams, per_room)
    finally:
        await close_all(peer for room_peers in peers for peer in room_peers)
    return result


async def verify(
    target: Target, rooms: list[str], loads: list[RoomLoad], streams: list[list[Stream]], counts: list[list[int]]
) -> bool:
    """Every client, and the server, has exactly what the writers sent."""
    ok = True
    for room, load, room_streams, room_counts in zip(rooms, loads, streams, counts, strict=True):
        sent = [stream.updates[:count] for stream, count in zip(room_streams, room_counts, strict=True)]
        expected = text_of(*sent)
        for reader in load.readers:
            ok &= reader.received_text() == expected
        for writer, own in zip(load.writers, sent, strict=True):
            ok &= writer.received_text(own) == expected
        ok &= await server_text(target, room) == expected
        await asyncio.sleep(0)
    return ok
