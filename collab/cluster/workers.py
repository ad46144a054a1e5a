"""`collab serve --workers N`: a supervisor and N worker processes listening on one port.

Each worker is the ordinary server (`collab.server.app.CollabServer`) with its
listening socket opened with SO_REUSEPORT, so that the kernel spreads new
connections over the workers; they share rooms through the relay (Redis),
which is why `--workers` needs `--relay`. Linux is the platform where
SO_REUSEPORT balances connections between processes (on BSD and macOS it only
lets several sockets bind); elsewhere run one `collab serve` per port behind a
load balancer.

The supervisor holds the port the whole time (a bound, never listening socket:
it takes no connections), so that port 0 picks one port for every worker and
nobody else takes it while a worker restarts. It starts the workers with
multiprocessing's "spawn" (a fresh interpreter each: nothing of the
supervisor's state is inherited) and then:

- starting is all or nothing, as for one process: a worker that fails before
  it serves ends everything with that worker's error and exit status. The
  first worker starts alone, so that it creates or migrates the database
  alone, and a configuration error is reported once; then all the others;
- a worker that dies later is restarted, at once if it had served a while,
  else after a delay doubling from 0.5 s to 10 s (`Backoff`); a restart
  refused by a configuration error (a certificate or secret file gone) ends
  everything with exit status 2, since retrying cannot mend it;
- SIGTERM or SIGINT is forwarded as SIGTERM to every worker, each of which
  closes its connections and flushes its store; one that has not exited
  within `STOP_TIMEOUT` is killed, and the log says so;
- a worker whose supervisor dies gets SIGTERM from the kernel
  (PR_SET_PDEATHSIG), so that killing the supervisor never leaves orphans.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from ..config import Settings
from ..errors import EXIT_INTERRUPTED, CollabError, ConfigError, exit_code_for
from ..logs import configure_logging, fields, log_everywhere

__all__ = ["Backoff", "Supervisor", "check_workers"]

logger = logging.getLogger("collab.cluster.workers")

STOP_TIMEOUT = 30.0
"""Seconds the workers have to close their connections and flush, once told to stop, before they are killed."""
PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies."""


def check_workers(settings: Settings) -> None:
    """Raise `ConfigError` unless `settings.workers` workers can run here, with what to do instead."""
    if settings.workers > 1 and settings.relay is None:
        raise ConfigError("--workers needs --relay: the workers share rooms through Redis")
    if settings.workers > 1 and (not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT")):
        raise ConfigError(
            "--workers needs Linux, where SO_REUSEPORT spreads connections over processes;"
            " here, run one collab serve per port behind a load balancer"
        )


@dataclass
class Backoff:
    """How long to wait before restarting a worker that died, after it lived `lived` seconds.

    A worker that served for `stable_after` seconds is restarted at once; one that keeps dying quickly
    (a database refusing it, a crash on start) waits `first`, then twice as long each time, up to `most`,
    so that it neither spins the CPU nor floods the log.
    """

    first: float = 0.5
    most: float = 10.0
    stable_after: float = 10.0
    _next: float = field(default=0.0, init=False)

    def after(self, lived: float) -> float:
        if lived >= self.stable_after:
            self._next = 0.0
            return 0.0
        delay = self._next or self.first
        self._next = min(delay * 2, self.most)
        return delay


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    reports: Connection | None
    """What the worker tells: its port once it serves, or the `CollabError` it failed with; None after EOF."""
    started_at: float
    serving: bool = False
    error: CollabError | None = None


class Supervisor:
    """Runs `settings.workers` workers on `settings.host`:`settings.port` until SIGTERM or SIGINT (see the module)."""

    def __init__(self, settings: Settings) -> None:
        check_workers(settings)
        self.settings = settings
        self.port = settings.port
        """The port every worker listens on, known once `run` has reserved it (useful with port 0)."""
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._backoffs = {index: Backoff() for index in range(1, settings.workers + 1)}
        self._restarts: dict[int, float] = {}
        """Worker index -> when (time.monotonic) to start it again."""
        self._started = False
        """Whether every worker has served once: from then on a worker that dies is restarted."""

    def run(self) -> int:
        """Supervise until told to stop; 0 then. Raises the `CollabError` that ended it otherwise."""
        reserved = reserve_port(self.settings.host, self.settings.port)
        try:
            self.port = reserved[0].getsockname()[1]
            logger.info("supervising %d workers on %s:%d", self.settings.workers, self.settings.host, self.port)
            with _stop_signals() as stop:
                try:
                    self._supervise(stop)
                finally:
                    self._stop_all()
        finally:
            for reservation in reserved:
                reservation.close()
        return 0

    def _supervise(self, stop: socket.socket) -> None:
        self._start(1)  # alone: the others start once it serves (see `_read_reports`)
        while True:
            now = time.monotonic()
            for index, due in list(self._restarts.items()):
                if due <= now:
                    del self._restarts[index]
                    self._start(index)
            timeout = max(0.0, min(self._restarts.values()) - now) if self._restarts else None
            waited: list[Connection | socket.socket | int] = [stop]
            for worker in self._workers.values():
                waited.append(worker.process.sentinel)
                if worker.reports is not None:
                    waited.append(worker.reports)
            if stop in wait(waited, timeout):
                logger.info("stopping %d workers", len(self._workers))
                return
            for worker in list(self._workers.values()):
                self._read_reports(worker)
                if not worker.process.is_alive():
                    self._exited(worker)

    def _start(self, index: int) -> None:
        reports, child_end = self._context.Pipe(duplex=False)
        settings = replace(self.settings, workers=1, port=self.port)
        process = self._context.Process(
            target=work, args=(settings, index, os.getpid(), child_end), name=f"collab-worker-{index}"
        )
        process.start()
        child_end.close()  # the child has its own copy: when it exits, `reports` reads EOF
        self._workers[index] = _Worker(index, process, reports, time.monotonic())

    def _read_reports(self, worker: _Worker) -> None:
        while worker.reports is not None and worker.reports.poll():
            try:
                report = worker.reports.recv()
            except EOFError:
                worker.reports.close()
                worker.reports = None
                return
            if isinstance(report, CollabError):
                worker.error = report
            elif not worker.serving:
                worker.serving = True
                logger.info(
                    "worker %d serving", worker.index, extra=fields(worker=worker.index, pid=worker.process.pid)
                )
                if not self._started and len(self._workers) == 1:
                    # The first worker created or migrated the database alone, and would have been the one to
                    # report a configuration error: the others open the database as it is now.
                    for index in range(2, self.settings.workers + 1):
                        self._start(index)
                self._started = self._started or all(other.serving for other in self._workers.values())

    def _exited(self, worker: _Worker) -> None:
        """A worker ended without being told to: end everything, or restart it (see the module)."""
        worker.process.join()
        del self._workers[worker.index]
        if worker.reports is not None:
            worker.reports.close()
        how = exit_status(worker.process.exitcode)
        if not self._started:
            if worker.error is not None:
                raise worker.error
            raise CollabError(f"worker {worker.index} {how} while the workers were starting (its log says why)")
        if not worker.serving and isinstance(worker.error, ConfigError):
            raise worker.error
        delay = self._backoffs[worker.index].after(time.monotonic() - worker.started_at)
        because = f": {worker.error}" if worker.error is not None else ""
        logger.warning(
            "worker %d %s%s; restarting it%s",
            worker.index,
            how,
            because,
            f" in {delay:g} s" if delay else "",
            extra=fields(worker=worker.index, pid=worker.process.pid),
        )
        self._restarts[worker.index] = time.monotonic() + delay

    def _stop_all(self) -> None:
        """SIGTERM to every worker, then wait for them all; SIGKILL for those still there after `STOP_TIMEOUT`."""
        self._restarts.clear()
        for worker in self._workers.values():
            worker.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        while (running := [w.process.sentinel for w in self._workers.values() if w.process.is_alive()]) and (
            left := deadline - time.monotonic()
        ) > 0:
            wait(running, left)
        for worker in self._workers.values():
            if worker.process.is_alive():
                logger.error(
                    "worker %d did not stop within %g s: killing it",
                    worker.index,
                    STOP_TIMEOUT,
                    extra=fields(worker=worker.index, pid=worker.process.pid),
                )
                worker.process.kill()
            worker.process.join()
            if worker.reports is not None:
                worker.reports.close()
        self._workers.clear()


def exit_status(code: int | None) -> str:
    """'exited with code 1', 'was killed by SIGKILL': how a process ended, from multiprocessing's exitcode."""
    if code is not None and code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind (never listen on) a SO_REUSEPORT socket on each address of `host`, all on one port: `port`, or
    the one the system picks for the first when it is 0. The workers' listening sockets join them.

    Raises `ConfigError` as one process would when the port is taken (by anything not using SO_REUSEPORT).
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    reserved: list[socket.socket] = []
    chosen = port
    try:
        for family, kind, protocol, _, address in dict.fromkeys(addresses):
            reservation = socket.socket(family, kind, protocol)
            reserved.append(reservation)
            # As asyncio's create_server does: connections in TIME_WAIT do not keep the port taken, and an
            # IPv6 socket does not also take the IPv4 port.
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                reservation.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            reservation.bind((address[0], chosen, *address[2:]))
            chosen = reservation.getsockname()[1]
    except OSError as error:
        for reservation in reserved:
            reservation.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    return reserved


@contextmanager
def _stop_signals() -> Iterator[socket.socket]:
    """A socket that becomes readable on SIGTERM or SIGINT, for `wait` (Python's handlers alone would not
    wake it: PEP 475 retries the interrupted call); the previous handlers are back afterwards."""
    readable, writable = socket.socketpair()
    writable.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writable.fileno(), warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, lambda signum, frame: None) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield readable
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        readable.close()
        writable.close()


# In each worker process.


def work(settings: Settings, index: int, supervisor: int, reports: Connection) -> None:
    """A worker process's life: serve until SIGTERM, telling `reports` when serving or why it could not.

    Its exit status is the one `collab serve` would have for the same error.
    """
    _die_with(supervisor)
    configure_logging(settings.log_level, settings.log_format)
    log_everywhere(worker=index)
    from ..server.app import event_loop_factory, serve_until_signalled

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve_until_signalled(settings, reuse_port=True, serving=reports.send))
    except CollabError as error:
        reports.send(error)
        sys.exit(exit_code_for(error))
    except KeyboardInterrupt:  # a Ctrl-C reaching the worker before its handlers are set
        sys.exit(EXIT_INTERRUPTED)


def _die_with(supervisor: int) -> None:
    """Have the kernel send this process SIGTERM when its supervisor dies, however it dies (even kill -9).

    The signal comes when the thread that started this process ends: the supervisor starts every worker
    from its main thread. The check after it covers a supervisor that died before the request was made.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor:
        sys.exit(0)
