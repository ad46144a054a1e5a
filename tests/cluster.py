"""A cluster for the tests: collab processes sharing rooms through Redis, and a load balancer in front.

`Cluster` runs `python -m collab serve --relay ...` processes on one database (each a `ServerProcess`, so
they can be SIGTERMed and `kill -9`ed); `Balancer` is a TCP proxy on 127.0.0.1 that hands each new
connection to the next process that accepts it, as a load balancer without sticky sessions would: a
client whose process died reconnects through it to another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from .helpers import ServerProcess, http_get

__all__ = ["Balancer", "Cluster", "metric"]

PIPE_CHUNK = 65536


class Balancer:
    """Round-robin TCP proxy over `ports`; a port that refuses is skipped (its process is down)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, room: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}" + (f"/{room}" if room else "")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._pipes.discard(task)
            for closing in (writer, up_writer):
                closing.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(PIPE_CHUNK):
                target.write(data)
                await target.drain()


class Cluster:
    """`count` collab processes on database `db`, relaying through Redis at `relay` under `prefix`."""

    def __init__(self, db: str | Path, relay: str, prefix: str, count: int, *args: str) -> None:
        self.processes = [
            ServerProcess(db, "--relay", relay, "--relay-prefix", prefix, "--log-level", "debug", *args)
            for _ in range(count)
        ]

    def __enter__(self) -> Cluster:
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                process.stop()

    def __iter__(self) -> Iterator[ServerProcess]:
        return iter(self.processes)

    def __getitem__(self, index: int) -> ServerProcess:
        return self.processes[index]

    @property
    def ports(self) -> list[int]:
        return [process.port for process in self.processes]


def metric(port: int, name: str) -> float:
    """One unlabelled sample of a server's /metrics (0 if it has none)."""
    body = http_get(port, "/metrics").body.decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    return float(match[1]) if match else 0.0
