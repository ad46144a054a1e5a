"""`spread`: many rooms of two typists, on one collab process and on `--workers N` sharing one port (issue 12).

Each room has two clients, both writing and each the other's reader; each may have at most `window`
keystrokes the other has not received yet and sends as fast as that allows (`Lane`, once per direction:
saturate's window, counted by `cluster.Arrivals`, since across workers keystrokes arrive merged). After
`seconds` the writers stop (each after an insert), and the clock stops when every keystroke has arrived. The same
rooms and typists run first on one process (no relay), then on a `--workers N --relay` server, where the
kernel (SO_REUSEPORT) spreads connections over the workers: about half the rooms then have their two clients
on different workers, whose updates cross through Redis and are merged by both. Reported per side: updates/s,
the server's CPU per update (the process, or the supervisor and its workers), the Redis server's CPU per
update, and the load generator's share of a core (near 1.0, the load generator is the bottleneck, and the
speedup says less about the server than about it). Afterwards every client's document, and what a newcomer
gets from the server, is compared with what was typed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..context import Context, close_all
from ..peer import Peer, text_of
from ..relay import RedisServer, prefix_for
from ..results import Meter, Result
from ..servers import Target
from ..sizes import Spread
from ..workload import Stream
from .cluster import (
    Arrivals,
    Group,
    cluster_base,
    pinned,
    placement,
    placement_note,
    process,
    record_sides,
    relay_args,
    started,
)
from .common import fill_room, server_text, wait_until

DRAIN_TIMEOUT = 60.0
JOINS_IN_FLIGHT = 50


class Lane:
    """One direction of a room: a writer's keystrokes to the other client, at most `window` of them not arrived.

    A writer that fills the window sleeps until the reader is within half of it, then sends a burst (waking
    per arrival would cost the load generator a task switch per update), as saturate's `RoomLoad` does.
    """

    def __init__(self, writer: Peer, reader: Peer, index: int, arrivals: Arrivals, window: int) -> None:
        self.writer = writer
        self.index = index
        self.arrivals = arrivals
        self.limit = window
        self.low_water = window // 2
        self.sent = self.arrived = 0
        self.wake = asyncio.Event()
        self.waiting = False
        self.stopped = False
        self.last_delivery = 0.0
        reader.on_update = self.on_message

    def on_message(self, reader: Peer, message: bytes) -> None:
        for writer, arrived in self.arrivals.through(message):
            if writer == self.index and arrived > self.arrived:
                self.arrived = arrived
        if self.waiting and self.pending() <= self.low_water:
            self.waiting = False
            self.wake.set()
        if self.arrived == self.sent:
            self.last_delivery = time.perf_counter()

    def pending(self) -> int:
        return self.arrivals.settled(self.index, self.sent) - self.arrived

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()

    async def write(self, stream: Stream) -> int:
        """Send `stream`'s frames, as many as the window allows at a time, until `stop()` (then up to an
        insert, so that the reader can be credited with all); return how many."""
        frames = stream.frames
        while self.sent < len(frames):
            if self.stopped and self.arrivals.settled(self.index, self.sent) == self.sent:
                break
            room = self.limit - self.pending()
            if room <= 0:
                self.waiting = True
                self.wake.clear()
                await self.wake.wait()
                continue
            burst = frames[self.sent : self.sent + (1 if self.stopped else room)]
            self.writer.ws.write_frames(burst)
            self.sent += len(burst)
        return self.sent


@dataclass
class Side:
    """What one side of the comparison did."""

    updates: int = 0
    seconds: float = 0.0
    meter: Meter | None = None
    redis_cpu: float | None = None
    ran_out: bool = False
    checks: dict[str, bool] = field(default_factory=dict)


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.spread
    result = Result("spread", target.name, params=vars(size).copy())
    found = cluster_base(target, result)
    if found is None:
        return result
    base, redis = found
    loadgen_cores, server_cores = placement(size.workers)
    result.notes.append(placement_note(loadgen_cores, server_cores, size.workers))
    prefix = prefix_for(ctx.run_id, "spread")
    one = Group("one", [process(base, "1", cpus=server_cores)])
    workers_args = ["--workers", str(size.workers), *relay_args(redis, prefix)]
    many = Group(
        "workers",
        [process(base, f"w{size.workers}", *workers_args, tree=True, cpus=server_cores)],
        redis,
        prefix,
        workers=size.workers,
    )
    streams = [ctx.stream("spread", i, size.cap) for i in range(2)]
    sides: dict[str, Side] = {}
    with pinned(loadgen_cores):
        for label, group in (("one", one), ("workers", many)):
            async with started(group, "spread", ctx.run_dir):
                sides[label] = await measure(ctx, size, group, streams, redis)
                # A worker that died and was restarted took its CPU time with it: the figures would be off.
                logs = [member.log_path.read_text(errors="replace") for member in group.members if member.log_path]
                restarts = sum(log.count("; restarting it") for log in logs)
                sides[label].checks["no_worker_restarted"] = restarts == 0
    for label, side in sides.items():
        assert side.meter is not None
        result.checks.update({f"{label}_{name}": ok for name, ok in side.checks.items()})
        result.metrics[f"{label}_updates_per_s"] = round(side.updates / side.seconds)
        if side.meter.server_cpu is not None:
            result.metrics[f"{label}_us_per_update"] = round(side.meter.server_cpu / side.updates * 1e6, 2)
            result.metrics[f"{label}_server_cores"] = round(side.meter.server_cpu / side.meter.wall, 3)
        if side.redis_cpu is not None:
            result.metrics[f"{label}_redis_us_per_update"] = round(side.redis_cpu / side.updates * 1e6, 2)
        result.metrics[f"{label}_loadgen_share"] = round(side.meter.cpu / side.meter.wall, 3)
        if side.ran_out:
            result.notes.append(f"{label}: a client used all {size.cap} prepared keystrokes: raise spread.cap")
    rates = {label: side.updates / side.seconds for label, side in sides.items()}
    result.metrics["speedup"] = round(rates["workers"] / rates["one"], 3)
    busy = result.metrics["workers_loadgen_share"]
    if busy is not None and busy >= 0.9:
        result.notes.append(
            f"the load generator used {busy:.2f} of a core during the workers' run: it may be what limits their"
            " throughput, so the speedup is a lower bound"
        )
    record_sides(result, [side.meter for side in sides.values() if side.meter is not None])
    return result


async def measure(ctx: Context, size: Spread, group: Group, streams: list[Stream], redis: RedisServer) -> Side:
    """The rooms' typing on `group`, from connecting to checking what everyone ended with."""
    side = Side()
    rooms = [ctx.room("spread", r) for r in range(size.rooms)]
    semaphore = asyncio.Semaphore(JOINS_IN_FLIGHT // 2)

    async def fill(room: str) -> list[Peer]:
        async with semaphore:
            return await fill_room(group.url(room), 2)

    peers = list(await asyncio.gather(*(fill(room) for room in rooms)))
    arrivals = Arrivals(streams)
    # Each client is the writer of one direction and the reader of the other.
    directions = [
        lane
        for first, second in peers
        for lane in (Lane(first, second, 0, arrivals, size.window), Lane(second, first, 1, arrivals, size.window))
    ]
    loop = asyncio.get_running_loop()
    try:
        redis_before = redis.cpu_seconds()
        with Meter(group) as meter:
            start = time.perf_counter()
            timers = [loop.call_later(size.seconds, lane.stop) for lane in directions]
            counts = await asyncio.gather(*(lane.write(streams[lane.index]) for lane in directions))
            for timer in timers:
                timer.cancel()  # if every client ran out of keystrokes early
            drained = await wait_until(lambda: all(lane.arrived == lane.sent for lane in directions), DRAIN_TIMEOUT)
            end = max(lane.last_delivery for lane in directions) if drained else time.perf_counter()
        redis_after = redis.cpu_seconds()
        side.meter = meter
        side.updates = sum(counts)
        side.seconds = end - start
        side.ran_out = any(count == size.cap for count in counts)
        if group.redis is not None and redis_before is not None and redis_after is not None:
            side.redis_cpu = redis_after - redis_before
        side.checks["drained"] = drained
        side.checks["converged"] = await verify(group, rooms, peers, streams, counts)
    finally:
        await close_all(peer for pair in peers for peer in pair)
    return side


async def verify(
    group: Group, rooms: list[str], peers: list[list[Peer]], streams: list[Stream], counts: list[int]
) -> bool:
    """Both clients of every room, and the server, have exactly what the two typed."""
    ok = True
    for r, (room, pair) in enumerate(zip(rooms, peers, strict=True)):
        sent = [stream.updates[: counts[2 * r + i]] for i, stream in enumerate(streams)]
        expected = text_of(*sent)
        for peer, own in zip(pair, sent, strict=True):
            ok &= peer.received_text(own) == expected
        ok &= await server_text(group, room) == expected
        await asyncio.sleep(0)
    return ok
