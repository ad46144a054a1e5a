"""The server: the store, the rooms, the listening socket, and a graceful, flushing shutdown.

A WebSocket upgrade to `/<room>` joins that room; a plain GET is answered over
HTTP on the same port by `self.http` (see `collab.http`). collab's own
transport (`collab.server.transport`) runs every connection; the rules each
connection follows are `collab.sync.connection`'s. `run()` adds signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from http import HTTPStatus

from websockets.http11 import Response

from ..auth import Access
from ..cluster import Relay
from ..config import Settings
from ..errors import AuthError, ConfigError, DatabaseInUseError, StorageError
from ..http.api import install_api
from ..http.router import HttpRequest, OriginPolicy, Router, respond
from ..http.share import install_share
from ..http.static import install_web
from ..http.write import install_write_api
from ..logs import fields, log_everywhere
from ..metrics import render
from ..store import Store
from ..store.engines import locate, open_store, redacted
from ..sync.connection import ConnectionRules
from ..webhooks.describe import Describer
from ..webhooks.sender import WebhookOptions, Webhooks
from .metrics import ServerMetrics
from .outbox import Backlogs
from .rooms import Rooms
from .sessions import Sessions
from .transport import CLOSE_TIMEOUT, Endpoint, WebSocketConnection

__all__ = ["CollabServer", "run"]

logger = logging.getLogger("collab.server")

READY_TIMEOUT = 2.0
LOCK_CHECK_INTERVAL = 2.0
"""Seconds between checks that the server still holds its database's lock (a PostgreSQL one can be lost)."""
MIN_RETENTION_WINDOWS = 10
"""--relay-retention is at least this many --commit-interval windows (plus 2 s)."""
LISTEN_BACKLOG = 1024
"""Connections the kernel queues before collab accepts them (asyncio's default of 100 drops bursts)."""


class CollabServer:
    """collab's server: the store, the rooms and the listening socket."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        """Listen with SO_REUSEPORT, sharing the port with the other workers of `collab.cluster.workers`."""
        self.access = Access(settings.secret(), settings.public_key())
        self.origins = OriginPolicy(
            settings.allowed_origin, restrict_by_default=not self.access.enabled, tls=settings.certfile is not None
        )
        if (settings.certfile is None) != (settings.keyfile is None):
            raise ConfigError("TLS needs both --certfile and --keyfile")
        database = locate(settings.db)
        self.store: Store = open_store(settings, serving=True)
        self.relay: Relay | None = open_relay(settings)
        self.lock = database.lock(shared=self.relay is not None)
        self.metrics = ServerMetrics(
            self.store,
            connections=lambda: len(self.peers),
            rooms=lambda: len(self.rooms),
            relay=self.relay,
        )
        self.rooms = Rooms(
            self.store,
            unload_after=settings.unload_after,
            compact_after=settings.compact_after,
            max_rooms=settings.max_rooms,
            max_room_connections=settings.max_room_connections,
            max_document_size=settings.max_document_size,
            rejected=self.metrics.rejected,
            relay=self.relay,
        )
        # Above the largest document plus the largest message: a newcomer downloading the one while the
        # other is relayed to it is never over the ceiling (see Backlogs).
        ceiling = (settings.max_document_size or settings.max_message_size) + settings.max_message_size
        self._backlogs = Backlogs(settings.max_buffered, settings.slow_client_grace, ceiling + settings.max_buffered)
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._lock_watch: asyncio.Task[None] | None = None
        self._lock_lost: str | None = None
        """Why the database's lock is held by another server now (then /readyz says 503), or None."""
        self.webhooks = open_webhooks(settings, self.store, self.rooms)
        self.sessions = Sessions(self.access, database.revocations(), self._end_session)
        self.http = Router()
        self.http.route("/healthz", self._healthz)
        self.http.route("/readyz", self._readyz)
        self.http.route("/metrics", self._metrics)
        install_api(self.http, self.store, self.rooms, self.access, self.metrics)
        install_share(self.http, self.access, self.metrics)
        install_write_api(self.http, self.store, self.rooms, self.access, self.metrics, settings.max_message_size)
        install_web(self.http)
        self.endpoint = Endpoint(
            access=self.access,
            origins=self.origins,
            router=self.http,
            rooms=self.rooms,
            sessions=self.sessions,
            metrics=self.metrics,
            rules=ConnectionRules(settings.max_messages_per_second, settings.throttle_close_after),
            backlogs=self._backlogs,
            max_message_size=settings.max_message_size,
            max_connections=settings.max_connections,
            handshake_timeout=settings.handshake_timeout,
        )
        self.port = 0
        """The port listened on, known once started (useful with port 0)."""

    @property
    def peers(self) -> set[WebSocketConnection]:
        """The open WebSocket connections."""
        return self.endpoint.peers

    @property
    def scheme(self) -> str:
        return "wss" if self.settings.certfile else "ws"

    async def start(self) -> None:
        """Open the store, then listen; raises `StorageError` or `ConfigError` saying what is wrong."""
        tls = self._tls_context()
        self.lock.acquire()
        try:
            await self.store.start()
        except BaseException:
            self.lock.release()
            raise
        try:
            await self.sessions.start()  # revocations stored so far hold from the first connection on
            if self.relay is not None:
                await self.relay.start(self.rooms)
            if self.webhooks is not None:
                await self.webhooks.start()
        except BaseException:
            await self.sessions.close()
            await self.store.close()
            self.lock.release()
            raise
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self.endpoint,
                self.settings.host,
                self.settings.port,
                ssl=tls,
                ssl_handshake_timeout=self.settings.handshake_timeout if tls else None,
                backlog=LISTEN_BACKLOG,
                reuse_port=self.reuse_port,
            )
        except OSError as error:
            if self.webhooks is not None:
                await self.webhooks.stop()
            if self.relay is not None:
                await self.relay.close()
            await self.sessions.close()
            await self.store.close()
            self.lock.release()
            raise ConfigError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {error.strerror}"
            ) from error
        self.port = self.endpoint.port = self._server.sockets[0].getsockname()[1]
        if self.settings.keepalive > 0:
            self._keepalive = asyncio.create_task(self._keepalive_forever(), name="collab-keepalive")
        self._sweeper = asyncio.create_task(self._sweep_backlogs_forever(), name="collab-slow-clients")
        await asyncio.to_thread(
            self.lock.describe,
            url=f"{self.scheme}://{connectable_host(self.settings.host)}:{self.port}",
            auth=self.access.enabled,
        )
        self._lock_watch = asyncio.create_task(self._watch_lock_forever(), name="collab-lock-watch")
        http = "https" if tls else "http"
        logger.info(
            "listening on %s://%s:%d",
            http,
            self.settings.host,
            self.port,
            extra=fields(database=redacted(str(self.settings.db)), access_control=self.access.enabled),
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.certfile is None or self.settings.keyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.certfile, self.settings.keyfile)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"cannot load TLS certificate {self.settings.certfile}: {error}") from error
        return context

    async def stop(self) -> None:
        """Close every connection (1001), then make every accepted update durable."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._lock_watch is not None:
            self._lock_watch.cancel()  # a check still running on its thread is ordered with release by the lock
        server.close()  # listen no more
        await self.endpoint.shutdown(CLOSE_TIMEOUT + 1.0)
        await server.wait_closed()
        await self.sessions.close()
        await self.rooms.close()
        if self.relay is not None:
            await self.relay.close()  # after the rooms: their clients' departures reach the other processes
        if self.webhooks is not None:
            await self.webhooks.stop()  # what it had not sent stays in the outbox, for the next start
        await self.store.close()
        self.lock.release()
        logger.info("stopped; everything is on disk")

    # HTTP.

    async def _healthz(self, request: HttpRequest) -> Response:
        return respond(HTTPStatus.OK, "ok\n")

    async def _readyz(self, request: HttpRequest) -> Response:
        """Ready when the store could commit now, its last commit succeeded, and the database lock is held."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.store.check_writable()
        except (StorageError, TimeoutError) as error:
            return respond(HTTPStatus.SERVICE_UNAVAILABLE, f"store not writable: {describe(error)}\n")
        if self.store.failing:
            return respond(HTTPStatus.SERVICE_UNAVAILABLE, "store not writable: commits are failing\n")
        if self._lock_lost is not None:
            return respond(HTTPStatus.SERVICE_UNAVAILABLE, f"database lock lost: {self._lock_lost}\n")
        if self.relay is not None and self.relay.problem is not None:
            return respond(HTTPStatus.SERVICE_UNAVAILABLE, f"relay: {self.relay.problem}\n")
        return respond(HTTPStatus.OK, "ready\n")

    async def _watch_lock_forever(self) -> None:
        """Keep the database's one-server lock: a PostgreSQL advisory lock goes when its connection does.

        `ServerLock.check` takes it again after PostgreSQL restarted. If another server took it meanwhile,
        this one keeps serving its clients (what they write is still stored, and merges), but it says so:
        an error in the log and 503 on /readyz, so that a load balancer stops sending it anyone.
        """
        while True:
            await asyncio.sleep(LOCK_CHECK_INTERVAL)
            try:
                await asyncio.to_thread(self.lock.check)
            except DatabaseInUseError as error:
                if self._lock_lost is None:
                    logger.error("lost the database lock while it was unreachable: %s", error)
                self._lock_lost = str(error)
            except StorageError:
                continue  # unreachable: the store's commits and /readyz say so; try again later
            except Exception:
                logger.exception("checking the database lock failed; trying again")
                continue
            else:
                if self._lock_lost is not None:
                    logger.warning("holding the database lock again")
                self._lock_lost = None

    async def _metrics(self, request: HttpRequest) -> Response:
        metrics = [*self.metrics.all(), *(self.webhooks.metrics() if self.webhooks is not None else ())]
        return respond(HTTPStatus.OK, render(metrics), "text/plain; version=0.0.4; charset=utf-8")

    # WebSocket connections.

    async def _keepalive_forever(self) -> None:
        """Ping the connections that have been silent for a keepalive interval; drop the dead ones.

        The stock client renews its awareness every 15 s, so most connections are never pinged; one task
        for all, rather than a task or a timer per connection, keeps idle connections small.
        """
        interval = self.settings.keepalive
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.endpoint.keepalive(loop.time(), interval)

    async def _sweep_backlogs_forever(self) -> None:
        """Drop clients that leave too much unread for too long (see `Backlogs`); visits only those behind."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(Backlogs.SWEEP_INTERVAL)
            self._backlogs.sweep(loop.time())

    def _end_session(self, peer: object, error: AuthError) -> None:
        """A live connection's token expired or was revoked: close it as a refusal at connect would."""
        if isinstance(peer, WebSocketConnection):  # what the transport hands Sessions
            peer.fail(error)


def open_webhooks(settings: Settings, store: Store, rooms: Rooms) -> Webhooks | None:
    """The webhook sender `--webhook` asks for (not started), told of connections if asked; else None."""
    options = WebhookOptions.from_settings(settings)
    if options is None:
        return None
    webhooks = Webhooks(
        store, options, Describer(store, rooms, settings.webhook_include, settings.webhook_include_limit)
    )
    if any(kind.startswith("connection.") for kind in options.recording.types):
        rooms.on_connection = webhooks.connection_event
    return webhooks


def open_relay(settings: Settings) -> Relay | None:
    """The relay `--relay` names (not started), or None; redis-py is imported only when there is one."""
    if settings.relay is None:
        return None
    try:
        from ..cluster.redis_relay import RedisRelay
    except ImportError as error:
        raise ConfigError(f"--relay needs the Redis client: pip install 'collab[redis]' ({error})") from None
    if settings.relay_retention < MIN_RETENTION_WINDOWS * settings.commit_interval + 2.0:
        raise ConfigError(
            f"--relay-retention must be well beyond --commit-interval (at least {MIN_RETENTION_WINDOWS} windows"
            " plus 2 s): a process joining a room reads back what the others have not committed yet"
        )
    return RedisRelay(
        settings.relay,
        prefix=settings.relay_prefix,
        retention=settings.relay_retention,
        commit_interval=settings.commit_interval,
    )


def describe(error: BaseException) -> str:
    """An error's message, or what it is when it has none (a timeout, an engine's empty message)."""
    if isinstance(error, TimeoutError):
        return f"no answer within {READY_TIMEOUT:g} s (is another process holding its write lock?)"
    return str(error) or str(error.__cause__ or "") or type(error).__name__


def connectable_host(host: str) -> str:
    """Where a local command reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host


async def serve_until_signalled(
    settings: Settings, *, reuse_port: bool = False, serving: Callable[[int], object] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly; `serving(port)` once listening.

    The handlers are set before starting, so that a SIGTERM during the start (a supervisor stopping its
    workers, see `collab.cluster.workers`) still stops the server cleanly.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = CollabServer(settings, reuse_port=reuse_port)
    if server.relay is not None:
        log_everywhere(process=server.relay.process)
    await server.start()
    try:
        if serving is not None:
            serving(server.port)
        await stop.wait()
        logger.info("shutting down: closing connections and flushing")
    finally:
        await server.stop()


def run(settings: Settings) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve_until_signalled(settings))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's own (None).

    uvloop (libuv, in C) runs the same code with cheaper socket reads and writes, callbacks and timers:
    in scripts/bench's saturate, the server's CPU per relayed update fell by about a third (see
    docs/benchmarks.md).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
