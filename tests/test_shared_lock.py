"""The database lock the servers of a cluster (`--relay`) share, on a real SQLite file and a real PostgreSQL database.

A server of its own and a CLI command writing the database (`collab import`, `collab copy`) take the lock
exclusively; each server of a cluster takes it shared, beside the others and beside none of those. Its
details (pid, url) are what `collab import` reads to go through a running server: any one server's will do,
but they must stay findable while any server of the cluster runs, and never name one that is gone.
Other processes are real ones (a holder killed with SIGKILL); a PostgreSQL session lost to its lock but alive
on the server is made by cutting a relay between the two.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from collab.errors import DatabaseInUseError
from collab.store.engines import ServerLock, locate
from collab.store.lockfile import lock_path
from collab.store.postgres import connect
from collab.store.postgres_read import SERVER_KEY

from .helpers import ROOT, wait_for

Take = Callable[..., ServerLock]
"""`take(shared=…, **details)`: a lock on the test's database, acquired and described; released at the end."""

DEAD_URL = "ws://127.0.0.1:1"
HOLD = """
import sys, time
from collab.store.engines import locate
lock = locate(sys.argv[1]).lock(shared=sys.argv[2] == "shared")
lock.acquire()
lock.describe(url=sys.argv[3])
print("held", flush=True)
time.sleep(60)
"""
"""A process holding the lock until it is killed (a minute at most)."""
LOOK = """
import sys, time
from collab.store.engines import locate
database = locate(sys.argv[1])
print("looking", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    database.running_server()
"""
"""A process looking for a running server until it is stopped (a minute at most)."""
TAKES = 2000


@pytest.fixture
def take(database: str) -> Iterator[Take]:
    taken: list[ServerLock] = []

    def acquired(*, shared: bool, **details: Any) -> ServerLock:
        lock = locate(database).lock(shared=shared)
        lock.acquire()
        taken.append(lock)
        if details:
            lock.describe(**details)
        return lock

    yield acquired
    for lock in taken:
        lock.release()


def refusal(database: str, *, shared: bool) -> str:
    with pytest.raises(DatabaseInUseError) as refused:
        locate(database).lock(shared=shared).acquire()
    return str(refused.value)


@contextmanager
def holder(database: str, *, shared: bool) -> Iterator[int]:
    """The pid of another process that took the lock and recorded `DEAD_URL`; killed (and reaped) on leaving."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, database, "shared" if shared else "exclusive", DEAD_URL],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        yield process.pid
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


async def wait_recorded(database: str, lock: ServerLock, url: str) -> None:
    """Until `lock`'s checks (a server's, every 2 s) have recorded `url`: a killed PostgreSQL holder's session
    ends a moment after its process."""

    def recorded() -> bool:
        lock.check()
        return (locate(database).running_server() or {}).get("url") == url

    await wait_for(recorded, interval=0.05)


def test_the_servers_of_a_cluster_hold_it_together(take: Take, database: str) -> None:
    assert locate(database).running_server() is None
    take(shared=True, url="ws://127.0.0.1:1001")
    take(shared=True, url="ws://127.0.0.1:1002")
    held = locate(database).running_server()
    assert held is not None and (held["pid"], held["url"]) == (os.getpid(), "ws://127.0.0.1:1001"), held


def test_a_server_of_its_own_is_refused_beside_a_cluster(take: Take, database: str) -> None:
    take(shared=True, url="ws://127.0.0.1:1001")
    take(shared=True, url="ws://127.0.0.1:1002")
    said = refusal(database, shared=False)
    assert f"is in use by pid {os.getpid()}" in said and said.endswith("ws://127.0.0.1:1001"), said


def test_a_server_of_a_cluster_is_refused_beside_a_server_of_its_own(take: Take, database: str) -> None:
    take(shared=False, url="ws://127.0.0.1:1001")
    said = refusal(database, shared=True)
    assert f"is in use by pid {os.getpid()}" in said and said.endswith("ws://127.0.0.1:1001"), said


def test_a_server_of_a_cluster_is_refused_while_a_command_writes(take: Take, database: str) -> None:
    take(shared=False, command="import")
    said = refusal(database, shared=True)
    assert said.endswith(") is writing to it") and f"collab import (pid {os.getpid()}" in said, said


def test_the_details_stay_findable_while_any_holder_runs(take: Take, database: str) -> None:
    first = take(shared=True, url="ws://127.0.0.1:1001")
    second = take(shared=True, url="ws://127.0.0.1:1002")
    third = take(shared=True, url="ws://127.0.0.1:1003")
    third.release()  # not the recorded one: the first's details stay
    assert (locate(database).running_server() or {}).get("url") == "ws://127.0.0.1:1001"
    first.release()  # its own go with it; the second still holds the lock
    assert locate(database).running_server() == {}, "held, by a server that has not said where yet"
    second.check()  # what a server does every 2 s
    assert (locate(database).running_server() or {}).get("url") == "ws://127.0.0.1:1002"
    second.check()
    assert (locate(database).running_server() or {}).get("url") == "ws://127.0.0.1:1002"
    second.release()
    assert locate(database).running_server() is None
    take(shared=False)  # nobody holds it any more


async def test_a_killed_holders_details_give_way_to_a_running_one(take: Take, database: str) -> None:
    with holder(database, shared=True) as pid:
        survivor = take(shared=True, url="ws://127.0.0.1:1002")
        held = locate(database).running_server()
        assert held is not None and (held["pid"], held["url"]) == (pid, DEAD_URL), "the first one's"
    await wait_recorded(database, survivor, "ws://127.0.0.1:1002")
    held = locate(database).running_server()
    assert held is not None and held["pid"] == os.getpid(), held


async def test_a_cluster_starting_after_a_killed_server_records_itself(take: Take, database: str) -> None:
    with holder(database, shared=False):
        pass
    first = take(shared=True, url="ws://127.0.0.1:1001")
    await wait_recorded(database, first, "ws://127.0.0.1:1001")  # at once on SQLite; once its session ended on PG
    take(shared=True, url="ws://127.0.0.1:1002")
    assert (locate(database).running_server() or {}).get("url") == "ws://127.0.0.1:1001"


def test_the_first_of_a_cluster_clears_a_file_left_by_a_process_whose_pid_lives_on(db_path: Path) -> None:
    """A server killed in a container leaves its pid in the file; restarted, the server is that pid again."""
    lock_path(db_path).write_text(f'{{"pid": {os.getpid()}, "url": "{DEAD_URL}"}}')
    lock = locate(str(db_path)).lock(shared=True)
    lock.acquire()
    try:
        lock.describe(url="ws://127.0.0.1:1001")
        assert locate(str(db_path)).running_server() == {"pid": os.getpid(), "url": "ws://127.0.0.1:1001"}
    finally:
        lock.release()
    assert locate(str(db_path)).running_server() is None


def test_looking_for_a_server_never_keeps_one_from_starting(db_path: Path) -> None:
    """`running_server` tries the flock exclusively for a moment (a shared try would succeed beside a cluster):
    a server of a cluster taking it meanwhile tries again rather than failing. Another process looks, as
    `collab stats` would, as fast as it can."""
    database = locate(str(db_path))
    first = database.lock(shared=True)
    first.acquire()  # so that the lock file is there to look at
    first.release()
    looker = subprocess.Popen([sys.executable, "-c", LOOK, str(db_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert looker.stdout is not None and looker.stdout.readline() == "looking\n"
        for _ in range(TAKES):
            lock = database.lock(shared=True)
            lock.acquire()
            lock.release()
    finally:
        looker.terminate()
        looker.wait(10)
        assert looker.stdout is not None
        looker.stdout.close()


def test_memory_takes_a_shared_lock_too() -> None:
    lock = locate("memory:").lock(shared=True)
    lock.acquire()
    lock.describe(url="ws://127.0.0.1:1001")
    lock.check()
    lock.release()


# A PostgreSQL session lost to its lock but alive on the server.


class Cut:
    """A TCP relay to PostgreSQL whose client sides can be cut while PostgreSQL's sides stay open: a session
    is then lost to its client (its connection broken) but alive on the server, as across a failed network."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self.pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def cut(self) -> None:
        for client, _ in self.pairs:
            client.shutdown(socket.SHUT_RDWR)
            client.close()
        self.pairs.clear()

    def close(self) -> None:
        self.listener.close()
        for client, upstream in self.pairs:
            client.close()
            upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Until either side closes; never closes the other (`Cut.close` does)."""
    while True:
        try:
            data = source.recv(65536)
            if not data:
                return
            sink.sendall(data)
        except OSError:
            return


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


def lock_sessions(url: str) -> set[int]:
    """The pids of the sessions holding the server lock (in either mode)."""
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT pid FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = %s
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
            [SERVER_KEY],
        )
        return {pid for (pid,) in rows}


def backends(url: str) -> set[int]:
    with connect(url) as conn:
        return {pid for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")}


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_a_lost_session_that_lives_on_is_ended(postgres_url: str, shared: bool) -> None:
    """Its lock would otherwise outlast the server: kept out (exclusive), or keeping others out (shared)."""
    parts = urlsplit(postgres_url)
    relay = Cut(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        lock = locate(through(postgres_url, relay.port)).lock(shared=shared)
        lock.acquire()
        try:
            lock.describe(url="ws://127.0.0.1:1001")
            (lost,) = lock_sessions(postgres_url)
            relay.cut()
            assert lost in backends(postgres_url), "alive on the server"
            lock.check()  # what a server does every 2 s: takes it again, ending its lost session first
            (now,) = lock_sessions(postgres_url)
            assert now != lost and lost not in backends(postgres_url)
            held = locate(postgres_url).running_server()
            assert held is not None and held["url"] == "ws://127.0.0.1:1001" and held["backend"]["pid"] == now
        finally:
            lock.release()
        assert locate(postgres_url).running_server() is None
    finally:
        relay.close()
