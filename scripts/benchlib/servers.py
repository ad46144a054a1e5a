"""The servers under test: collab and the reference started fresh for each scenario, or any server by URL.

A `Target` says how to reach a server (`url(room)`), and, when the harness started it, its process id
(for RSS and CPU time from /proc) and its log. collab runs as `python -m collab serve` with persistence
on, in a temporary SQLite file, and as `collab-pg` on a fresh PostgreSQL database (see `postgres`), for
the scenarios that measure the store only; the reference is `@y/websocket-server` from
`.cache/bench/reference` (installed by `scripts/bench`), started as its package's `bin` is, with HOST and
PORT in the environment. The cluster scenarios (`CLUSTER_SCENARIOS`) run on collab alone and start their own
processes from its `ManagedTarget` (`scenarios/cluster.py`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from collab.config import Settings

from .postgres import PostgresServer

if TYPE_CHECKING:
    from .relay import RedisServer

__all__ = [
    "CLUSTER_SCENARIOS",
    "POSTGRES_SCENARIOS",
    "ExternalTarget",
    "ManagedTarget",
    "Target",
    "collab_pg_target",
    "collab_target",
    "has_cluster",
    "has_postgres",
    "process_cpu_seconds",
    "reference_target",
]

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = ROOT / ".cache" / "bench" / "reference"
REFERENCE_ENTRY = Path("node_modules/@y/websocket-server/src/server.js")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POSTGRES_SCENARIOS = ("latejoin", "persist")
"""What collab on PostgreSQL runs: the scenarios that go through the store (the others never touch it)."""
CLUSTER_SCENARIOS = ("spread", "crossproc", "relayoverhead", "coldjoin")
"""collab against collab: one process, several sharing rooms through Redis (issue 12). The reference has no
cluster mode, so only collab runs them, and each starts the processes it compares itself (`scenarios/cluster`)."""


class Target:
    """A server to measure."""

    name: str
    kind: str
    base_url: str
    pid: int | None = None
    unavailable: str | None = None
    """Why this server cannot be run here (no PostgreSQL, say): its results are skipped with this reason."""

    def runs(self, scenario: str) -> bool:
        """Whether `scenario` is measured on this server at all (a skipped one still is, and says why); the
        cluster scenarios only on a collab the harness starts."""
        return scenario not in CLUSTER_SCENARIOS

    def unavailable_for(self, scenario: str) -> str | None:
        """Why `scenario` cannot be run on this server here (its result is skipped with this reason), or None."""
        return self.unavailable

    def url(self, room: str) -> str:
        return f"{self.base_url}/{quote(room)}"

    @property
    def can_unload(self) -> bool:
        """Whether `wait_unloaded` can tell that a room went from memory to disk (a cold join)."""
        return False

    async def start(self, scenario: str, run_dir: Path) -> None:
        """Start a fresh server for `scenario` (a no-op for a server named by URL)."""

    async def stop(self) -> None:
        pass

    async def wait_unloaded(self, room: str, timeout: float, occurrence: int = 1) -> None:
        raise NotImplementedError(f"{self.name} cannot unload rooms on request")

    def rss_bytes(self) -> int | None:
        """Resident set size of the server process (VmRSS), if it is ours."""
        return None if self.pid is None else process_rss_bytes(self.pid)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process used so far."""
        return None if self.pid is None else process_cpu_seconds(self.pid)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind}


@dataclass
class ExternalTarget(Target):
    """A server someone else started: `--server NAME=ws://host:port`."""

    name: str
    base_url: str
    kind: str = "external"

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")


@dataclass
class ManagedTarget(Target):
    """A server process the harness starts, one per scenario, and stops afterwards."""

    name: str
    kind: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    version: str = ""
    scenario_args: dict[str, list[str]] = field(default_factory=dict)
    """Extra arguments for some scenarios (e.g. debug logs where the harness waits for log lines)."""
    scenarios: tuple[str, ...] | None = None
    """The scenarios it runs (None: all)."""
    postgres: PostgresServer | None = None
    """Where each scenario's fresh PostgreSQL database is made (None: a fresh SQLite file instead)."""
    db: str = ""
    """The running server's `--db` (`{db}` in `command`): a file in the scenario's directory, or a database URL."""
    base_url: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    profile_dir: Path | None = None
    """If set, py-spy records the server while each scenario runs (raw collapsed stacks, one file each)."""
    profiler: subprocess.Popen[bytes] | None = None
    cluster: bool = True
    """Whether this collab has `--relay` and `--workers` (issue 12 on): only then does it run CLUSTER_SCENARIOS."""
    redis: RedisServer | str | None = None
    """Where the cluster scenarios' relays run, or why they cannot (those results are skipped with the reason)."""
    db_file: Path | None = None
    """A SQLite file this server shares with others (the processes of a cluster scenario), not a new one."""
    tree: bool = False
    """Count the CPU time and RSS of the process's descendants too (a `--workers` supervisor's workers)."""

    @property
    def can_unload(self) -> bool:
        return self.kind == "collab"

    def runs(self, scenario: str) -> bool:
        if scenario in CLUSTER_SCENARIOS and (self.kind != "collab" or not self.cluster):
            return False
        return self.scenarios is None or scenario in self.scenarios

    def unavailable_for(self, scenario: str) -> str | None:
        if scenario in CLUSTER_SCENARIOS and isinstance(self.redis, str):
            return self.redis
        return self.unavailable

    def rss_bytes(self) -> int | None:
        if self.pid is None or not self.tree:
            return super().rss_bytes()
        total = process_rss_bytes(self.pid) or 0
        for child in descendants(self.pid):
            try:
                total += process_rss_bytes(child) or 0
            except OSError:
                continue  # exited in between
        return total

    def cpu_seconds(self) -> float | None:
        if self.pid is None or not self.tree:
            return super().cpu_seconds()
        return tree_cpu_seconds(self.pid)

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"name": self.name, "kind": self.kind, "version": self.version}
        if self.kind == "collab":
            sqlite = f"SQLite {sqlite3.sqlite_version}, a new file per scenario"
            described["db"] = self.unavailable or (sqlite if self.postgres is None else self.postgres.describe())
        return described

    async def start(self, scenario: str, run_dir: Path) -> None:
        """Start the server on a fresh database; if that fails, what was started is stopped and dropped again."""
        try:
            await self._start(scenario, run_dir)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, scenario: str, run_dir: Path) -> None:
        port = free_port()
        workdir = run_dir / f"{self.name}-{scenario}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        if self.db_file is not None:
            self.db = str(self.db_file)
        elif self.postgres is None:
            self.db = str(workdir / "collab.db")
        else:
            self.db = await asyncio.to_thread(self.postgres.create_database)
        argv = [part.format(port=port, dir=workdir, db=self.db) for part in self.command]
        argv += self.scenario_args.get(scenario, [])
        env = {**os.environ, **{key: value.format(port=port) for key, value in self.env.items()}}
        # Popen returns as soon as the child exists; the readiness wait below is the async part.
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.pid = self.process.pid
        self.base_url = f"ws://127.0.0.1:{port}"
        await wait_listening(port, self.process, self.log_path)
        if self.profile_dir is not None:
            self.profiler = start_py_spy(self.pid, self.profile_dir / f"{self.name}-{scenario}.txt")

    async def stop(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            await asyncio.to_thread(profiler.wait, 30)
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
            self.pid = None
        database, self.db = self.db, ""
        if self.postgres is not None and database:
            await asyncio.to_thread(self.postgres.drop_database, database)

    async def wait_unloaded(self, room: str, timeout: float, occurrence: int = 1) -> None:
        """Wait until collab logged (at debug level) its `occurrence`-th unload of `room`: compacted, flushed,
        dropped. (With --relay the line goes on with fields, `process=...`.)"""
        await self.wait_log(rf"unloaded room {re.escape(repr(room))}( |$)", timeout, occurrence)

    async def wait_log(self, pattern: str, timeout: float, occurrence: int = 1) -> None:
        """Wait until the server's log has `occurrence` lines matching `pattern`."""
        assert self.log_path is not None
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while len(regex.findall(self.log_path.read_text(errors="replace"))) < occurrence:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} never logged {pattern!r}")
            await asyncio.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


DEFAULT_RATE = f"{Settings.max_messages_per_second:g}"
"""collab's default --max-messages-per-second, passed explicitly so that older trees (--collab) run at it too."""


def collab_target(unload_after: float, name: str = "collab", source: Path | None = None) -> ManagedTarget:
    """collab with persistence on: a fresh SQLite file per scenario, default settings but the rate limit.

    `source`: a directory holding another `collab` package (say, an older commit's tree from `git archive`)
    to run instead of the installed one, with the same Python and dependencies.
    """
    command = [sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    command += ["--db", "{db}", "--unload-after", str(unload_after)]
    debug = ["--log-level", "debug"]  # only where the harness waits for "unloaded room"
    # saturate's writers send far faster than the per-connection rate limit allows a real client;
    # lifting it through the environment also works for older trees that lack the setting.
    env = {"COLLAB_MAX_MESSAGES_PER_SECOND": "0"}
    if source is not None:
        if not (source / "collab" / "__init__.py").exists():
            raise SystemExit(f"--collab {name}={source}: no collab package there")
        env["PYTHONPATH"] = str(source.resolve())
    return ManagedTarget(
        name,
        "collab",
        command,
        env=env,
        version=collab_version(source),
        # flood measures fairness at collab's default rate limit, which the environment lifted above.
        scenario_args={"latejoin": debug, "persist": debug, "flood": ["--max-messages-per-second", DEFAULT_RATE]},
    )


def collab_pg_target(
    unload_after: float, server: PostgresServer | str, name: str = "collab-pg", source: Path | None = None
) -> ManagedTarget:
    """collab as `collab_target` has it, on a fresh PostgreSQL database per scenario, for `POSTGRES_SCENARIOS`.

    `server`: where the databases are made, or why there is no PostgreSQL (every result then says so, skipped).
    """
    target = collab_target(unload_after, name, source)
    target.scenarios = POSTGRES_SCENARIOS
    if isinstance(server, str):
        target.unavailable = server
    else:
        target.postgres = server
    return target


def has_cluster(source: Path) -> bool:
    """Whether the collab tree in `source` (`--collab NAME=DIR`) can share rooms through Redis (issue 12 on)."""
    return (source / "collab" / "cluster" / "redis_relay.py").exists()


def has_postgres(source: Path) -> bool:
    """Whether the collab tree in `source` (`--collab NAME=DIR`) has the PostgreSQL engine (issue 11 on)."""
    return (source / "collab" / "store" / "postgres.py").exists()


def collab_version(source: Path | None) -> str:
    root = source or ROOT
    described = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return described.stdout.strip() or str(root)


def reference_target(directory: Path = REFERENCE_DIR) -> ManagedTarget:
    entry = directory / REFERENCE_ENTRY
    if not entry.exists():
        raise SystemExit(f"the reference server is not installed in {directory}: run scripts/bench, which installs it")
    package = (entry.parent.parent / "package.json").read_text()
    version = re.search(r'"version":\s*"([^"]+)"', package)
    yjs = (directory / "node_modules/yjs/package.json").read_text()
    yjs_version = re.search(r'"version":\s*"([^"]+)"', yjs)
    return ManagedTarget(
        "reference",
        "reference",
        ["node", str(entry)],
        env={"HOST": "127.0.0.1", "PORT": "{port}"},
        version=f"@y/websocket-server {version[1] if version else '?'}, yjs {yjs_version[1] if yjs_version else '?'}",
    )


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` at 100 Hz without pausing it (--nonblocking), into collapsed stacks at `output`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise RuntimeError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format", "raw"]
    return subprocess.Popen([*command, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` (of this machine) used so far; OSError if it cannot be read."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def process_rss_bytes(pid: int) -> int | None:
    """VmRSS of process `pid`, or None if it has none (a zombie); OSError if it cannot be read."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, their children...), from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])  # field 4, ppid
        except (OSError, IndexError, ValueError):
            continue  # gone since the listing
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its live descendants (a process that exited in between counts no more)."""
    total = process_cpu_seconds(pid)
    for child in descendants(pid):
        try:
            total += process_cpu_seconds(child)
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not listening on {port} after {timeout}s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return
