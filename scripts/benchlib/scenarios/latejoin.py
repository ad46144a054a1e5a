"""`latejoin`: a document of N keystrokes, then a fresh client's time to fully synced, warm and cold.

Setup (not timed): one writer uploads a typist's N keystrokes (merged `upload_chunk` at a time) and a
barrier (a sync step 1 and its answer) confirms the server has them all. Warm: while the writer stays
connected, a new client connects, sends its sync step 1 as soon as the handshake completes, as the stock
provider does, and the clock stops when the server's sync step 2 has fully arrived: connect, handshake,
the server computing the diff, and the transfer. The first join's step 2 is decoded and compared with the
document (after the clock stops). Cold (collab): the writer leaves, the harness waits for collab to log
that it unloaded the room (compacted to SQLite and dropped from memory), and the join also includes
loading the room from the database. A server that cannot unload on request (the reference keeps
documents in memory) has no cold numbers.
"""

from __future__ import annotations

import asyncio
import time

from ..context import Context
from ..peer import Peer, join, text_of, updates_in
from ..results import Meter, Result, median
from ..servers import Target
from ..workload import chunked, expected_text
from ..wsclient import connect

UNLOAD_TIMEOUT = 60.0


def label(ops: int) -> str:
    return f"{ops // 1000}k" if ops % 1000 == 0 else str(ops)


async def timed_join(url: str) -> tuple[float, Peer]:
    """Seconds from the start of the TCP connect until the server's sync step 2 has arrived."""
    started = time.perf_counter()
    async with asyncio.timeout(60):
        ws = await connect(url)
        peer = Peer(ws, keep=False)
        peer.send_sync_step1()
        arrived = await peer.synced
    return arrived - started, peer


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.latejoin
    result = Result("latejoin", target.name, params={**vars(size), "ops": list(size.ops)})
    samples: dict[str, list[float]] = {}
    streams = [ctx.stream("latejoin", 0, ops) for ops in size.ops]
    uploads = [chunked(stream, size.upload_chunk) for stream in streams]
    with Meter(target) as meter:
        for index, (ops, stream, upload) in enumerate(zip(size.ops, streams, uploads, strict=True)):
            room = ctx.room("latejoin", index)
            expected = expected_text([stream])
            writer = await join(target.url(room), keep=False)
            for i, frame in enumerate(upload):
                writer.ws.write_frame(frame)
                if i % 100 == 99:
                    await writer.ws.drain()
            await writer.barrier(stream.state_vector)
            warm = []
            for rep in range(size.warm_joins):
                seconds, peer = await timed_join(target.url(room))
                warm.append(seconds)
                if rep == 0:
                    result.checks[f"warm_{label(ops)}_complete"] = text_of(updates_in([peer.step2])) == expected
                    result.metrics[f"step2_kb_{label(ops)}"] = round(len(peer.step2) / 1024, 1)
                await peer.close()
            samples[f"warm_{label(ops)}"] = warm
            await writer.close()
            if not target.can_unload:
                continue
            cold = []
            for rep in range(size.cold_joins):
                await target.wait_unloaded(room, UNLOAD_TIMEOUT, occurrence=rep + 1)
                seconds, peer = await timed_join(target.url(room))
                cold.append(seconds)
                if rep == 0:
                    result.checks[f"cold_{label(ops)}_complete"] = text_of(updates_in([peer.step2])) == expected
                await peer.close()
            samples[f"cold_{label(ops)}"] = cold
    meter.record(result)
    for key, values in samples.items():
        result.metrics[f"{key}_ms"] = round(median(values) * 1000, 3)
    result.params["samples_ms"] = {key: [round(v * 1000, 3) for v in values] for key, values in samples.items()}
    if not target.can_unload:
        result.notes.append("no cold joins: this server cannot be told to unload a room")
    return result
