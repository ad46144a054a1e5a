"""`crossproc`: delivery latency when every room's writers are on one process and its readers on another.

fanout's workload (`fanout.paced`): rooms of `clients`, `writers` of them typing at `rate`, each delivery's
latency measured on the harness's one clock, from when the keystroke was sent to when the message carrying
it arrived (`Delays`: across processes a message may carry several keystrokes merged, see `cluster.Arrivals`;
a backspace in such a batch counts as arrived with the insert after it). First all on one collab process
(no relay), then on two `--relay` processes A and B sharing one SQLite file, each on its own port: the
writers join A and the readers B, so that every delivery timed (the readers' only: a writer gets the other
writers' updates from its own process) crosses A → Redis → B. Afterwards every client, and what a newcomer
gets from each process, is compared with what was typed. The CPU per update counts every collab process of
the side; the Redis server's is given apart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..context import Context, close_all
from ..peer import Peer, join, text_of
from ..relay import RedisServer, prefix_for
from ..results import Meter, Result, percentile
from ..servers import ManagedTarget, Target
from ..sizes import Crossproc
from ..workload import Stream
from .cluster import Arrivals, Group, cluster_base, process, record_sides, relay_args, started
from .common import server_text, wait_until
from .fanout import verify, write_all_paced

DRAIN_TIMEOUT = 30.0


class Delays:
    """Send times per writer, and every keystroke's delay until it arrived at each reader."""

    def __init__(self, streams: list[Stream]) -> None:
        self.arrivals = Arrivals(streams)
        self.sent_at: list[list[float]] = [[] for _ in streams]
        self.samples: list[float] = []

    def listen(self, reader: Peer) -> None:
        arrived = [0] * len(self.sent_at)
        through, sent_at, samples = self.arrivals.through, self.sent_at, self.samples
        perf_counter = time.perf_counter

        def on_update(peer: Peer, message: bytes) -> None:
            now = perf_counter()
            for w, count in through(message):
                sent = sent_at[w]
                samples.extend(now - sent[k] for k in range(arrived[w], count))
                arrived[w] = max(arrived[w], count)

        reader.on_update = on_update


@dataclass
class Side:
    samples: list[float] = field(default_factory=list)
    updates: int = 0
    meter: Meter | None = None
    redis_cpu: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.crossproc
    if size.clients <= size.writers:
        raise ValueError("crossproc needs more clients than writers per room: the readers are what is timed")
    result = Result("crossproc", target.name, params=vars(size).copy())
    found = cluster_base(target, result)
    if found is None:
        return result
    base, redis = found
    prefix = prefix_for(ctx.run_id, "crossproc")
    shared = ctx.run_dir / f"{target.name}-crossproc-shared"
    shared.mkdir(parents=True, exist_ok=True)
    relay = relay_args(redis, prefix)
    one = Group("one", [process(base, "one")])
    pair = Group(
        "cross",
        [process(base, name, *relay, db_file=shared / "collab.db") for name in ("a", "b")],
        redis,
        prefix,
    )
    sides: dict[str, Side] = {}
    for label, group in (("one", one), ("cross", pair)):
        async with started(group, "crossproc", ctx.run_dir):
            sides[label] = await measure(ctx, size, group, group.members[0], group.members[-1], redis)
    for label, side in sides.items():
        assert side.meter is not None
        result.checks.update({f"{label}_{name}": ok for name, ok in side.checks.items()})
        result.metrics[f"{label}_p50_ms"] = round(percentile(side.samples, 50) * 1000, 3)
        result.metrics[f"{label}_p99_ms"] = round(percentile(side.samples, 99) * 1000, 3)
        result.metrics[f"{label}_max_ms"] = round(max(side.samples) * 1000, 3)
        if side.meter.server_cpu is not None:
            result.metrics[f"{label}_us_per_update"] = round(side.meter.server_cpu / side.updates * 1e6, 1)
        if side.redis_cpu is not None:
            result.metrics[f"{label}_redis_us_per_update"] = round(side.redis_cpu / side.updates * 1e6, 1)
    result.metrics["deliveries"] = len(sides["cross"].samples)
    record_sides(result, [side.meter for side in sides.values() if side.meter is not None])
    return result


async def measure(
    ctx: Context,
    size: Crossproc,
    group: Group,
    writers_on: ManagedTarget,
    readers_on: ManagedTarget,
    redis: RedisServer,
) -> Side:
    """fanout's run, with each room's writers joined to `writers_on` and its readers to `readers_on`."""
    side = Side()
    n = max(1, round(size.rate * size.seconds))
    rooms = [ctx.room("crossproc", r) for r in range(size.rooms)]
    streams = [
        [ctx.stream("crossproc", r * size.writers + w, n) for w in range(size.writers)] for r in range(size.rooms)
    ]
    peers: list[list[Peer]] = []
    for room in rooms:
        joins = [join((writers_on if i < size.writers else readers_on).url(room), index=i) for i in range(size.clients)]
        peers.append(list(await asyncio.gather(*joins)))
    latencies = Delays([stream for room_streams in streams for stream in room_streams])
    for room_peers in peers:
        for reader in room_peers[size.writers :]:
            latencies.listen(reader)
    expected_deliveries = size.rooms * size.writers * n * (size.clients - size.writers)
    try:
        redis_before = redis.cpu_seconds()
        with Meter(group) as meter:
            await write_all_paced(peers, streams, latencies.sent_at, size.rate)
            drained = await wait_until(lambda: len(latencies.samples) >= expected_deliveries, DRAIN_TIMEOUT)
        redis_after = redis.cpu_seconds()
        side.meter = meter
        side.samples = latencies.samples
        side.updates = size.rooms * size.writers * n
        if group.redis is not None and redis_before is not None and redis_after is not None:
            side.redis_cpu = redis_after - redis_before
        side.checks["drained"] = drained
        side.checks["converged"] = await verify(readers_on, rooms, peers, streams, size.writers)
        if writers_on is not readers_on:
            for room, room_streams in zip(rooms, streams, strict=True):
                expected = text_of(*(stream.updates for stream in room_streams))
                side.checks["converged"] &= await server_text(writers_on, room) == expected
    finally:
        await close_all(peer for room_peers in peers for peer in room_peers)
    return side
