"""The Redis server the cluster scenarios' relays run on, and one key prefix per scenario on it.

The server is `COLLAB_BENCH_REDIS` (a redis:// URL of a Redis or Valkey the harness may write keys to), else the
local `redis://127.0.0.1:6379/0`. `find_redis()` asks it once per run; when it does not answer, the cluster
scenarios are skipped, saying where the harness looked, and the rest of the run goes on (as the PostgreSQL rows
are). Each scenario's collab processes use the key prefix `bench_<run id>:<scenario>:` (`--relay-prefix`), and
every key under it is deleted once they have stopped; only such prefixes are deleted, so the harness never
touches another key on a shared server. Whatever a killed run leaves expires by itself: every key collab writes
has a TTL.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .servers import process_cpu_seconds

if TYPE_CHECKING:
    import redis

__all__ = ["DEFAULT_URL", "RedisServer", "find_redis", "prefix_for"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
TIMEOUT_S = 3.0
"""A server that is up answers in a millisecond and a closed port refuses at once; this bounds a dropped packet."""
PREFIX = re.compile(r"bench_[0-9a-f]+:[a-z]+:")
"""What `prefix_for` makes: the only prefixes `delete_keys` accepts."""
SCAN_COUNT = 1000
DELETE_TIMEOUT_S = 30.0


def prefix_for(run_id: str, scenario: str) -> str:
    """The `--relay-prefix` of one scenario of one run."""
    return f"bench_{run_id}:{scenario}:"


@dataclass(frozen=True)
class RedisServer:
    """A Redis reached at `url`; `pid` is its process when it runs on this machine (its CPU shares the cores)."""

    url: str
    version: str
    pid: int | None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the Redis server used so far, when it is a process of this machine."""
        if self.pid is None:
            return None
        try:
            return process_cpu_seconds(self.pid)
        except OSError:
            return None

    def delete_keys(self, prefix: str) -> int:
        """Delete every key under `prefix` (one that `prefix_for` made); the number deleted.

        One SCAN pass: a key written while it runs may be missed, and expires by its TTL. UNLINK frees the values
        in Redis's background thread, so a long stream does not block it.
        """
        if PREFIX.fullmatch(prefix) is None:
            raise ValueError(f"refusing to delete keys under {prefix!r}: not a prefix the benchmark made")
        deadline = time.monotonic() + DELETE_TIMEOUT_S
        deleted = 0
        with _client(self.url) as client:
            cursor = 0
            while True:
                cursor, keys = client.scan(cursor, match=f"{prefix}*", count=SCAN_COUNT)
                if keys:
                    deleted += int(client.unlink(*keys))
                if cursor == 0 or time.monotonic() > deadline:
                    return deleted

    def describe(self) -> str:
        where_ = where(self.url)
        cpu = "its CPU read from /proc" if self.pid is not None else "not on this machine (its CPU is not counted)"
        return f"Redis {self.version} at {where_}, {cpu}"


def find_redis() -> RedisServer | str:
    """The server the cluster scenarios' relays use, or why there is none (the reason the skipped rows give)."""
    url = os.environ.get("COLLAB_BENCH_REDIS") or DEFAULT_URL
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        return f"COLLAB_BENCH_REDIS is not a redis:// URL ({where(url)})"
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'collab[redis]')"
    try:
        with _client(url) as client:
            info = client.info("server")
    except redis.RedisError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"no Redis at {where(url)} ({first_line}); set COLLAB_BENCH_REDIS to use another"
    return RedisServer(url, str(info.get("redis_version", "?")), local_pid(url, info.get("process_id")))


def local_pid(url: str, pid: object) -> int | None:
    """The Redis server's pid if it is a process of this machine: a loopback or socket URL, and /proc agreeing
    that the process is a redis-server (or valkey-server); else None."""
    host = urlsplit(url).hostname
    if not isinstance(pid, int) or (urlsplit(url).scheme != "unix" and host not in ("127.0.0.1", "localhost", "::1")):
        return None
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if name.startswith(("redis", "valkey")) else None


def where(url: str) -> str:
    """host:port of `url`, never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379
    except ValueError:
        return "an unreadable URL"
    return f"{parts.hostname or 'localhost'}:{port}"


def _client(url: str) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One try per call (redis-py retries a failed connection with backoff by default): an absent Redis is told
    # within TIMEOUT_S.
    return redis.Redis.from_url(
        url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 0)
    )
