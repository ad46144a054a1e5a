"""What several test files share: URLs, synced clients, a server in a subprocess, the Node client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from queue import Empty, Queue
from typing import Any
from urllib.parse import quote

from pycrdt import Doc, Text

from collab.client import Client
from collab.server.app import CollabServer

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "tests" / "interop"


def room_url(server: CollabServer | int, room: str) -> str:
    port = server if isinstance(server, int) else server.port
    return f"ws://127.0.0.1:{port}/{quote(room)}"


@asynccontextmanager
async def synced(url: str, doc: Doc | None = None) -> AsyncIterator[Client]:
    """A connected client whose first sync with the server is complete."""
    async with Client(url, doc) as client:
        async with asyncio.timeout(10):
            await client.synced.wait()
        yield client


def text(client: Client, name: str = "content") -> Text:
    return client.doc.get(name, type=Text)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll a condition that no event signals (a file on disk, a server's internals)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def still_works(server: CollabServer, client: Client, room: str, marker: str) -> None:
    """The client's edit reaches the server's document."""
    text(client).insert(len(str(text(client))), marker)
    await client.resync()
    document = server.rooms.get(room)
    assert document is not None and marker in str(document.doc.get("content", type=Text))


def stored_text(db_path: Path, room: str, name: str = "content") -> str | None:
    """The text a document has in the database right now, read as an outsider would (None: no such doc)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT id FROM documents WHERE name = ?", [room]).fetchone()
        if row is None:
            return None
        doc: Doc = Doc()
        for (data,) in conn.execute(
            """SELECT data FROM (SELECT id, data FROM snapshots WHERE doc_id = ?1 ORDER BY id DESC LIMIT 1)
               UNION ALL SELECT data FROM (SELECT id, data FROM updates WHERE doc_id = ?1 ORDER BY id)""",
            [row[0]],
        ):
            doc.apply_update(data)
    return str(doc.get(name, type=Text))


class ServerProcess:
    """`python -m collab serve` in a subprocess, for restarts, SIGTERM and kill -9."""

    def __init__(self, db_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.db_path = db_path
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.output: list[str] = []
        self._lines: Queue[str | None] = Queue()

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.output, self._lines = [], Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collab", "serve", "--port", str(self.port), "--db", str(self.db_path), *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=self.env,
        )
        threading.Thread(target=self._pump, args=(self.process, self._lines), daemon=True).start()
        match = self.wait_for_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout)
        self.port = int(match[1])
        return self

    def _pump(self, process: subprocess.Popen[str], lines: Queue[str | None]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Block until the server logs a line matching `pattern`."""
        regex = re.compile(pattern)
        for line in self.output:
            if match := regex.search(line):
                return match
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except Empty:
                raise TimeoutError(f"server never logged {pattern!r}; output:\n{''.join(self.output)}") from None
            if line is None:
                raise RuntimeError(f"server exited; output:\n{''.join(self.output)}")
            self.output.append(line)
            if match := regex.search(line):
                return match

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        # Collect what it logged on the way out.
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.output.append(line)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def url(self, room: str) -> str:
        return room_url(self.port, room)


class NodeClient:
    """The stock y-websocket provider under Node, driven by tests/interop/driver.mjs."""

    def __init__(self, server_url: str, room: str) -> None:
        self.server_url = server_url
        self.room = room
        self.events: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._ids = 0

    async def __aenter__(self) -> NodeClient:
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(INTEROP / "driver.mjs"),
            self.server_url,
            self.room,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=INTEROP,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None
        if self._process.returncode is None:
            self.send("exit")
            try:
                async with asyncio.timeout(10):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            self.events.append(json.loads(line))
            self._changed.set()
        self._changed.set()

    def send(self, cmd: str, **args: Any) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """The first event (past or future) matching `predicate`."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self._process is not None and self._process.returncode is not None and self._reader.done():
                    raise RuntimeError(f"node client exited; events: {self.events}")
                self._changed.clear()
                await self._changed.wait()

    async def synced(self) -> None:
        await self.wait_event(lambda event: event["event"] == "synced")

    async def snapshot(self) -> dict[str, Any]:
        self._ids += 1
        marker = self._ids
        count = len(self.events)
        self.send("snapshot", id=marker)
        await self.wait_event(lambda event: event.get("id") == marker)
        return next(event for event in self.events[count:] if event["event"] == "snapshot")

    async def wait_snapshot(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """Poll snapshots until one matches (the Node side has no event for 'text changed')."""
        async with asyncio.timeout(timeout):
            while True:
                snap = await self.snapshot()
                if predicate(snap):
                    return snap
                await asyncio.sleep(0.02)
