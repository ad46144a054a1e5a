"""Redis for the tests: where the server comes from, private servers for fault tests, and a key prefix per test.

Where the server comes from (`redis_admin_url()`, decided once per session):

1. `COLLAB_TEST_REDIS`, when set: the URL of a Redis (or Valkey) the tests may write keys to, for example
   `redis://:secret@cache.internal:6379/3`. When it does not answer, the tests fail and say so rather than
   quietly testing something else.
2. Else the shared server at `redis://127.0.0.1:6379/0`, when it answers PING within a second.
3. Else a private server (`PrivateRedis`) started for the session and stopped at exit. redis-server comes from
   PATH; when there is none, Debian's `redis-server` package is installed with apt-get (through `sudo -n` when
   not root). Unlike initdb, redis-server runs as root too, so no other user is involved.

Each test gets its own key prefix, `collab_test_<pid>_<hex>:` (`fresh_prefix`, the `relay_prefix` fixture, passed
to collab as `--relay-prefix`), and its keys are deleted after it (`delete_prefix`, which refuses any other
prefix), so the tests never touch another key on a shared server. Unlike the PostgreSQL databases, what a killed
pytest leaves behind is not swept at the next session's start: every key collab writes has a TTL (a room's stream
lives `--relay-retention`, the heartbeat hash a few beats), so leftovers expire by themselves. The same covers
keys a test's server writes after the fixture has deleted the prefix (its servers are torn down after it).

Tests that stop, kill or restart Redis use a `PrivateRedis`, never the shared server. It keeps nothing on disk
(`--save ""`, `--appendonly no`): a restart starts empty, as a Redis without persistence does in production.

Nothing here skips: the cluster tests are part of the suite, so when no Redis can be provided they fail with a
message that says what was tried.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import services

SHARED_URL = "redis://127.0.0.1:6379/0"
# A Redis that is up answers PING within a millisecond; the bound is for a host that drops packets.
PING_TIMEOUT_S = 1.0
# redis-server listens within some 10 ms of starting and exits within as long of SHUTDOWN; the bounds are for a
# loaded machine.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
START_POLL_S = 0.01
TEST_PREFIX = "collab_test_"
TEST_PREFIX_NAME = re.compile(rf"{TEST_PREFIX}(\d+)_[0-9a-f]{{32}}:")
"""What `fresh_prefix` makes: the prefix, the pid of the pytest that made it, a uuid, and the separator."""
# SCAN returns about COUNT keys a call; a test writes at most a few thousand keys, and the shared server may hold
# other suites' keys too. The deadline bounds a pass over a huge keyspace.
SCAN_COUNT = 1000
DELETE_TIMEOUT_S = 30.0


class RedisUnavailable(Exception):
    """No Redis could be provided or controlled; the message says what was tried and what failed."""


def reachable(url: str) -> bool:
    """Whether a Redis at `url` answers PING within `PING_TIMEOUT_S` (refusing us, say for a password, counts as
    not answering)."""
    try:
        with _client(url) as client:
            client.ping()
    except redis.RedisError:
        return False
    return True


def fresh_prefix() -> str:
    """A key prefix no other test uses, `collab_test_<pid>_<hex>:`; no key has it yet."""
    return f"{TEST_PREFIX}{os.getpid()}_{uuid.uuid4().hex}:"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with `prefix` from the Redis at `url`; the number deleted.

    Only prefixes `fresh_prefix` makes are accepted, so a mistake cannot delete another's keys on a shared server
    (and no glob character of MATCH can be in one). One SCAN pass: a key written while it runs may be missed, and
    expires by its TTL. UNLINK frees the values in Redis's background thread, so a big stream does not block it.
    """
    if TEST_PREFIX_NAME.fullmatch(prefix) is None:
        raise ValueError(f"refusing to delete keys under {prefix!r}: not a prefix fresh_prefix() made")
    deadline = time.monotonic() + DELETE_TIMEOUT_S
    deleted = 0
    with _client(url) as client:
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor, match=f"{prefix}*", count=SCAN_COUNT)
            if keys:
                deleted += client.unlink(*keys)
            if cursor == 0:
                return deleted
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"deleting the keys under {prefix!r} took over {DELETE_TIMEOUT_S} s")


def _client(url: str) -> redis.Redis:
    # One try per call (redis-py 8 retries a failed connection 10 times by default, with backoff): `reachable`
    # answers within PING_TIMEOUT_S, and `start` polls on its own.
    return redis.Redis.from_url(
        url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
    )


class PrivateRedis(services.PrivateServer):
    """A redis-server of our own, a child process listening on 127.0.0.1 on a free port; for fault tests.

    `start()` waits until it answers PING; `stop()` is a clean SHUTDOWN NOSAVE; `kill()` is a crash (SIGKILL:
    clients see their connections reset). Either way the data is gone, since nothing is kept on disk, and the next
    `start()` listens on the same port with an empty keyspace, so that servers pointed at `url` reconnect to it.
    Used as a context manager it is started on entry and removed (killed, its temp dir deleted) on exit; anything
    still running at interpreter exit is removed too.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        super().__init__(Path(tempfile.mkdtemp(prefix="collab-redis-")), "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server on its port and wait until it answers (INFO, from our own process, not another's)."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        command = [
            redis_server(),
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            *("--daemonize", "no", "--dir", str(self.root)),  # its log goes to stdout, into log_file
        ]
        with self.log_file.open("ab") as log:
            # A session of its own: Ctrl-C at the terminal reaches pytest alone, whose teardown stops the server.
            process = subprocess.Popen(
                command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with _client(self.url) as client:
                    server = client.info("server")
            except redis.RedisError:
                time.sleep(START_POLL_S)
                continue
            # Whoever took the port since `free_port` would answer too; only our process counts as started.
            if server["process_id"] != process.pid:
                break
            return
        self.kill()
        raise RedisUnavailable(
            f"{shlex.join(command)} did not answer PING on port {self.port} within {START_TIMEOUT_S} s"
            f" (exit {process.returncode})\nserver log ({self.log_file}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Shut down cleanly (SHUTDOWN NOSAVE: nothing written) and wait until the process is gone."""
        if self._process is None or not self.running:
            return
        try:
            with _client(self.url) as client:
                client.shutdown(nosave=True)
            self._process.wait(STOP_TIMEOUT_S)
        except (redis.RedisError, subprocess.TimeoutExpired) as error:
            self.kill()
            raise RedisUnavailable(f"{self!r} did not shut down: {error}\n{self.log_tail()}") from None

    def kill(self) -> None:
        """Kill the server (SIGKILL, a crash) and wait until the process is gone."""
        if self._process is None or not self.running:
            return
        self._process.kill()
        self._process.wait(STOP_TIMEOUT_S)

    def flush(self) -> None:
        """Delete every key (FLUSHALL: the server is ours alone), as a restart would."""
        with _client(self.url) as client:
            client.flushall()

    def remove(self) -> None:
        """Kill the server if it runs (no need to be gentle with a throwaway one) and delete its temp dir."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"PrivateRedis(port={self.port}, root={self.root}, running={self.running})"


def _start_private() -> tuple[str, PrivateRedis]:
    """A private server for the session, started; its URL (for `choose_redis`)."""
    private = PrivateRedis().started()
    return private.url, private


@functools.cache
def redis_server() -> str:
    """The path of redis-server, installing Debian's redis-server package when there is none on PATH."""
    found = shutil.which("redis-server")
    if found is None:
        advice = (
            "install Redis (or Valkey's redis-server) or set COLLAB_TEST_REDIS to a Redis the tests may write keys to"
        )
        services.apt_install("redis-server", "redis-server", advice, RedisUnavailable)
        found = shutil.which("redis-server")
    if found is None:
        raise RedisUnavailable("no redis-server on PATH, even after apt-get install redis-server")
    return found


_SOURCE = services.Source(
    "Redis", "COLLAB_TEST_REDIS", SHARED_URL, reachable, _start_private, RedisUnavailable, "does not answer PING"
)
# The URL of the Redis the tests write their prefixed keys to, decided once per session (see the module docstring).
redis_admin_url = _SOURCE.session_url
# `choose_redis(configured, candidate)`: the URL to use and the private server started for it, if any; the session's
# choice with the servers given, so that the fallback can be tested with a candidate that does not answer.
choose_redis = _SOURCE.choose
