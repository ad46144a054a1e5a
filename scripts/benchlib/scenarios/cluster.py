"""What the cluster scenarios (issue 12) share: the collab processes they compare, Redis, and where things run.

A cluster scenario is collab against collab (the reference has no cluster mode): it starts each side of its
comparison itself, as a `Group` of collab processes built from the harness's collab (`process`: the same
command, environment and tree, with more arguments), one side after the other in one run, so that both meet
the same machine. A side with a relay gets `--relay <COLLAB_BENCH_REDIS> --relay-prefix bench_<run>:<scenario>:`;
once its processes have stopped, every key under that prefix is deleted. The Redis server's own CPU is
measured apart (`RedisServer.cpu_seconds`): it is not collab's, but it runs on the same cores.

Across processes an update does not arrive as it was sent: a process publishes what one turn of its loop
accepted for a room as one merged update (`collab.sync.room.Room.flush`), so a reader on another process gets
several keystrokes, of several writers, in one message. `Arrivals` tells from a message how far each writer's
keystrokes have come, whether it is one as sent or a merged batch.

`placement` says where the load generator and the servers run: on a machine with a core to spare beyond the
servers', the load generator gets its own core (`pinned`) and the servers the others (`taskset`); with fewer
(this project's 2-core machine) nothing is pinned and everything competes for the cores, which the results say.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from collab.sync.protocol import Update
from collab.sync.yupdate import struct_ends

from ..relay import RedisServer
from ..results import Meter, Result
from ..servers import ManagedTarget, Target
from ..workload import Stream

__all__ = [
    "COLLAB_VS_COLLAB",
    "Arrivals",
    "Group",
    "cluster_base",
    "pinned",
    "placement",
    "placement_note",
    "process",
    "record_sides",
    "relay_args",
    "started",
]

COLLAB_VS_COLLAB = "collab against collab: the reference server has no cluster mode"
START_TIMEOUT = 30.0
"""Seconds every worker of a `--workers` server has to say it serves (each is a fresh interpreter)."""


class Arrivals:
    """How many of each writer's keystrokes a reader has once a message arrives.

    A message that is one keystroke's update as sent (what one process relays to its own peers) is looked up
    as it is. Any other is a merged batch: for each writer with structs in it, `struct_ends` gives the clock
    after its last one, and every keystroke up to the last insert ending there has arrived. A keystroke that
    only deletes (a backspace) moves no clock, so in a batch it counts as arrived with the next insert after it;
    `settled(w, sent)` is what a reader can be credited with once the writer has sent `sent`, and a writer
    that stops should stop after an insert (every stream ends with one) for its reader to be credited all.
    """

    def __init__(self, streams: list[Stream]) -> None:
        self._exact = {
            Update(update).encode(): (w, k + 1)
            for w, stream in enumerate(streams)
            for k, update in enumerate(stream.updates)
        }
        self._writer = {stream.client_id: w for w, stream in enumerate(streams)}
        self._insert_ends: list[list[int]] = []
        self._insert_through: list[list[int]] = []
        self._settled: list[list[int]] = []
        for stream in streams:
            ends, through, settled = [], [], [0]
            for k, update in enumerate(stream.updates):
                end = struct_ends(update).get(stream.client_id)
                if end is not None:
                    ends.append(end)
                    through.append(k + 1)
                settled.append(k + 1 if end is not None else settled[-1])
            self._insert_ends.append(ends)
            self._insert_through.append(through)
            self._settled.append(settled)

    def through(self, message: bytes) -> list[tuple[int, int]]:
        """(writer, keystrokes arrived) for each writer whose keystrokes `message` (`0 2 len update`) carries."""
        exact = self._exact.get(message)
        if exact is not None:
            return [exact]
        pos = 2
        while message[pos] & 0x80:  # the update's length
            pos += 1
        arrived = []
        for client, end in struct_ends(message[pos + 1 :], strict=False).items():
            w = self._writer.get(client)
            if w is not None:
                i = bisect.bisect_right(self._insert_ends[w], end)
                if i:
                    arrived.append((w, self._insert_through[w][i - 1]))
        return arrived

    def settled(self, writer: int, sent: int) -> int:
        """Of the first `sent` keystrokes of `writer`, how many a reader can be credited with: up to the last
        insert among them."""
        return self._settled[writer][sent]


def cluster_base(target: Target, result: Result) -> tuple[ManagedTarget, RedisServer] | None:
    """The harness's collab and the Redis to relay through; None (and `result` skipped, saying why) without."""
    if not isinstance(target, ManagedTarget) or target.kind != "collab":
        result.skipped = "only a collab the harness starts runs the cluster scenarios"
        return None
    if not isinstance(target.redis, RedisServer):
        result.skipped = target.redis or "no Redis was looked for"
        return None
    result.notes.append(COLLAB_VS_COLLAB)
    # Several processes are compared one after the other: a machine busy with something else skews one side.
    result.notes.append(f"load average {os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} cores at the start")
    return target, target.redis


def record_sides(result: Result, meters: list[Meter]) -> None:
    """The result's wall time, load generator's and server's CPU: the sum over the sides' measured parts."""
    result.wall_s = round(sum(meter.wall for meter in meters), 4)
    result.loadgen_cpu_s = round(sum(meter.cpu for meter in meters), 4)
    server = [meter.server_cpu for meter in meters]
    result.server_cpu_s = None if None in server else round(sum(cpu or 0.0 for cpu in server), 4)


def relay_args(redis: RedisServer, prefix: str) -> list[str]:
    return ["--relay", redis.url, "--relay-prefix", prefix]


def process(
    base: ManagedTarget,
    suffix: str,
    *args: str,
    db_file: Path | None = None,
    tree: bool = False,
    cpus: set[int] | None = None,
) -> ManagedTarget:
    """`base`'s collab with `args` added (under `taskset -c cpus` when given), as server `<base>-<suffix>` (its
    directory and log are named so: another collab of the run, `--collab NAME=DIR`, gets its own).

    `db_file`: a SQLite file shared with the scenario's other processes. `tree`: count the CPU time of its
    descendants too (a `--workers` supervisor).
    """
    escaped = [arg.replace("{", "{{").replace("}", "}}") for arg in args]  # the command's parts are formatted
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    return ManagedTarget(
        f"{base.name}-{suffix}",
        base.kind,
        [*pin, *base.command, *escaped],
        env=base.env,
        version=base.version,
        db_file=db_file,
        tree=tree,
    )


class Group(Target):
    """One side of a comparison: collab processes started and stopped together, measured as one server.

    `url(room)` reaches the first process; `members[i].url(room)` any other. Its CPU time is the sum of its
    processes' (each with its descendants, see `process`). With `workers`, `start` also waits until that many
    workers have logged that they serve: the first one listening is not all of them, and a connection made
    before the second listens lands on the first. `stop` deletes the keys under `prefix` from `redis`.
    """

    def __init__(
        self,
        name: str,
        members: list[ManagedTarget],
        redis: RedisServer | None = None,
        prefix: str | None = None,
        workers: int = 1,
    ) -> None:
        self.name = name
        self.kind = "collab"
        self.members = members
        self.redis = redis
        self.prefix = prefix
        self.workers = workers
        self.base_url = ""

    async def start(self, scenario: str, run_dir: Path) -> None:
        try:
            for member in self.members:
                await member.start(scenario, run_dir)
                if self.workers > 1:
                    await member.wait_log(r"worker \d+ serving", START_TIMEOUT, occurrence=self.workers)
        except BaseException:
            await self.stop()
            raise
        self.base_url = self.members[0].base_url

    async def stop(self) -> None:
        try:
            await asyncio.gather(*(member.stop() for member in self.members))
        finally:
            if self.redis is not None and self.prefix is not None:
                await asyncio.to_thread(self.redis.delete_keys, self.prefix)

    def cpu_seconds(self) -> float | None:
        seconds = [member.cpu_seconds() for member in self.members]
        return None if None in seconds else sum(second or 0.0 for second in seconds)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"[{member.name}]\n{member.log_tail(lines)}" for member in self.members)


@asynccontextmanager
async def started(group: Group, scenario: str, run_dir: Path) -> AsyncIterator[Group]:
    """`group` running for the block; a failure inside prints its logs' tails (the error alone rarely says why)."""
    await group.start(scenario, run_dir)
    try:
        yield group
    except BaseException:
        print(group.log_tail(), flush=True, file=sys.stderr)
        raise
    finally:
        await group.stop()


def placement(server_cores: int) -> tuple[set[int] | None, set[int] | None]:
    """(the load generator's cores, the servers' cores): a core of its own for the load generator when
    `server_cores` more remain for the servers and taskset can pin them; else (None, None), nothing pinned."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < server_cores + 1 or shutil.which("taskset") is None:
        return None, None
    return {cores[-1]}, set(cores[:-1])


def placement_note(loadgen: set[int] | None, servers: set[int] | None, server_cores: int) -> str:
    cores = len(os.sched_getaffinity(0))
    if loadgen is None or servers is None:
        return (
            f"nothing pinned: {cores} cores for {server_cores} server processes and the load generator, so they"
            " compete for the cores (and with Redis); the load generator's share of a core is in the metrics"
        )
    cpus = ",".join(map(str, sorted(servers)))
    return f"the load generator pinned to CPU {min(loadgen)}, the servers (taskset) to CPU {cpus}"


@contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Run this process (every thread it has) on `cores` for the block; None: leave it where it is."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    _set_affinity(cores)
    try:
        yield
    finally:
        _set_affinity(before)


def _set_affinity(cores: set[int]) -> None:
    # sched_setaffinity(0) moves the calling thread only: the executor's threads are moved one by one.
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
