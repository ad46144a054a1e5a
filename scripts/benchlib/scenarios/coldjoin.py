"""`coldjoin`: a join on a process that does not hold the room, against a warm join on the one that does.

Two `--relay` processes A and B share one SQLite file. For each document size N, two rooms:

- **cold**: a document typed earlier. A plain collab (no relay) on the same file is given the first
  N - `recent` keystrokes (latejoin's upload: merged `upload_chunk` at a time, then a barrier) and stopped
  before A and B start, so that this history is in the store only. Then a writer joins A (A loads the room)
  and types the last `recent` keystrokes, one per update, and stays: A holds the room, and the relay
  retains those recent keystrokes. A new client joining B, which does not hold the room, waits for B to
  load the store *and* apply what the relay retains (A may not have committed all of it yet).
- **burst**: the whole document uploaded through A within the relay's retention (a paste, an import, a
  script): B's join then applies every chunk of it from the relay on top of the store, the worst case.

Warm: a new client joins A. Each join is timed as latejoin's (`latejoin.timed_join`: TCP connect to a
complete sync step 2); between cold joins the harness waits for B to log that it unloaded the room again.
The first join of each kind is decoded and compared with the document. Before anything is timed, each
process loads another room once. latejoin's cold join (one process, from SQLite alone) is the same measure
without the relay.
"""

from __future__ import annotations

import asyncio

from ..context import Context
from ..peer import Peer, join, text_of, updates_in
from ..relay import prefix_for
from ..results import Meter, Result, median
from ..servers import ManagedTarget, Target
from ..workload import Stream, chunked, expected_text
from .cluster import Group, cluster_base, process, relay_args, started
from .latejoin import label, timed_join

UNLOAD_TIMEOUT = 60.0
COMMIT_WAIT = 0.25
"""Seconds after an upload before any join: A's group commit (--commit-interval, 50 ms) has stored it by then,
so that B reads it from the store and applies what the relay retains on top."""


async def upload(writer: Peer, frames: list[bytes], stream: Stream) -> None:
    """Send `frames` (draining now and then), then wait until the server has everything of `stream` sent so far."""
    for i, frame in enumerate(frames):
        writer.ws.write_frame(frame)
        if i % 100 == 99:
            await writer.ws.drain()
    await writer.barrier(stream.state_vector)


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.coldjoin
    result = Result("coldjoin", target.name, params={**vars(size), "ops": list(size.ops)})
    found = cluster_base(target, result)
    if found is None:
        return result
    if not 0 < size.recent < min(size.ops):
        raise ValueError("coldjoin.recent must be more than 0 and less than every coldjoin.ops")
    base, redis = found
    prefix = prefix_for(ctx.run_id, "coldjoin")
    shared = ctx.run_dir / f"{target.name}-coldjoin-shared"
    shared.mkdir(parents=True, exist_ok=True)
    db = shared / "collab.db"
    streams = [ctx.stream("coldjoin", 0, ops) for ops in size.ops]
    old_rooms = [ctx.room("coldjoin", index) for index in range(len(size.ops))]
    burst_rooms = [ctx.room("coldjoin-burst", index) for index in range(len(size.ops))]
    async with started(Group("seed", [process(base, "seed", db_file=db)]), "coldjoin", ctx.run_dir) as seed:
        for room, ops, stream in zip(old_rooms, size.ops, streams, strict=True):
            writer = await join(seed.url(room), keep=False)
            await upload(writer, chunked(stream, size.upload_chunk, ops - size.recent), stream)
            await writer.close()
    relay = relay_args(redis, prefix)
    holder = process(base, "a", *relay, db_file=db)
    # B at debug level: the harness waits for its "unloaded room" lines between cold joins.
    joiner = process(base, "b", *relay, "--log-level", "debug", db_file=db)
    samples: dict[str, list[float]] = {}
    async with started(Group("pair", [holder, joiner], redis, prefix), "coldjoin", ctx.run_dir) as pair:
        # A process's first room load pays once for what later ones reuse (imports, statements, the relay's
        # first stream read): each loads another room first, untimed.
        for server in (holder, joiner):
            await (await join(server.url(ctx.room("coldjoin-warmup", 0)), keep=False)).close()
        with Meter(pair) as meter:
            for index, (ops, stream) in enumerate(zip(size.ops, streams, strict=True)):
                expected = expected_text([stream])
                writer = await join(holder.url(old_rooms[index]), keep=False)
                await upload(writer, stream.frames[ops - size.recent :], stream)
                await asyncio.sleep(COMMIT_WAIT)
                for kind, server, joins in (("warm", holder, size.warm_joins), ("cold", joiner, size.cold_joins)):
                    kept = samples.setdefault(f"{kind}_{label(ops)}", [])
                    step2 = await joins_of(server, server is joiner, old_rooms[index], joins, kept)
                    result.checks[f"{kind}_{label(ops)}_complete"] = text_of(updates_in([step2])) == expected
                    if kind == "warm":
                        result.metrics[f"step2_kb_{label(ops)}"] = round(len(step2) / 1024, 1)
                await writer.close()
                writer = await join(holder.url(burst_rooms[index]), keep=False)
                await upload(writer, chunked(stream, size.upload_chunk), stream)
                await asyncio.sleep(COMMIT_WAIT)
                kept = samples.setdefault(f"cold_burst_{label(ops)}", [])
                step2 = await joins_of(joiner, True, burst_rooms[index], size.cold_joins, kept)
                result.checks[f"cold_burst_{label(ops)}_complete"] = text_of(updates_in([step2])) == expected
                await writer.close()
    meter.record(result)
    for key, values in samples.items():
        result.metrics[f"{key}_ms"] = round(median(values) * 1000, 3)
    result.params["samples_ms"] = {key: [round(v * 1000, 3) for v in values] for key, values in samples.items()}
    return result


async def joins_of(server: ManagedTarget, cold: bool, room: str, joins: int, kept: list[float]) -> bytes:
    """`joins` timed joins of `room` on `server`, one after another, each into `kept`; the first one's sync
    step 2. `cold`: each join after the first waits for the server to have unloaded the room again."""
    first = b""
    for rep in range(joins):
        if cold and rep:
            await server.wait_unloaded(room, UNLOAD_TIMEOUT, occurrence=rep)
        seconds, peer = await timed_join(server.url(room))
        kept.append(seconds)
        first = first or peer.step2
        await peer.close()
    return first
