"""PostgreSQL for the tests: where the server comes from, throwaway clusters, and one fresh database per test.

Where the server comes from (`admin_url()`, decided once per session):

1. `COLLAB_TEST_PG`, when set: a libpq URL of a server where the tests may CREATE DATABASE and DROP DATABASE
   (for example `postgresql://postgres:secret@db.internal:5432/postgres`). When it does not answer, the tests
   fail and say so rather than quietly testing something else.
2. Else the shared server at `postgresql://postgres@127.0.0.1:5432/postgres` (trust auth), when it answers.
3. Else a private throwaway cluster (`PrivateCluster`) started for the session and removed at exit. Its binaries
   come from PATH or /usr/lib/postgresql/<version>/bin; when there is no initdb anywhere, Debian's `postgresql`
   package is installed with apt-get (through `sudo -n` when not root). initdb refuses to run as root, so as
   root initdb and pg_ctl run as the `postgres` user (`runuser`), in a temp dir it owns. initdb runs once per
   session; each cluster starts from a copy of its result.

Each test gets its own database, `collab_test_<pid>_<hex>` (`fresh_database`), dropped at the end
(`drop_database`, which refuses any other name), so the tests never touch another database on a shared server.
The `postgres_url` fixture takes them from a `DatabasePool`, which creates them ahead and drops them behind in a
thread, so that no test waits for either. A pytest that was killed leaves its databases behind; the next session
drops those whose pid is no longer alive (`sweep_stale_databases`). Tests that stop, restart or crash PostgreSQL
use a `PrivateCluster`, never the shared server.

Nothing here skips: the PostgreSQL tests are part of the suite, so when no server can be provided they fail
with a message that says what was tried.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from queue import Empty, PriorityQueue, Queue
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from . import services

# At home in services, shared with tests/redis.py; the tests import them from here too.
from .services import free_port as free_port
from .services import redacted as redacted

SHARED_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# A server that is up answers within milliseconds; a closed port refuses at once. The bound is for a
# firewalled host that drops packets, so that the suite does not hang on it.
CONNECT_TIMEOUT_S = 3
# pg_ctl's own wait bound (-t) for start and stop; the subprocess gets a little more so pg_ctl reports first.
PG_CTL_TIMEOUT_S = 30
INITDB_TIMEOUT_S = 120
TEST_DATABASE_PREFIX = "collab_test_"
TEST_DATABASE_NAME = re.compile(rf"{TEST_DATABASE_PREFIX}(\d+)_[0-9a-f]{{32}}")
"""What `fresh_database` names a database: the prefix, the pid of the pytest that made it, and a uuid."""
LOCAL_HOSTS = {None, "", "127.0.0.1", "::1", "localhost"}
# A CREATE DATABASE takes 0.3–0.6 s on the shared server while other suites run; two ready ones cover a run
# of quick tests back to back.
POOL_AHEAD = 2
POOL_TIMEOUT_S = 60
StopMode = Literal["fast", "immediate"]


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be provided or controlled; the message says what was tried and what failed."""


def reachable(url: str) -> bool:
    """Whether a server answers at `url` and lets us in (a wrong password counts as not answering)."""
    try:
        with _connect(url) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def fresh_database(admin: str) -> str:
    """Create an empty database `collab_test_<pid>_<hex>` on the server at `admin` and return its URL."""
    name = f"{TEST_DATABASE_PREFIX}{os.getpid()}_{uuid.uuid4().hex}"
    with _connect(admin) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin, name)


def drop_database(url: str, admin: str | None = None) -> None:
    """Drop the test database at `url`, ending any sessions still connected to it.

    Connects to `admin` (default: the same server's `postgres` database). Only names `fresh_database` makes are
    accepted, so a mistake cannot drop someone else's database on a shared server.
    """
    name = database_name(url)
    if not name.startswith(TEST_DATABASE_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a database fresh_database() made")
    with _connect(admin if admin is not None else with_database(url, "postgres")) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def sweep_stale_databases(admin: str) -> list[str]:
    """Drop the test databases that pytest runs which are gone left behind (killed before their teardown).

    Only names `fresh_database` makes, and only those whose pid is not alive: a suite running alongside keeps
    its own. Only on a server on this machine (its pids are ours to check); on another host a pid says nothing,
    and its databases are left alone. The names dropped.
    """
    if urlsplit(admin).hostname not in LOCAL_HOSTS:
        return []
    with _connect(admin) as connection:
        names = [str(name) for (name,) in connection.execute("SELECT datname FROM pg_database")]
    stale = [name for name in names if (match := TEST_DATABASE_NAME.fullmatch(name)) and not _alive(int(match[1]))]
    for name in stale:
        drop_database(with_database(admin, name), admin)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


class DatabasePool:
    """Fresh databases made ahead and dropped behind, in a thread, so that a test waits for neither.

    CREATE DATABASE took 0.3–0.6 s and DROP DATABASE … WITH (FORCE) up to 1 s on the shared server (PostgreSQL
    15, other suites running), in the setup and teardown of each of some 50 tests. `take()` hands out a database
    made ahead (waiting only when none is ready yet) and asks for the next; `give_back(url)` queues its drop;
    `close()` (the session's end) makes the thread drop everything given back and everything still ready, and
    raises what failed. Creating goes before dropping, so a test waits behind no drop.
    """

    _CREATE, _DROP, _STOP = 0, 1, 2
    """Job kinds, in the order the thread takes them."""

    def __init__(self, admin: str, ahead: int = POOL_AHEAD) -> None:
        self.admin = admin
        self._jobs: PriorityQueue[tuple[int, int, str]] = PriorityQueue()
        self._ready: Queue[str | BaseException] = Queue()
        self._order = 0
        self._failures: list[BaseException] = []
        self._closing = threading.Event()
        """Set by `close()`: the thread makes no more databases ahead, only drops."""
        self._worker = threading.Thread(target=self._work, name="collab-test-databases", daemon=True)
        self._worker.start()
        for _ in range(ahead):
            self._put(self._CREATE)

    def take(self) -> str:
        """The URL of a fresh, empty database (one made ahead, or the next one made)."""
        self._put(self._CREATE)  # the one after this
        try:
            ready = self._ready.get(timeout=POOL_TIMEOUT_S)
        except Empty:
            raise PostgresUnavailable(f"no fresh database within {POOL_TIMEOUT_S} s") from None
        if isinstance(ready, BaseException):
            raise PostgresUnavailable(f"cannot create a test database: {ready}") from ready
        return ready

    def give_back(self, url: str) -> None:
        """Drop the database at `url` soon, whatever sessions it still has."""
        self._put(self._DROP, url)

    def close(self) -> None:
        """Drop every database given back or still ready, then stop the thread; raise if a drop failed."""
        self._closing.set()
        self._put(self._STOP)
        self._worker.join(POOL_TIMEOUT_S)
        while not self._ready.empty():  # made ahead and never taken
            ready = self._ready.get()
            if isinstance(ready, str):
                self._drop(ready)
        if self._worker.is_alive():
            self._failures.append(TimeoutError(f"dropping the test databases took over {POOL_TIMEOUT_S} s"))
        if self._failures:
            raise PostgresUnavailable(f"test databases not dropped: {self._failures}")

    def _put(self, kind: int, url: str = "") -> None:
        self._order += 1  # FIFO within a kind
        self._jobs.put((kind, self._order, url))

    def _work(self) -> None:
        while True:
            kind, _, url = self._jobs.get()
            if kind == self._STOP:
                return
            if kind == self._DROP:
                self._drop(url)
                continue
            if self._closing.is_set():
                continue
            try:
                self._ready.put(fresh_database(self.admin))
            except BaseException as error:  # handed to the test that waits for it
                self._ready.put(error)

    def _drop(self, url: str) -> None:
        try:
            drop_database(url, self.admin)
        except BaseException as error:
            self._failures.append(error)


def with_database(url: str, name: str) -> str:
    """`url` with its database replaced by `name`; host, port, user, password and query parameters are kept."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return unquote(urlsplit(url).path.removeprefix("/"))


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    # Autocommit: CREATE DATABASE and DROP DATABASE cannot run inside a transaction.
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


class PrivateCluster(services.PrivateServer):
    """A throwaway PostgreSQL cluster in a temp dir, listening on 127.0.0.1 on a free port; for fault tests.

    `start()` creates the cluster the first time; `stop("fast")` shuts down cleanly; `stop("immediate")`
    simulates a crash (the postmaster kills its backends with no checkpoint, clients see their connections
    fail, and the next `start()` runs crash recovery from the WAL); `restart()` keeps the port and the data.
    Used as a context manager it is started on entry and removed (stopped, its files deleted) on exit; anything
    still running at interpreter exit is removed too.

    It runs with fsync=off, for speed. Commits still write their WAL to the kernel before returning
    (synchronous_commit stays on), so committed data survives the server process crashing or being stopped
    with "immediate": what fault tests simulate. It would not survive the machine losing power, which no test
    simulates.
    """

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()  # before the temp dir, which a missing PostgreSQL would leave behind
        self.running = False
        super().__init__(_owned_temp_dir("collab-pg-"), "postgres.log")
        self.data_dir = self.root / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server (creating the cluster the first time) and wait until it accepts connections."""
        if not self.data_dir.exists():
            # cp -a keeps the modes PostgreSQL insists on (0700) and, run as the owner, the ownership.
            _run_as_owner(["cp", "-a", str(_template_data_dir()), str(self.data_dir)], self.root, INITDB_TIMEOUT_S)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl(["start", "-l", str(self.log_file), "-o", options])
        self.running = True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: "fast" rolls back open transactions and checkpoints; "immediate" is a crash."""
        self._pg_ctl(["stop", "-m", mode])
        self.running = False

    def restart(self) -> None:
        """Stop cleanly and start again, on the same port with the same data."""
        self.stop("fast")
        self.start()

    def remove(self) -> None:
        """Stop the server if it runs (no need to be gentle with a throwaway cluster) and delete its files."""
        if self.running:
            try:
                self.stop("immediate")
            except PostgresUnavailable:
                pass  # removing is best effort (it also runs at exit); the files go either way
        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"PrivateCluster(port={self.port}, root={self.root}, running={self.running})"

    def _pg_ctl(self, arguments: list[str]) -> None:
        # -w waits for the server to accept connections (start) or to be gone (stop), at most -t seconds.
        command = [str(self.bin_dir / "pg_ctl"), "-w", "-t", str(PG_CTL_TIMEOUT_S), "-D", str(self.data_dir)]
        try:
            _run_as_owner([*command, *arguments], self.root, PG_CTL_TIMEOUT_S + 10)
        except PostgresUnavailable as error:
            raise PostgresUnavailable(f"{error}\nserver log ({self.log_file}):\n{self.log_tail()}") from None


def _start_private() -> tuple[str, PrivateCluster]:
    """A private cluster for the session, started; its admin URL (for `choose_server`)."""
    cluster = PrivateCluster().started()
    return cluster.admin_url, cluster


@functools.cache
def _template_data_dir() -> Path:
    """A cluster initdb makes once per session, which each PrivateCluster copies.

    initdb takes 1–3 s (it bootstraps and fills the catalogs); copying its result takes a tenth of that, and
    fault tests start a cluster each.
    """
    root = _owned_temp_dir("collab-pg-template-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data_dir = root / "data"
    initdb = str(postgres_bin_dir() / "initdb")
    arguments = ["-D", str(data_dir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]
    _run_as_owner([initdb, *arguments], root, INITDB_TIMEOUT_S)
    return data_dir


def _owned_temp_dir(prefix: str) -> Path:
    """A new temp dir that the user running PostgreSQL owns (data dir, socket and log go inside)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, user="postgres", group=None)
    return path


def _run_as_owner(command: list[str], cwd: Path, timeout_s: float) -> None:
    """Run a command as the user owning the clusters: ourselves, or `postgres` as root (initdb refuses root)."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    try:
        # cwd: the postgres user may not be allowed into the test's working directory.
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise PostgresUnavailable(f"{shlex.join(command)} took over {timeout_s} s") from None
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{shlex.join(command)} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )


@functools.cache
def postgres_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl, installing Debian's postgresql package when there is none."""
    found = _find_bin_dir()
    if found is None:
        advice = (
            "install PostgreSQL's server binaries "
            "or set COLLAB_TEST_PG to a server where the tests may create databases"
        )
        services.apt_install("postgresql", "initdb", advice, PostgresUnavailable)
        found = _find_bin_dir()
    if found is None:
        raise PostgresUnavailable("no initdb on PATH or in /usr/lib/postgresql/*/bin, even after apt-get install")
    if os.geteuid() == 0 and not _user_exists("postgres"):
        raise PostgresUnavailable(f"found {found}, but as root initdb must run as user 'postgres', which is missing")
    return found


def _find_bin_dir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).parent
    # Debian puts the server binaries outside PATH, one directory per major version; take the newest.
    debian = sorted(
        (path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0,
    )
    return debian[-1] if debian else None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_SOURCE = services.Source(
    "PostgreSQL", "COLLAB_TEST_PG", SHARED_URL, reachable, _start_private, PostgresUnavailable, "does not answer"
)
# The URL of a server where tests may create databases, decided once per session (see the module docstring).
admin_url = _SOURCE.session_url
# `choose_server(configured, candidate)`: the admin URL to use and the private cluster started for it, if any; the
# session's choice with the servers given, so that the fallback can be tested with a candidate that does not answer.
choose_server = _SOURCE.choose
