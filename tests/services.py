"""What tests/postgres.py and tests/redis.py share in providing a server to the tests.

Both decide once per session (`Source`) between the server an environment variable names, which must answer, a
shared candidate on 127.0.0.1, and a private throwaway server started for the session; both kinds of private
server are started, removed and used as context managers alike (`PrivateServer`); and both install a Debian
package when the server's binaries are missing (`apt_install`). How to ask a server whether it answers, and how to
start and stop one, stays with each.
"""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import shutil
import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

APT_TIMEOUT_S = 900
Private = TypeVar("Private")


@dataclass(frozen=True)
class Source(Generic[Private]):
    """Where the session's server of one kind (`what`) comes from, and the choice made for the session.

    `env_name`'s URL when set, which must answer: it names the server to test against, and quietly testing another
    would hide the mistake. Else `shared_url` when it answers. Else a private server `start_private` starts (and
    returns with its URL), which removes itself at exit. What cannot be provided raises `unavailable`; a URL that
    does not answer is named in its message (password redacted) followed by `not_answering`.
    """

    what: str
    env_name: str
    shared_url: str
    reachable: Callable[[str], bool]
    start_private: Callable[[], tuple[str, Private]]
    unavailable: type[Exception]
    not_answering: str

    def choose(self, configured: str | None, candidate: str) -> tuple[str, Private | None]:
        """The URL to use, and the private server started for it when neither server answered.

        `configured` stands for `env_name`'s value, `candidate` for `shared_url`. The caller owns the returned
        server (it is removed at exit anyway). Separate from `session_url` so that the fallback can be tested with
        a candidate that does not answer.
        """
        if configured is not None:
            if not self.reachable(configured):
                raise self.unavailable(f"{self.env_name}={redacted(configured)} {self.not_answering}")
            return configured, None
        if self.reachable(candidate):
            return candidate, None
        return self.start_private()

    def session_url(self) -> str:
        """The URL of the session's server, chosen at the first call.

        A failure is remembered too, so that each later test fails at once with the same message instead of trying
        again.
        """
        chosen = self._session_choice
        if isinstance(chosen, Exception):
            pytest.fail(f"no {self.what} for the tests: {chosen}", pytrace=False)
        return chosen

    @functools.cached_property
    def _session_choice(self) -> str | Exception:
        try:
            # A private server, if one is started, removes itself at exit.
            url, _private = self.choose(os.environ.get(self.env_name) or None, self.shared_url)
        except self.unavailable as error:
            return error
        return url


class PrivateServer(ABC):
    """A throwaway server of our own, listening on 127.0.0.1 on a free port, its files in the temp dir `root`.

    Used as a context manager it is started on entry and removed on exit; anything still running at interpreter
    exit is removed too. Subclasses say how it starts and how it is removed (stopped, and `root` deleted).
    """

    def __init__(self, root: Path, log_name: str) -> None:
        self.port = free_port()
        self.root = root
        self.log_file = root / log_name
        atexit.register(self.remove)

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def remove(self) -> None: ...

    def started(self) -> Self:
        """Start it and return it; should starting fail, remove it (so that no files are left) and raise."""
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.started()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()


def apt_install(package: str, missing: str, instead: str, unavailable: type[Exception]) -> None:
    """Install Debian's `package`, which provides the program `missing`, with apt-get (`sudo -n` when not root).

    Raises `unavailable` when that cannot be done; where there is no apt-get its message says what to do
    `instead`.
    """
    if shutil.which("apt-get") is None:
        raise unavailable(f"no {missing} found and no apt-get to install it; {instead}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # The package lists may be missing (fresh containers) or stale; update first, then install.
    for step in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        command = [*sudo, *step]
        try:
            result = subprocess.run(
                command, env=environment, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise unavailable(f"{shlex.join(command)} took over {APT_TIMEOUT_S} s") from None
        if result.returncode != 0:
            raise unavailable(
                f"no {missing} found, and {shlex.join(command)} failed (exit {result.returncode}):\n"
                f"{result.stderr[-2000:]}"
            )


def redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
