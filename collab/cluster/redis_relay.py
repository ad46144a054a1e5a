"""The relay on Redis (or Valkey): one stream per room, read from the last id seen, and a heartbeat per process.

Why streams, not pub/sub: a subscriber that is disconnected, or a Redis that restarts, loses pub/sub
messages without anyone knowing. A stream keeps its entries (for `--relay-retention`), is read from the
last id seen, and what is missed anyway can be named (`entries.after_outage`), so a process reloads the
rooms concerned from the store instead of serving a document that silently lacks someone's keystrokes.

Three tasks, each on its own connection:

    reader     XREAD BLOCK over every followed room's stream (and this process's wake stream, which
               ends the wait when a room is followed), delivering to the `Listener`; after a
               connection loss it asks Redis its run id and works out the gaps
    publisher  sends what rooms publish, in pipelines of one small script each (XADD, trim to the
               retention by Redis's clock, renew the key's time to live)
    heartbeat  every HEARTBEAT_INTERVAL: this process's beat, and everyone's, in one script; a process
               not heard from for PROCESS_TIMEOUT is gone (its clients' cursors are removed everywhere)

While Redis is unreachable every process serves its own clients; what a room publishes meanwhile is kept
(bounded: MAX_UNSENT_BYTES) and sent when Redis is back, or replaced by a gap marker if it did not fit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..errors import CollabError, ConfigError
from ..logs import fields
from ..metrics import Counter, Gauge, Histogram, Metric
from ..store.engines import redacted
from . import Listener, Relayed, Retained
from .entries import (
    BEGINNING,
    Followed,
    Gap,
    after_outage,
    decode_entry,
    frame_fields,
    gap_fields,
    id_millis,
    processes_key,
    room_key,
    room_name,
    wake_key,
)

__all__ = ["RedisRelay", "process_name"]

logger = logging.getLogger("collab.relay")

HEARTBEAT_INTERVAL = 1.0
PROCESS_TIMEOUT = 3.0
"""A process whose last beat is this old is gone (three missed beats): its clients' cursors go too."""
FORGET_PROCESS_AFTER = 3600.0
"""Beats older than this are removed from the processes hash (a process killed without saying goodbye)."""
BLOCK = 1.0
"""Seconds one XREAD waits for news before it is made again (with the rooms followed by then)."""
READ_COUNT = 1000
"""Entries per stream one XREAD returns at most; the rest come with the next."""
PUBLISH_BATCH = 512
"""Frames sent in one pipeline."""
MAX_QUEUE_BYTES = 64 * 2**20
"""Bytes waiting to be sent to a slow Redis before they are treated as unsendable (see `Followed.unsent`)."""
MAX_UNSENT_BYTES = 16 * 2**20
"""Bytes kept while Redis is unreachable; past it a room's frames are dropped and a gap marker sent instead."""
RETAINED_MAX = 100_000
"""Entries a late joiner reads back at most (the retention bounds them first in any ordinary use)."""
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
"""Seconds between attempts to reach Redis again: quick at first, then every 2 s."""
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('XTRIM', KEYS[1], 'MINID', '~', tostring(now - tonumber(ARGV[1])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return id
"""
"""XADD ARGV[3..] (field, value, ...), trim entries older than ARGV[1] ms by Redis's clock, expire in ARGV[2] ms."""

HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], now)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local beats = redis.call('HGETALL', KEYS[1])
local alive = {}
for i = 1, #beats, 2 do
  local age = now - tonumber(beats[i + 1])
  if age > tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], beats[i])
  else
    table.insert(alive, beats[i])
    table.insert(alive, tostring(age))
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {now, alive}
"""
"""Beat for ARGV[1] (or, ARGV[2] = '0', say it is gone), forget beats older than ARGV[3] ms; return Redis's
time and every remaining process with the age of its beat in ms."""


def process_name() -> str:
    """This process's name in the cluster: host, pid and a random suffix (pids are reused, also across hosts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class RedisRelay:
    """A `collab.cluster.Relay` on Redis streams."""

    def __init__(self, url: str, *, prefix: str = "collab:", retention: float = 60.0, process: str = "") -> None:
        self.url = url
        self.prefix = prefix
        self.retention = retention
        self._process = process or process_name()
        self._retention_ms = str(int(retention * 1000))
        self._ttl_ms = str(int(max(2 * retention, 10.0) * 1000))
        self._gap_delay = 1.0
        """Seconds between finding a gap and reloading: the other processes' commits of what was missed land first."""
        try:
            # One retry: a pooled connection to a Redis that restarted fails once, and is replaced by the retry.
            options: dict[str, Any] = {"retry": Retry(NoBackoff(), 1), "socket_connect_timeout": CONNECT_TIMEOUT}
            self._commands = Redis.from_url(url, socket_timeout=COMMAND_TIMEOUT, **options)
            self._reader = Redis.from_url(
                url, socket_timeout=BLOCK + COMMAND_TIMEOUT, redis_connect_func=self._reader_connected, **options
            )
        except ValueError as error:
            raise ConfigError(f"--relay {redacted(url)!r}: {error}") from None
        self._publish_script = self._commands.register_script(PUBLISH)
        self._heartbeat_script = self._commands.register_script(HEARTBEAT)
        self._listener: Listener | None = None
        self._followed: dict[str, Followed] = {}
        self._queue: deque[tuple[str, dict[bytes, bytes]]] = deque()
        self._queue_bytes = 0
        self._unsent_bytes = 0
        self._send = asyncio.Event()
        self._wake_reader = False
        self._wake_position = "$"
        self._run_id: str | None = None
        self._connected_to = ""
        """The run id of the Redis the reader's connection was last made to (see `_reader_connected`)."""
        self._down_since: float | None = time.monotonic()
        """When Redis was last found unreachable (monotonic), None while it answers; unreachable until asked."""
        self._problem: str | None = "not connected to Redis yet"
        self._alive: set[str] = set()
        self._redis_offset = 0.0
        """Redis's clock minus this machine's, in seconds, as of the last heartbeat (for the lag metric)."""
        self._closing = False
        self._reading: asyncio.Task[None] | None = None
        self._sending: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None
        self._gap_timers: dict[str, asyncio.TimerHandle] = {}
        self.published = Counter("collab_relay_published_total", "Frames published to the other processes")
        self.received = Counter("collab_relay_received_total", "Frames received from the other processes")
        self.lag = Histogram(
            "collab_relay_lag_seconds", "Time from a frame's publishing to its delivery here", LAG_BUCKETS
        )
        self.gap_reloads = Counter("collab_relay_gap_reloads_total", "Rooms reloaded from the store after a gap")
        self.errors = Counter(
            "collab_relay_errors_total", "Redis commands that failed, by what was being done", ("doing",)
        )
        self.skipped = Counter("collab_relay_skipped_total", "Relayed entries not delivered, by reason", ("reason",))
        for counter in (self.published, self.received, self.gap_reloads):
            counter.inc(amount=0)

    @property
    def process(self) -> str:
        return self._process

    @property
    def problem(self) -> str | None:
        return self._problem

    def is_alive(self, process: str) -> bool:
        return process == self._process or process in self._alive

    def metrics(self) -> Iterable[Metric]:
        return (
            self.published,
            self.received,
            self.lag,
            self.gap_reloads,
            self.errors,
            self.skipped,
            Gauge(
                "collab_relay_processes",
                "Processes of the cluster beating now, this one included",
                lambda: len(self._alive | {self._process}),
            ),
            Gauge("collab_relay_unsent_bytes", "Bytes kept while Redis is unreachable", lambda: self._unsent_bytes),
            Gauge("collab_relay_connected", "1 while Redis answers", lambda: 0 if self._down_since is not None else 1),
        )

    # Life.

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        try:
            await self._connected(await self._run_id_now())
            await self._beat()  # who is alive, known before the first room loads
        except (RedisError, OSError) as error:
            self._lost("connecting", error)
        self._reading = asyncio.create_task(self._read_forever(), name="collab-relay-reader")
        self._sending = asyncio.create_task(self._send_forever(), name="collab-relay-publisher")
        self._beating = asyncio.create_task(self._beat_forever(), name="collab-relay-heartbeat")
        logger.info("relaying through %s", redacted(self.url), extra=fields(prefix=self.prefix))

    async def close(self) -> None:
        """Send what is queued (within COMMAND_TIMEOUT), say goodbye (the others drop our cursors now), disconnect."""
        self._closing = True
        for timer in self._gap_timers.values():
            timer.cancel()
        self._gap_timers.clear()
        for task in (self._reading, self._beating):
            if task is not None:
                task.cancel()
        self._send.set()  # the publisher sends what is queued, then returns
        tasks = {task for task in (self._reading, self._sending, self._beating) if task is not None}
        self._reading = self._sending = self._beating = None
        if tasks:
            # redis-py may turn a cancellation inside a command into a ConnectionError, which the loops
            # catch: they return then, since `_closing` is set; the timeout is for what nothing foresaw.
            _, late = await asyncio.wait(tasks, timeout=COMMAND_TIMEOUT + 1.0)
            for task in late:
                task.cancel()
            if self._queue:
                logger.warning("closing with %d frames not sent to Redis", len(self._queue))
        if self._down_since is None:
            try:
                await self._heartbeat_script(keys=[processes_key(self.prefix)], args=[self._process, "0", "1"])
            except (RedisError, OSError) as error:
                logger.warning("could not tell the other processes this one stops: %s", error)
        await self._commands.aclose()
        await self._reader.aclose()

    # Rooms.

    async def retained(self, name: str) -> Retained:
        if self._down_since is not None:
            return Retained([], "")
        try:
            entries = _entries(await self._commands.xrange(room_key(self.prefix, name), "-", "+", count=RETAINED_MAX))
            await self._beat()  # who is alive now: the presence of processes that are not is not shown
        except (RedisError, OSError) as error:
            self._lost("reading a room back", error)
            return Retained([], "")
        frames = []
        for _, values in entries:
            entry = decode_entry(values)
            if entry is None:
                self.skipped.inc("malformed")
            elif entry.frame is not None and entry.origin != self._process:
                frames.append(Relayed(entry.origin, entry.frame))
        position = entries[-1][0].decode() if entries else BEGINNING
        return Retained(frames, position)

    def follow(self, name: str, position: str) -> None:
        """Follow `name` from `position`; "" (Redis was unreachable for `retained`): as Redis comes back, a gap."""
        self._followed[name] = Followed(position or None)
        self._wake_reader = True
        self._send.set()

    def unfollow(self, name: str) -> None:
        followed = self._followed.pop(name, None)
        if followed is not None:
            self._unsent_bytes -= followed.unsent_bytes
        timer = self._gap_timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def publish(self, name: str, frame: bytes) -> None:
        followed = self._followed.get(name)
        if followed is None:
            return  # a room publishes only while loaded, and loaded rooms are followed
        if self._down_since is not None or self._queue_bytes + len(frame) > MAX_QUEUE_BYTES:
            self._keep_unsent(followed, frame)
            return
        self._queue.append((name, frame_fields(self._process, frame)))
        self._queue_bytes += len(frame)
        self._send.set()

    # Sending.

    def _keep_unsent(self, followed: Followed, frame: bytes) -> None:
        if followed.lost_unsent:
            return
        if self._unsent_bytes + len(frame) > MAX_UNSENT_BYTES:
            self._unsent_bytes -= followed.unsent_bytes
            followed.unsent.clear()
            followed.unsent_bytes = 0
            followed.lost_unsent = True  # the others will be told to reload it instead
            self.skipped.inc("unsent_overflow")
            return
        followed.unsent.append(frame)
        followed.unsent_bytes += len(frame)
        self._unsent_bytes += len(frame)

    def _requeue_unsent(self) -> None:
        """Redis answers again: queue what was kept, or a gap marker for a room whose frames did not fit."""
        for name, followed in self._followed.items():
            if followed.lost_unsent:
                self._queue.append((name, gap_fields(self._process)))
            for frame in followed.unsent:
                self._queue.append((name, frame_fields(self._process, frame)))
                self._queue_bytes += len(frame)
            followed.unsent, followed.unsent_bytes, followed.lost_unsent = [], 0, False
        self._unsent_bytes = 0
        self._send.set()

    async def _send_forever(self) -> None:
        while True:
            await self._send.wait()
            self._send.clear()
            if self._down_since is None and (self._queue or self._wake_reader):
                try:
                    await self._send_queued()
                except (RedisError, OSError) as error:
                    self._lost("publishing", error)
            if self._closing:
                return

    async def _send_queued(self) -> None:
        wake = self._wake_reader
        self._wake_reader = False
        while self._queue or wake:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), PUBLISH_BATCH))]
            try:
                async with self._commands.pipeline(transaction=False) as pipe:
                    if wake:
                        pipe.xadd(wake_key(self.prefix, self._process), {b"w": b"1"}, maxlen=1, approximate=False)
                        pipe.pexpire(wake_key(self.prefix, self._process), int(self._ttl_ms))
                    for name, values in batch:
                        args: list[str | bytes] = [self._retention_ms, self._ttl_ms]
                        for pair in values.items():
                            args.extend(pair)
                        await self._publish_script(keys=[room_key(self.prefix, name)], args=args, client=pipe)
                    await pipe.execute()
            except BaseException:
                for name, values in reversed(batch):  # kept in order for when Redis is back
                    self._queue.appendleft((name, values))
                self._move_queue_to_unsent()
                raise
            wake = False
            for _, values in batch:
                self._queue_bytes -= len(values.get(b"f", b""))
            self.published.inc(amount=len(batch))

    def _move_queue_to_unsent(self) -> None:
        while self._queue:
            name, values = self._queue.popleft()
            followed = self._followed.get(name)
            frame = values.get(b"f")
            if followed is not None:
                if frame is None:
                    followed.lost_unsent = True
                else:
                    self._keep_unsent(followed, frame)
        self._queue_bytes = 0

    # Reading.

    async def _read_forever(self) -> None:
        attempt = 0
        while True:
            try:
                if self._down_since is not None or self._connected_to != self._run_id:
                    await self._connected(await self._run_id_now())
                attempt = 0
                await self._read_once()
            except (RedisError, OSError) as error:
                if self._closing:
                    return
                self._lost("reading", error)
                await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1

    async def _run_id_now(self) -> str:
        info = await self._reader.info("server")
        return str(info.get("run_id", ""))

    async def _reader_connected(self, connection: Any) -> None:
        """Each time redis-py (re)connects the reader, note which Redis it reached: a restart between two
        reads is otherwise invisible, since redis-py replaces a closed connection without a word."""
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        info = await connection.read_response()
        found = re.search(rb"^run_id:(\w+)", info if isinstance(info, bytes) else b"", re.MULTILINE)
        self._connected_to = found[1].decode() if found else ""

    async def _read_once(self) -> None:
        streams: dict[Any, Any] = {wake_key(self.prefix, self._process): self._wake_position}
        for name, followed in self._followed.items():
            if followed.position is not None:
                streams[room_key(self.prefix, name)] = followed.position
        reply = cast(
            "list[tuple[bytes, Any]] | None",
            await self._reader.xread(streams, count=READ_COUNT, block=int(BLOCK * 1000)),
        )
        for key, read in reply or ():
            entries = _entries(read)
            if not entries:
                continue
            room = room_name(self.prefix, key)
            if room is None:
                self._wake_position = entries[-1][0].decode()
                continue
            following = self._followed.get(room)
            if following is not None:  # else unfollowed while the read waited
                self._deliver(room, following, entries)

    def _deliver(self, name: str, followed: Followed, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self._listener is not None
        now = time.time() + self._redis_offset
        for entry_id, values in entries:
            followed.position = entry_id.decode()
            entry = decode_entry(values)
            if entry is None:
                self.skipped.inc("malformed")
                logger.warning(
                    "skipped a relayed entry collab did not write", extra=fields(room=name, id=followed.position)
                )
                continue
            if entry.origin == self._process:
                continue
            self.received.inc()
            millis = id_millis(entry_id)
            if millis is not None:
                self.lag.observe(max(0.0, now - millis / 1000))
            if entry.frame is None:
                self._schedule_gap(name, followed, Gap(f"process {entry.origin} could not publish everything"))
                continue
            try:
                self._listener.relayed(name, Relayed(entry.origin, entry.frame))
            except CollabError as error:
                self.skipped.inc("refused")
                logger.warning("refused a frame relayed from %s: %s", entry.origin, error, extra=fields(room=name))
            except Exception:
                self.skipped.inc("failed")
                logger.exception("a frame relayed from %s failed", entry.origin, extra=fields(room=name))

    # Gaps, outages.

    async def _connected(self, run_id: str) -> None:
        """Redis answers (again): find what may have been missed meanwhile, send what was kept."""
        if self._down_since is None and run_id == self._run_id:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()  # a new Redis, found between two reads
        same_server = self._run_id is None or run_id == self._run_id
        down_for = time.monotonic() - self._down_since if self._run_id is not None else 0.0
        found = after_outage(
            self._followed.values(), same_server=same_server, down_for=down_for, retention=self.retention
        )
        if found is not None:
            reason, rooms = found
            for followed in rooms:
                if not same_server:
                    followed.position = BEGINNING  # a new Redis: its streams hold only what came after
                elif followed.position is None:
                    followed.position = await self._last_id(followed)
            names = [name for name, followed in self._followed.items() if any(followed is room for room in rooms)]
            for name in names:
                self._schedule_gap(name, self._followed[name], Gap(reason))
            if names:
                logger.warning(
                    "%d rooms may have missed updates (%s): reloading them from the store", len(names), reason
                )
        if self._run_id is not None:
            logger.warning("Redis answers again", extra=fields(down_for=f"{down_for:.1f}s"))
        self._run_id = run_id
        self._down_since = None
        self._problem = None
        self._wake_reader = True
        self._requeue_unsent()

    async def _last_id(self, followed: Followed) -> str:
        name = next(name for name, room in self._followed.items() if room is followed)
        last = _entries(await self._reader.xrevrange(room_key(self.prefix, name), "+", "-", count=1))
        return last[0][0].decode() if last else BEGINNING

    def _lost(self, doing: str, error: BaseException) -> None:
        self.errors.inc(doing)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._problem = f"Redis unreachable: {error}"
            logger.error("Redis unreachable while %s: %s; serving this process's clients only", doing, error)
        elif self._run_id is None and self._problem == "not connected to Redis yet":
            self._problem = f"Redis unreachable: {error}"
            logger.error("Redis unreachable: %s; serving this process's clients only until it answers", error)

    def _schedule_gap(self, name: str, followed: Followed, gap: Gap) -> None:
        """Reload `name` from the store after `_gap_delay`; gaps found meanwhile are covered by the same reload."""
        if name in self._gap_timers:
            return
        followed.gap = gap
        self._gap_timers[name] = asyncio.get_running_loop().call_later(self._gap_delay, self._reload, name)

    def _reload(self, name: str) -> None:
        self._gap_timers.pop(name, None)
        followed = self._followed.get(name)
        if followed is None or followed.gap is None or self._listener is None:
            return
        logger.info("reloading from the store: %s", followed.gap.reason, extra=fields(room=name))
        followed.gap = None
        self.gap_reloads.inc()
        self._listener.gap(name)

    # Heartbeats.

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if self._down_since is not None:
                continue  # who is alive cannot be told from here: nobody is declared gone meanwhile
            try:
                await self._beat()
            except (RedisError, OSError) as error:
                if self._closing:
                    return
                self._lost("beating", error)

    async def _beat(self) -> None:
        args = [self._process, "1", str(int(FORGET_PROCESS_AFTER * 1000))]
        sent = time.time()
        redis_now, beats = await self._heartbeat_script(keys=[processes_key(self.prefix)], args=args)
        self._redis_offset = int(redis_now) / 1000 - (sent + time.time()) / 2
        alive = set()
        for index in range(0, len(beats) - 1, 2):
            if int(beats[index + 1]) < PROCESS_TIMEOUT * 1000:
                alive.add(beats[index].decode())
        alive.discard(self._process)
        gone = self._alive - alive
        self._alive = alive
        for process in sorted(gone):
            logger.warning("process %s stopped beating: dropping its clients' presence", process)
            assert self._listener is not None
            self._listener.gone(process)


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """A stream read's entries, typed: redis-py types replies loosely; collab's client never decodes them."""
    return cast("list[tuple[bytes, dict[bytes, bytes]]]", reply or [])
