"""Server settings: defaults, `COLLAB_*` environment variables, command-line flags.

Each field of `Settings` is one setting; its flag is `--field-name` and its
environment variable `COLLAB_FIELD_NAME`. A flag beats the environment, which
beats the default. Sizes accept `K`/`M`/`G` suffixes (powers of 1024) and
durations `ms`/`s`/`m`/`h`/`d`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .keys import PublicKey

__all__ = ["Settings", "env_name", "parse_duration", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """'64M' -> 67108864; a plain number is bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 1048576, 512K, 64M or 1G)")
    return int(match[1]) * _SIZE_UNITS[match[2].lower()]


def parse_duration(text: str) -> float:
    """'50ms' -> 0.05; a plain number is seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 0.05, 50ms, 30s, 5m, 1h or 30d)")
    return float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text.lower()

    return parse


def _origins(text: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())


def _setting(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    """Everything `collab serve` can be told."""

    host: str = _setting("127.0.0.1", str, "address to listen on (0.0.0.0 for every interface)")
    port: int = _setting(1234, int, "TCP port for HTTP and WebSocket (0 picks a free one)")
    db: Path = _setting(Path("data/collab.db"), Path, "SQLite database file, created if missing")
    max_message_size: int = _setting(
        64 * 2**20, parse_size, "largest WebSocket message accepted; larger ones close with 1009"
    )
    commit_interval: float = _setting(
        0.05, parse_duration, "group commit window: an accepted update is durable within about this long"
    )
    compact_after: int = _setting(1000, int, "compact a document's update log into a snapshot after this many updates")
    unload_after: float = _setting(30.0, parse_duration, "unload a room this long after its last client left")
    history_recent: float = _setting(
        3600.0, parse_duration, "keep every change of each document for this long, for export --at (0: none)"
    )
    history_hourly: float = _setting(
        86400.0, parse_duration, "keep an hourly checkpoint of each document for this long (0: none)"
    )
    history_daily: float = _setting(
        30 * 86400.0, parse_duration, "keep a daily checkpoint of each document for this long (0: none)"
    )
    sqlite_synchronous: str = _setting(
        "full", _choice("normal", "full", "extra"), "SQLite synchronous mode (full also survives power loss)"
    )
    sqlite_busy_timeout: float = _setting(
        5.0, parse_duration, "how long a write waits for a lock held by another process before it fails and is retried"
    )
    auth_secret: str | None = _setting(
        None, str, "turn access control on: the secret tokens are signed with (prefer --auth-secret-file)"
    )
    auth_secret_file: Path | None = _setting(None, Path, "read the auth secret from this file")
    auth_public_key: Path | None = _setting(
        None,
        Path,
        "turn access control on: accept tokens signed with the private key of this PEM public key (ES256, EdDSA)",
    )
    allowed_origin: tuple[str, ...] = _setting(
        (),
        _origins,
        "comma-separated origins browsers may connect from (https://app.example.com), or * for any;"
        " empty: any with access control on, else only the server's own origin and loopback names",
    )
    certfile: Path | None = _setting(None, Path, "TLS certificate (PEM): serve wss:// and https://")
    keyfile: Path | None = _setting(None, Path, "TLS private key (PEM) for --certfile")
    max_connections: int = _setting(10_000, int, "connections in total; more are closed with 1013")
    max_room_connections: int = _setting(1_000, int, "connections per room; more are closed with 1013")
    max_rooms: int = _setting(10_000, int, "rooms loaded in memory; a connection needing one more is closed with 1013")
    max_messages_per_second: float = _setting(
        500.0,
        float,
        "messages (awareness: entries) a connection may send per second, bursts of twice that;"
        " a faster one is read more slowly, not closed; 0: no limit",
    )
    throttle_close_after: float = _setting(
        600.0, parse_duration, "close (1008) a connection the rate limit held back this long without a pause; 0: never"
    )
    max_buffered: int = _setting(
        16 * 2**20,
        parse_size,
        "bytes a client may leave unread for longer than --slow-client-grace before it is closed with 1013",
    )
    slow_client_grace: float = _setting(
        30.0,
        parse_duration,
        "how long bytes queued for a client may wait unread before they count against --max-buffered",
    )
    max_document_size: int = _setting(
        64 * 2**20, parse_size, "largest document; an update that would grow one beyond it closes with 1009"
    )
    keepalive: float = _setting(
        20.0, parse_duration, "ping connections silent this long, drop them if no answer within as long again; 0: never"
    )
    handshake_timeout: float = _setting(
        10.0, parse_duration, "close connections that do not complete the handshake in time"
    )
    log_level: str = _setting("info", _choice("debug", "info", "warning", "error"), "log verbosity")
    log_format: str = _setting("text", _choice("text", "json"), "log lines as text (key=value fields) or JSON objects")

    def public_key(self) -> PublicKey | None:
        """The verifying key of `--auth-public-key`, or None; needs the optional `cryptography` package."""
        if self.auth_public_key is None:
            return None
        from .keys import load_public_key

        return load_public_key(self.auth_public_key)

    def secret(self) -> bytes | None:
        """The auth secret, from the setting or its file; None when access control is off."""
        text: str | None
        if self.auth_secret_file is not None:
            try:
                text = self.auth_secret_file.read_text().strip()
            except OSError as error:
                raise ConfigError(
                    f"cannot read --auth-secret-file {self.auth_secret_file}: {error.strerror}"
                ) from error
        else:
            text = self.auth_secret
        if text is None:
            return None
        if len(text) < 16:
            raise ConfigError("the auth secret must be at least 16 characters long")
        return text.encode()

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from flags (None = not given), then `COLLAB_*` variables, then defaults."""
        flags = flags or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            given = flags.get(item.name)
            if given is not None:
                values[item.name] = given
                continue
            text = environ.get(env_name(item.name))
            if text is None:
                continue
            try:
                values[item.name] = item.metadata["parse"](text)
            except ValueError as error:
                raise ConfigError(f"{env_name(item.name)}: {error}") from error
        return cls(**values)


def env_name(field_name: str) -> str:
    return "COLLAB_" + field_name.upper()
