"""`conns`: N idle connections over M rooms; the server's RSS per connection, and the connect rate.

First one client joins each of the M rooms and stays, so that the rooms (and the code paths) exist before
the baseline. Then N more clients connect, `concurrency` handshakes at a time, each one complete when the
server's sync step 2 arrives: connections per second is N / that time. After a second's rest, the server's
RSS (VmRSS from /proc/PID/status) minus the baseline, over N, is the memory one idle connection holds.
"""

from __future__ import annotations

import asyncio
import resource

from ..context import Context, close_all
from ..peer import Peer, join
from ..results import Meter, Result
from ..servers import Target

SETTLE_S = 1.0


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.conns
    result = Result("conns", target.name, params=vars(size).copy())
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < size.connections + size.rooms + 100:
        result.skipped = f"RLIMIT_NOFILE is {soft}: too low for {size.connections} connections"
        return result
    urls = [target.url(ctx.room("conns", r)) for r in range(size.rooms)]
    peers: list[Peer] = []
    semaphore = asyncio.Semaphore(size.concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            peers.append(await join(urls[i % size.rooms], keep=False))

    try:
        peers.extend([await join(url, keep=False) for url in urls])
        await asyncio.sleep(SETTLE_S)
        baseline = target.rss_bytes()
        with Meter(target) as meter:
            await asyncio.gather(*(one(i) for i in range(size.connections)))
        meter.record(result)
        await asyncio.sleep(SETTLE_S)
        after = target.rss_bytes()
        result.metrics["connects_per_s"] = round(size.connections / meter.wall)
        if baseline is not None and after is not None:
            result.metrics["rss_per_conn_kb"] = round((after - baseline) / size.connections / 1024, 2)
            result.metrics["rss_mb"] = round(after / 2**20, 1)
        else:
            result.notes.append("no RSS: the harness did not start this server")
        result.checks["all_connected"] = len(peers) == size.rooms + size.connections
    finally:
        await close_all(peers, timeout=60.0)
    return result
