"""`collab serve --workers N`: the supervisor, with real worker processes on one port (collab.cluster.workers).

What the workers do together (rooms converging across them) is the relay's to test; here: both serve the port,
a dead worker comes back, stopping stops them all, the supervisor's death takes them down, and what cannot work
ends with one line and exit status 2 instead of restarts forever.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from collab.cluster.workers import STOP_TIMEOUT, Backoff

from .helpers import ServerProcess, collab_cli, http_get, one_line, room_url

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers is Linux only (SO_REUSEPORT)")

CONNECTIONS = 32
"""Connections opened to see both workers answer: the kernel hashes each to one, so all 32 land on the same
worker once in 2**31 runs."""


@pytest.fixture
def relay(redis_url: str, relay_prefix: str) -> tuple[str, ...]:
    return ("--relay", redis_url, "--relay-prefix", relay_prefix)


@pytest.fixture
def supervisor(db_path: Path, relay: tuple[str, ...]) -> Iterator[ServerProcess]:
    """`collab serve --workers 2` on a free port, its first worker listening; killed with its workers after."""
    started = ServerProcess(db_path, "--workers", "2", *relay, "--log-level", "debug").start()
    yield started
    assert started.process is not None
    if started.process.poll() is None:
        pids = [int(pid) for pid in re.findall(r"worker \d+ serving .*\bpid=(\d+)", "".join(started.output))]
        started.kill()
        wait_gone(pids)


def worker_pids(server: ServerProcess, **old: int) -> dict[int, int]:
    """Worker index -> pid, from the supervisor's "worker N serving" lines; a worker in `old` (worker1=pid) must
    have come back with another pid."""
    pids = {}
    for index in (1, 2):
        previous = old.get(f"worker{index}")
        other = "" if previous is None else rf"(?!{previous}\b)"
        pids[index] = int(server.wait_for_line(rf"worker {index} serving .*\bpid={other}(\d+)")[1])
    return pids


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped by whoever inherited it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pids: Iterable[int], timeout: float = STOP_TIMEOUT + 5) -> None:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running, f"still running: {running}"


def test_both_workers_answer_on_one_port_and_sigterm_stops_them_all(supervisor: ServerProcess) -> None:
    port = int(supervisor.wait_for_line(r"supervising 2 workers on 127\.0\.0\.1:(\d+)")[1])
    assert port == supervisor.port
    pids = worker_pids(supervisor)
    assert len(set(pids.values())) == 2 and supervisor.process is not None
    assert supervisor.process.pid not in pids.values()
    for _ in range(CONNECTIONS):
        with connect(room_url(port, "spread")) as client:
            client.recv(timeout=10)  # the server's sync step 1: the connection has joined the room
    for index in (1, 2):
        supervisor.wait_for_line(rf"\bjoined\b.*\bworker={index}\b", timeout=10)
    assert http_get(port, "/healthz").status == 200

    started = time.monotonic()
    assert supervisor.stop(signal.SIGTERM, timeout=STOP_TIMEOUT + 10) == 0
    assert time.monotonic() - started < STOP_TIMEOUT
    wait_gone(pids.values(), timeout=1)  # the supervisor waited for them: they are gone already
    output = "".join(supervisor.output)
    assert output.count("stopped; everything is on disk") == 2
    assert "Traceback" not in output


def test_a_killed_worker_is_restarted_and_a_killed_supervisor_takes_the_workers_down(
    supervisor: ServerProcess,
) -> None:
    before = worker_pids(supervisor)
    os.kill(before[2], signal.SIGKILL)
    supervisor.wait_for_line(r"WARNING .*worker 2 was killed by SIGKILL; restarting it in 0\.5 s")
    after = worker_pids(supervisor, worker2=before[2])
    assert after[1] == before[1] and after[2] != before[2]
    assert http_get(supervisor.port, "/healthz").status == 200

    assert supervisor.process is not None
    supervisor.process.kill()  # no chance to stop anyone: the kernel tells the workers (PR_SET_PDEATHSIG)
    supervisor.process.wait(10)
    wait_gone(after.values())
    supervisor.wait_for_line(r"stopped; everything is on disk worker=1")


def test_a_restart_refused_by_the_configuration_stops_everything(
    db_path: Path, relay: tuple[str, ...], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-test-secret-of-enough-length")
    server = ServerProcess(db_path, "--workers", "2", *relay, "--auth-secret-file", str(secret)).start()
    pids = worker_pids(server)
    secret.unlink()  # the worker restarted next cannot read it: retrying would not help
    os.kill(pids[1], signal.SIGKILL)
    assert server.process is not None
    assert server.process.wait(STOP_TIMEOUT) == 2
    wait_gone(pids.values(), timeout=1)
    assert "collab serve: cannot read --auth-secret-file" in server.wait_for_line(r"collab serve: .*")[0]


def test_a_worker_failing_to_start_ends_everything_with_its_error(db_path: Path, relay: tuple[str, ...]) -> None:
    missing = str(db_path.with_name("missing.pem"))
    result = collab_cli(
        "serve", "--workers", "2", *relay, "--port", "0", "--db", str(db_path), "--certfile", missing,
        "--keyfile", missing, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"collab serve: cannot load TLS certificate {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_need_a_relay(db_path: Path) -> None:
    result = collab_cli("serve", "--workers", "2", "--port", "0", "--db", str(db_path), check=False)
    assert result.returncode == 2
    assert one_line(result.stderr) == "collab serve: --workers needs --relay: the workers share rooms through Redis\n"


def test_a_taken_port_is_refused_before_any_worker_starts(db_path: Path, relay: tuple[str, ...]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = collab_cli("serve", "--workers", "2", *relay, "--port", str(port), "--db", str(db_path), check=False)
    assert result.returncode == 2
    assert one_line(result.stderr) == f"collab serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_backoff_doubles_for_workers_that_keep_dying_and_resets_after_a_stable_run() -> None:
    backoff = Backoff()
    assert [backoff.after(lived=1.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.after(lived=backoff.stable_after) == 0.0  # it had served a while: at once
    assert backoff.after(lived=0.1) == 0.5


def test_auto_workers_are_one_per_core_this_process_may_use() -> None:
    from collab.config import Settings
    from collab.errors import ConfigError

    cores = len(os.sched_getaffinity(0))
    assert Settings.load({}, {"COLLAB_WORKERS": "auto"}).workers == cores
    assert Settings.load({}, {"COLLAB_WORKERS": "3"}).workers == 3
    with pytest.raises(ConfigError, match="at least 1 worker"):
        Settings.load({}, {"COLLAB_WORKERS": "0"})
