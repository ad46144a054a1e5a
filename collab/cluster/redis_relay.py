"""The relay on Redis (or Valkey): one stream per room, read from the last id seen, and a heartbeat per process.

Why streams, not pub/sub: a subscriber that is disconnected, or a Redis that restarts, loses pub/sub
messages without anyone knowing. A stream keeps its entries (for `--relay-retention`), is read from the
last id seen, and what is missed anyway can be named (`entries.after_outage`), so a process reloads the
rooms concerned from the store instead of serving a document that silently lacks someone's keystrokes.

Three tasks, each on its own connection:

    reader     XREAD BLOCK over every followed room's stream (and this process's wake stream, which
               ends the wait when a room is followed), delivering to the `Listener`; each time its
               connection is made, it reads Redis's epoch key and, after an outage, works out the gaps
    publisher  sends what rooms publish, in pipelines of one small script each (XADD, trim to the
               retention by Redis's clock, renew the key's time to live)
    heartbeat  every HEARTBEAT_INTERVAL: this process's beat, and everyone's, in one script; a process
               not heard from for PROCESS_TIMEOUT is gone (its clients' cursors are removed everywhere)

While Redis is unreachable every process serves its own clients; what a room publishes meanwhile is kept
(bounded: MAX_UNSENT_BYTES) and sent when Redis is back. Whatever could not be sent at all (past that bound,
past MAX_QUEUE_BYTES to a slow Redis, refused by Redis, or kept for a room that unloaded) is owed as a gap
marker, sent as soon as Redis takes writes: the other processes then reload that room from the store.

Only commands any ACL user with `+@read +@write +@stream +@scripting` can run are used (no INFO, no CONFIG
except one optional check): a Redis that lost its data is told by the epoch key, not by its run id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    decode_ended,
    decode_entry,
    ended_fields,
    epoch_key,
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

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors that mean Redis cannot be reached now (anything else it answers is an answer: see `_refused`)."""
LOOP_FAILURE_PAUSE = 1.0
"""Seconds a relay task waits after an error nothing foresaw (logged with its traceback) before going on."""

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
redis.call('PEXPIRE', KEYS[2], ARGV[3])
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
"""Beat for ARGV[1] (or, ARGV[2] = '0', say it is gone), forget beats older than ARGV[3] ms (which is also how
long the hash and the epoch key KEYS[2] live on); return Redis's time and every process left with the age of
its beat in ms."""


def process_name() -> str:
    """This process's name in the cluster: host, pid and a random suffix (pids are reused, also across hosts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RedisRelay:
    """A `collab.cluster.Relay` on Redis streams."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "collab:",
        retention: float = 60.0,
        commit_interval: float = 0.05,
        process: str = "",
    ) -> None:
        """`commit_interval`: the store's window (`--commit-interval`); a gap is reloaded once the other
        processes' commits of what was missed have had time to land."""
        self.url = url
        self.prefix = prefix
        self.retention = retention
        self._process = process or process_name()
        self._retention_ms = str(int(retention * 1000))
        self._ttl_ms = str(int(max(2 * retention, 10.0) * 1000))
        self._gap_delay = 1.0 + 2 * commit_interval
        try:
            options: dict[str, Any] = {"retry": Retry(NoBackoff(), 1), "socket_connect_timeout": CONNECT_TIMEOUT}
            # One retry: a pooled connection to a Redis that restarted fails once, and the retry replaces it;
            # the reader notices the new connection (`_reader_connected`), so a restart is never missed.
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
        self._gaps_owed: set[str] = set()
        """Rooms whose frames the others may have missed: each gets a gap marker once Redis takes writes."""
        self._send = asyncio.Event()
        self._wake_reader = False
        self._wake_position = "$"
        self._epoch: str | None = None
        """The epoch of the Redis this process has been reading (see `entries.epoch_key`); None before the first."""
        self._connected_to = ""
        """The epoch the reader's connection found when it was last made."""
        self._down_since: float | None = time.monotonic()
        """When Redis was last found unreachable (monotonic), None while it answers; unreachable until asked."""
        self._outage_logged = False
        self._refusing: str | None = None
        self._last_refusal: str | None = None
        """The last refusal logged: the same one again is only counted."""
        """Why Redis refused the last writes (out of memory, a key of the wrong type), until one succeeds."""
        self._alive: set[str] = set()
        self._grace_until = 0.0
        """Until then (monotonic) nobody is declared gone: just after an outage, processes are still beating again."""
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
        self.skipped = Counter(
            "collab_relay_skipped_total", "Relayed frames not delivered or not sent, by reason", ("reason",)
        )
        for counter in (self.published, self.received, self.gap_reloads):
            counter.inc(amount=0)

    @property
    def process(self) -> str:
        return self._process

    @property
    def problem(self) -> str | None:
        """Said on /readyz: why other processes may be missing this one's frames (details are in the log)."""
        if self._down_since is not None:
            return "Redis unreachable"
        if self._refusing is not None:
            return "Redis refuses writes"
        return None

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
            await self._connected(await self._epoch_now())
            await self._beat()  # who is alive, known before the first room loads
            await self._check_eviction()
        except UNREACHABLE as error:
            self._lost("connecting", error)
        except RedisError as error:
            self._refused("connecting", error)
        self._reading = asyncio.create_task(self._forever(self._read, "reading"), name="collab-relay-reader")
        self._sending = asyncio.create_task(self._send_forever(), name="collab-relay-publisher")
        self._beating = asyncio.create_task(self._forever(self._beat_once, "beating"), name="collab-relay-heartbeat")
        logger.info("relaying through %s", redacted(self.url), extra=fields(prefix=self.prefix))

    async def _check_eviction(self) -> None:
        """Warn when Redis may evict collab's keys: every key has a time to live, so the `volatile-*` policies
        pick them too, and a stream evicted is a gap in every room it held."""
        try:
            reply = await self._commands.config_get("maxmemory-policy")
        except ResponseError:
            return  # CONFIG is not allowed (a managed Redis, an ACL): nothing to check
        policy = next(iter(reply.values()), b"") if isinstance(reply, dict) else b""
        text = policy.decode() if isinstance(policy, bytes) else str(policy)
        if text and text != "noeviction":
            logger.warning("Redis may evict collab's keys (maxmemory-policy %s): set maxmemory-policy noeviction", text)

    async def close(self) -> None:
        """Send what is queued and owed (within COMMAND_TIMEOUT), say goodbye (the others drop our cursors now),
        disconnect."""
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
        unsent = len(self._queue) + sum(len(followed.unsent) for followed in self._followed.values())
        if unsent or self._gaps_owed:
            logger.warning(
                "closing with %d frames and %d gap markers not sent to Redis: the other processes will see those"
                " edits when they next load the rooms from the store",
                unsent,
                len(self._gaps_owed),
            )
        if self._down_since is None:
            try:
                await self._say_goodbye()
            except RedisError as error:
                logger.warning("could not tell the other processes this one stops: %s", error)
        await self._commands.aclose()
        await self._reader.aclose()

    async def _say_goodbye(self) -> None:
        keys = [processes_key(self.prefix), epoch_key(self.prefix)]
        await self._heartbeat_script(keys=keys, args=[self._process, "0", str(int(FORGET_PROCESS_AFTER * 1000))])

    async def _forever(self, step: Callable[[], Awaitable[None]], doing: str) -> None:
        """Run `step` until closed: Redis unreachable is waited out (quickly at first), anything else it says is
        logged once per occurrence; an error nothing foresaw is logged with its traceback. Never ends otherwise."""
        attempt = 0
        while not self._closing:
            try:
                await step()
                attempt = 0
            except UNREACHABLE as error:
                if self._closing:
                    return
                self._lost(doing, error)
                await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1
            except RedisError as error:
                if self._closing:
                    return
                self._refused(doing, error)
                await asyncio.sleep(LOOP_FAILURE_PAUSE)
            except Exception:
                logger.exception("the relay failed while %s; going on", doing)
                await asyncio.sleep(LOOP_FAILURE_PAUSE)

    # Rooms.

    async def retained(self, name: str) -> Retained:
        if self._down_since is not None:
            return Retained([], "")
        try:
            key = room_key(self.prefix, name)
            entries = _entries(await self._commands.xrange(key, "-", "+", count=RETAINED_MAX))
            await self._beat()  # who is alive now: the presence of processes that are not is not shown
        except UNREACHABLE as error:
            self._lost("reading a room back", error)
            return Retained([], "")
        except RedisError as error:  # its key is not a stream, say: the reader finds it out and skips it
            self._refused("reading a room back", error, name)
            return Retained([], BEGINNING)
        frames: list[Relayed] = []
        for _, values in entries:
            entry = decode_entry(values)
            if entry is None and decode_ended(values) is not None:
                frames.clear()  # the document was deleted or renamed: what came before was another's
            elif entry is None:
                self.skipped.inc("malformed")
            elif entry.frame is not None and entry.origin != self._process:
                frames.append(Relayed(entry.origin, entry.frame, entry.subject))
        position = entries[-1][0].decode() if entries else BEGINNING
        return Retained(frames, position)

    def follow(self, name: str, position: str) -> None:
        """Follow `name` from `position`; "" (Redis was unreachable for `retained`): as Redis comes back, a gap."""
        self._followed[name] = Followed(position or None)
        self._wake_reader = True
        self._send.set()

    def unfollow(self, name: str) -> None:
        followed = self._followed.pop(name, None)
        if followed is not None and followed.unsent:
            self._unsent_bytes -= followed.unsent_bytes
            self._owe_gap(name)  # its frames go unsent: the others are told to reload it instead
        timer = self._gap_timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def end(self, name: str, code: int, reason: str) -> None:
        if self._down_since is not None:
            logger.warning(
                "Redis is unreachable: the other processes do not hear that the room ended, and keep its clients",
                extra=fields(room=name),
            )
            return
        self._queue.append((name, ended_fields(self._process, code, reason)))
        self._send.set()
        await asyncio.sleep(self._gap_delay)  # they close it, then commit what they held within their window

    def publish(self, name: str, frame: bytes, subject: str | None = None) -> None:
        followed = self._followed.get(name)
        if followed is None or followed.broken:
            return  # a room publishes only while loaded (and followed); a broken key takes nothing
        if self._down_since is not None:
            self._keep_unsent(name, followed, frame, subject)
        elif self._queue_bytes + len(frame) > MAX_QUEUE_BYTES:
            self.skipped.inc("queue_full")
            self._owe_gap(name)  # a slow Redis: this frame is dropped, the others reload the room instead
        else:
            self._queue.append((name, frame_fields(self._process, frame, subject)))
            self._queue_bytes += len(frame)
            self._send.set()

    # Sending.

    def _owe_gap(self, name: str) -> None:
        if name not in self._gaps_owed:
            self._gaps_owed.add(name)
            logger.warning(
                "some of this room's frames cannot be sent: the other processes will reload it from the store",
                extra=fields(room=name),
            )
        self._send.set()

    def _keep_unsent(self, name: str, followed: Followed, frame: bytes, subject: str | None) -> None:
        if name in self._gaps_owed:
            return  # the others reload it anyway
        if self._unsent_bytes + len(frame) > MAX_UNSENT_BYTES:
            self._unsent_bytes -= followed.unsent_bytes
            followed.unsent.clear()
            followed.unsent_bytes = 0
            self.skipped.inc("unsent_overflow")
            self._owe_gap(name)
            return
        followed.unsent.append((frame, subject))
        followed.unsent_bytes += len(frame)
        self._unsent_bytes += len(frame)

    def _requeue_unsent(self) -> None:
        """Redis answers again: queue what was kept, in order, before anything newer."""
        kept: list[tuple[str, dict[bytes, bytes]]] = []
        for name, followed in self._followed.items():
            kept.extend((name, frame_fields(self._process, frame, subject)) for frame, subject in followed.unsent)
            self._queue_bytes += followed.unsent_bytes
            followed.unsent, followed.unsent_bytes = [], 0
        self._queue.extendleft(reversed(kept))
        self._unsent_bytes = 0
        self._send.set()

    async def _send_forever(self) -> None:
        while True:
            await self._send.wait()
            self._send.clear()
            if self._down_since is None and (self._queue or self._wake_reader or self._gaps_owed):
                try:
                    await self._send_queued()
                except UNREACHABLE as error:
                    self._lost("publishing", error)
                except RedisError as error:
                    self._refused("publishing", error)
                except Exception:
                    logger.exception("the relay failed while publishing; going on")
            if self._closing:
                return

    async def _send_queued(self) -> None:
        """Send what is queued, in pipelines, with the gap markers owed. A frame Redis refuses (out of memory,
        a key not a stream) is dropped and its room owed a gap marker; connection errors raise."""
        while self._queue or self._wake_reader or self._gaps_owed:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), PUBLISH_BATCH))]
            owed = sorted(self._gaps_owed)[:PUBLISH_BATCH]
            wake, self._wake_reader = self._wake_reader, False
            try:
                results = await self._pipeline(batch, owed, wake)
            except BaseException:
                self._wake_reader = self._wake_reader or wake
                for name, values in reversed(batch):  # kept in order for when Redis is back
                    self._queue.appendleft((name, values))
                if self._down_since is None:
                    self._down_since = time.monotonic()  # what is queued waits in `unsent` from now on
                self._move_queue_to_unsent()
                raise
            refused = False
            for (name, values), result in zip(batch, results[: len(batch)], strict=True):
                self._queue_bytes -= len(values.get(b"f", b""))
                if not isinstance(result, ResponseError):
                    self.published.inc()
                elif not self._spoiled(name, result):
                    refused = True
                    self.skipped.inc("refused")
                    self._refused("publishing", result, name)
                    self._gaps_owed.add(name)
            for name, result in zip(owed, results[len(batch) :], strict=False):
                if not isinstance(result, ResponseError) or self._spoiled(name, result):
                    self._gaps_owed.discard(name)
                else:
                    refused = True
                    self._refused("publishing", result, name)
            if refused:
                return  # the heartbeat tries again in a second: no spinning on a Redis that refuses
            self._refusing = None

    def _spoiled(self, name: str, error: ResponseError) -> bool:
        """Whether Redis refused a write to `name`'s stream because its key is not a stream: that room is
        then neither read nor written (`Followed.broken`) until the key is mended, and the others are fine."""
        if not str(error).startswith("WRONGTYPE"):
            return False
        followed = self._followed.get(name)
        if followed is not None and not followed.broken:
            followed.broken = True
            self.skipped.inc("not_a_stream")
            logger.error(
                "the room's Redis key is not a stream (not collab's?): its updates are not relayed until the key"
                " is deleted",
                extra=fields(room=name, key=room_key(self.prefix, name)),
            )
        return True

    async def _pipeline(self, batch: list[tuple[str, dict[bytes, bytes]]], owed: list[str], wake: bool) -> list[Any]:
        """One round trip: every frame of `batch`, then a gap marker per room of `owed`, then the wake entry;
        their results in that order (a `ResponseError` for a command Redis refused)."""
        async with self._commands.pipeline(transaction=False) as pipe:
            entries = [*batch, *((name, gap_fields(self._process)) for name in owed)]
            for name, values in entries:
                args: list[str | bytes] = [self._retention_ms, self._ttl_ms]
                for pair in values.items():
                    args.extend(pair)
                await self._publish_script(keys=[room_key(self.prefix, name)], args=args, client=pipe)
            if wake:
                pipe.xadd(wake_key(self.prefix, self._process), {b"w": b"1"}, maxlen=1, approximate=False)
                pipe.pexpire(wake_key(self.prefix, self._process), int(self._ttl_ms))
            return list(await pipe.execute(raise_on_error=False))

    def _move_queue_to_unsent(self) -> None:
        while self._queue:
            name, values = self._queue.popleft()
            followed = self._followed.get(name)
            entry = decode_entry(values)
            if followed is None or entry is None or entry.frame is None:
                self._gaps_owed.add(name)
            else:
                self._keep_unsent(name, followed, entry.frame, entry.subject)
        self._queue_bytes = 0

    # Reading.

    async def _read(self) -> None:
        if self._down_since is not None or self._connected_to != self._epoch:
            await self._connected(await self._epoch_now())
        try:
            await self._read_once()
        except ResponseError as error:
            await self._find_broken_keys(error)

    async def _epoch_now(self) -> str:
        """The epoch of the Redis the reader reaches now: PING makes its connection if there is none, and each
        connection made reads the epoch (`_reader_connected`); a Redis that lost its data dropped it too."""
        await self._reader.ping()
        return self._connected_to

    async def _reader_connected(self, connection: Any) -> None:
        """Each time redis-py (re)connects the reader, note which Redis it reached (its epoch): a restart between
        two reads is otherwise invisible, since redis-py replaces a closed connection without a word."""
        await connection.on_connect()
        key = epoch_key(self.prefix)
        await connection.send_command("SET", key, secrets.token_hex(8), "NX", "PX", int(FORGET_PROCESS_AFTER * 1000))
        await connection.read_response()
        await connection.send_command("GET", key)
        found = await connection.read_response()
        self._connected_to = found.decode() if isinstance(found, bytes) else ""

    async def _read_once(self) -> None:
        streams: dict[Any, Any] = {wake_key(self.prefix, self._process): self._wake_position}
        for name, followed in self._followed.items():
            if followed.position is not None and not followed.broken:
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

    async def _find_broken_keys(self, error: ResponseError) -> None:
        """XREAD failed for all: find the rooms whose key is not a stream (another program's key), and read the
        others without them; each is looked at again with every heartbeat (`_mend_broken`)."""
        found = False
        for name, followed in list(self._followed.items()):
            if not followed.broken and await self._reader.type(room_key(self.prefix, name)) not in (b"stream", b"none"):
                found = self._spoiled(name, ResponseError("WRONGTYPE read"))
        if not found:
            raise error

    def _deliver(self, name: str, followed: Followed, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self._listener is not None
        now = time.time() + self._redis_offset
        for entry_id, values in entries:
            followed.position = entry_id.decode()
            entry = decode_entry(values)
            if entry is None:
                ended = decode_ended(values)
                if ended is not None:
                    if ended.origin != self._process:
                        self._listener.ended(name, ended.code, ended.reason)
                    return  # the room is unfollowed now: what follows in its stream is a new document's
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
                lag = max(0.0, now - millis / 1000)
                self.lag.observe(lag)
                if lag > self.retention / 2:  # so far behind that what came before may have been trimmed
                    self._schedule_gap(name, followed, Gap(f"reading {lag:.0f} s behind, close to --relay-retention"))
            if entry.frame is None:
                self._schedule_gap(name, followed, Gap(f"process {entry.origin} could not publish everything"))
                continue
            try:
                self._listener.relayed(name, Relayed(entry.origin, entry.frame, entry.subject))
            except CollabError as error:
                self.skipped.inc("refused")
                logger.warning("refused a frame relayed from %s: %s", entry.origin, error, extra=fields(room=name))
            except Exception:
                self.skipped.inc("failed")
                logger.exception("a frame relayed from %s failed", entry.origin, extra=fields(room=name))

    # Gaps, outages.

    async def _connected(self, epoch: str) -> None:
        """Redis answers (again), or the reader found itself on another Redis: find what may have been missed
        meanwhile, send what was kept."""
        if self._down_since is None and epoch == self._epoch:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()  # a new Redis, found between two reads
        same_server = self._epoch is None or epoch == self._epoch
        down_for = time.monotonic() - self._down_since if self._epoch is not None else 0.0
        found = after_outage(
            self._followed.values(), same_server=same_server, down_for=down_for, retention=self.retention
        )
        if found is not None:
            reason, rooms = found
            names = [name for name, followed in self._followed.items() if any(followed is room for room in rooms)]
            for name in names:
                followed = self._followed[name]
                if not same_server:
                    followed.position = BEGINNING  # a new Redis: its streams hold only what came after
                    self._wake_position = "$"
                elif followed.position is None:
                    followed.position = await self._last_id(name)
                self._schedule_gap(name, followed, Gap(reason))
            if names:
                logger.warning(
                    "%d rooms may have missed updates (%s): reloading them from the store", len(names), reason
                )
        if self._epoch is not None:
            logger.warning("Redis answers again", extra=fields(down_for=f"{down_for:.1f}s"))
        self._epoch = epoch
        self._down_since = None
        self._outage_logged = False
        self._grace_until = time.monotonic() + PROCESS_TIMEOUT + HEARTBEAT_INTERVAL
        self._wake_reader = True
        self._requeue_unsent()

    async def _last_id(self, name: str) -> str:
        last = _entries(await self._reader.xrevrange(room_key(self.prefix, name), "+", "-", count=1))
        return last[0][0].decode() if last else BEGINNING

    def _lost(self, doing: str, error: BaseException) -> None:
        """Redis cannot be reached: logged once an outage, whichever task finds it first."""
        self.errors.inc(doing)
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not self._outage_logged:
            self._outage_logged = True
            logger.error("Redis unreachable while %s: %s; serving this process's clients only", doing, error)

    def _refused(self, doing: str, error: BaseException, name: str | None = None) -> None:
        """Redis answered with an error (out of memory, a wrong type, a missing permission): it is reachable,
        so nothing waits for it to come back; logged when the reason changes."""
        self.errors.inc(doing)
        if self._last_refusal != str(error):
            self._last_refusal = str(error)
            logger.error(
                "Redis refused a command while %s: %s", doing, error, extra=fields(room=name) if name else None
            )
        if doing == "publishing":
            self._refusing = str(error)  # until a publish succeeds: other processes are missing this one's frames

    def _schedule_gap(self, name: str, followed: Followed, gap: Gap) -> None:
        """Reload `name` after `_gap_delay` (and a jitter, so that many rooms do not reload in one loop turn);
        gaps found meanwhile are covered by the same reload."""
        if name in self._gap_timers:
            return
        followed.gap = gap
        delay = self._gap_delay + random.uniform(0, 0.5)
        self._gap_timers[name] = asyncio.get_running_loop().call_later(delay, self._reload, name)

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

    async def _beat_once(self) -> None:
        await asyncio.sleep(HEARTBEAT_INTERVAL)
        if self._down_since is not None:
            return  # who is alive cannot be told from here: nobody is declared gone meanwhile
        await self._beat()
        await self._mend_broken()
        if self._gaps_owed or self._queue:
            self._send.set()  # try again what Redis refused a second ago

    async def _beat(self) -> None:
        keys = [processes_key(self.prefix), epoch_key(self.prefix)]
        args = [self._process, "1", str(int(FORGET_PROCESS_AFTER * 1000))]
        sent = time.time()
        redis_now, beats = await self._heartbeat_script(keys=keys, args=args)
        self._redis_offset = int(redis_now) / 1000 - (sent + time.time()) / 2
        alive = set()
        for index in range(0, len(beats) - 1, 2):
            if int(beats[index + 1]) < PROCESS_TIMEOUT * 1000:
                alive.add(beats[index].decode())
        alive.discard(self._process)
        if time.monotonic() < self._grace_until:
            self._alive |= alive  # just after an outage the others may not have beaten again yet
            return
        gone = self._alive - alive
        self._alive = alive
        assert self._listener is not None
        for process in sorted(gone):
            logger.warning("process %s stopped beating: dropping its clients' presence", process)
            try:
                self._listener.gone(process)
            except Exception:
                logger.exception("dropping the presence of process %s failed", process)

    async def _mend_broken(self) -> None:
        for name, followed in list(self._followed.items()):
            if followed.broken and await self._reader.type(room_key(self.prefix, name)) in (b"stream", b"none"):
                followed.broken = False
                logger.warning("the room's Redis key is a stream again: relaying it", extra=fields(room=name))
                self._schedule_gap(name, followed, Gap("its key was not a stream for a while"))


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """A stream read's entries, typed: redis-py types replies loosely; collab's client never decodes them."""
    return cast("list[tuple[bytes, dict[bytes, bytes]]]", reply or [])
