"""Server settings: defaults, `COLLAB_*` environment variables, command-line flags.

Each field of `Settings` is one setting; its flag is `--field-name` and its
environment variable `COLLAB_FIELD_NAME`. A flag beats the environment, which
beats the default. Sizes and durations follow `collab.units` (64M, 50ms, 1h, 7d).

An empty variable (`COLLAB_DB=` in an env file, or what a Compose file's
`${COLLAB_DB}` gives when it is unset) counts as unset, except for the settings
that turn access control on: an empty secret or key is refused, so that a
blank line in an env file never silently serves every document to anyone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from .keys import PublicKey

__all__ = [
    "SECRET_SETTINGS",
    "Settings",
    "env_name",
    "parse_count",
    "parse_database",
    "parse_path",
    "parse_port",
    "parse_rate",
    "parse_relay",
    "parse_workers",
]

SECRET_SETTINGS = frozenset(
    {"auth_secret", "auth_secret_file", "auth_public_key", "webhook_secret", "webhook_secret_file"}
)
"""Settings whose empty value is an error rather than "unset": see the module docstring (an empty webhook
secret would sign events with nothing)."""


def parse_port(text: str) -> int:
    """'8080' -> 8080; 0 asks the system for a free port. Out of range is refused, never wrapped around."""
    port = int(text) if text.strip().isdigit() else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"not a port number: {text!r} (0 to 65535; 0 picks a free one)")
    return port


def parse_count(text: str) -> int:
    """'1000' -> 1000: a whole number, not negative."""
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if count < 0:
        raise ValueError(f"cannot be negative: {text!r}")
    return count


def parse_rate(text: str) -> float:
    """'500' -> 500.0 per second, not negative."""
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not 0 <= rate < float("inf"):
        raise ValueError(f"not a rate per second: {text!r}")
    return rate


def parse_path(text: str) -> Path:
    """A file name; an empty one is refused (Path('') would quietly mean the current directory)."""
    if not text.strip():
        raise ValueError("empty file name")
    return Path(text)


def parse_database(text: str) -> str:
    """A `--db` value (see `collab.store.engines`); an empty one is refused, as for a path."""
    if not text.strip():
        raise ValueError("empty database name")
    return text


class _Choice:
    """A parser for one of a few words; `metavar` is what --help shows for it."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = allowed
        self.metavar = "{" + ",".join(allowed) + "}"

    def __call__(self, text: str) -> str:
        if text.lower() not in self.allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(self.allowed)}")
        return text.lower()


def parse_positive_duration(text: str) -> float:
    """A duration that must be more than zero (a handshake needs some time)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"must be more than 0: {text!r}")
    return seconds


def parse_relay(text: str) -> str:
    """A `--relay` value: a Redis URL (redis://, rediss:// for TLS, unix:// for a socket)."""
    scheme = text.strip().partition("://")[0].lower()
    if scheme not in ("redis", "rediss", "unix") or "://" not in text:
        raise ValueError("not a Redis URL: use redis://host:6379/0, rediss://host:6380/0 or unix:///path/redis.sock")
    return text.strip()


def parse_workers(text: str) -> int:
    """'4' -> 4; 'auto' -> one per core this process may run on. At least 1."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    count = parse_count(text)
    if count < 1:
        raise ValueError(f"at least 1 worker: {text!r}")
    return count


def parse_webhook_url(text: str) -> str:
    """A `--webhook` value: an http:// or https:// URL with a host and, if any, a port that is one; no spaces or
    control characters (percent-encode them), no #fragment."""
    text = text.strip()
    if any(not character.isprintable() or character.isspace() for character in text):
        raise ValueError(f"a webhook URL holds no spaces or control characters (percent-encode them): {text!r}")
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"not an http:// or https:// URL: {text!r}")
    try:
        url.port  # noqa: B018 (urlsplit checks the port only when asked for it)
    except ValueError:
        raise ValueError(f"not a port number in {text!r}") from None
    if url.fragment:
        raise ValueError(f"a webhook URL has no #fragment: {text!r}")
    return text


def _webhook_urls(text: str) -> tuple[str, ...]:
    """COLLAB_WEBHOOKS: URLs separated by spaces or commas (a flag gives one URL each time it is repeated); each
    once, however often given."""
    return tuple(dict.fromkeys(parse_webhook_url(url) for url in text.replace(",", " ").split()))


def _event_types(text: str) -> tuple[str, ...]:
    from .store.outbox import EVENT_TYPES

    types = tuple(dict.fromkeys(word.strip() for word in text.split(",") if word.strip()))
    unknown = [word for word in types if word not in EVENT_TYPES]
    if unknown or not types:
        raise ValueError(f"{', '.join(unknown) or 'nothing'}: name some of {', '.join(EVENT_TYPES)}")
    return types


def _prefix(text: str) -> str:
    if not text or any(character.isspace() for character in text):
        raise ValueError(f"a key prefix is one word, not empty: {text!r}")
    return text


def _host(text: str) -> str:
    if not text.strip():
        raise ValueError("empty address (0.0.0.0 listens on every interface)")
    return text.strip()


def _origins(text: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())


_METAVARS: dict[Callable[[str], Any], str] = {
    parse_duration: "DURATION",
    parse_positive_duration: "DURATION",
    parse_size: "SIZE",
    parse_port: "PORT",
    parse_count: "N",
    parse_rate: "RATE",
    parse_path: "FILE",
    parse_database: "DB",
    parse_relay: "URL",
    parse_workers: "N|auto",
    _prefix: "PREFIX",
    _host: "HOST",
    _origins: "ORIGINS",
    parse_webhook_url: "URL",
    _event_types: "EVENTS",
    str: "TEXT",
}
"""What `--help` writes after each flag, by the kind of value it takes."""


def _shown(default: object) -> str:
    return "none" if default is None or default == () else str(default)


def _setting(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    show: Callable[[Any], str] = _shown,
    *,
    repeated: tuple[str, Callable[[str], Any]] | None = None,
) -> Any:
    """A `Settings` field: `parse` reads a flag or variable (ValueError: why not), `show` writes the default.

    `repeated` (flag, parse one): a list, given by repeating that flag, one value each, while the variable
    holds them all (read by `parse`).
    """
    metavar = getattr(parse, "metavar", None) or _METAVARS.get(repeated[1] if repeated else parse, "VALUE")
    metadata = {"parse": parse, "help": help, "show": show, "metavar": metavar, "repeated": repeated}
    return field(default=default, metadata=metadata)


def _size(default: int, help: str) -> Any:
    return _setting(default, parse_size, help, format_size)


def _duration(default: float, help: str) -> Any:
    return _setting(default, parse_duration, help, format_duration)


@dataclass(frozen=True)
class Settings:
    """Everything `collab serve` can be told."""

    host: str = _setting("127.0.0.1", _host, "address to listen on (0.0.0.0 for every interface)")
    port: int = _setting(1234, parse_port, "TCP port for HTTP and WebSocket (0 picks a free one)")
    db: str = _setting(
        "data/collab.db",
        parse_database,
        "database: a SQLite file (created if missing), sqlite:///path, postgresql://user:password@host:port/dbname"
        " (PG* variables fill in the rest; needs collab[postgres]), or memory: (gone when the server stops)",
    )
    relay: str | None = _setting(
        None,
        parse_relay,
        "share rooms with other collab processes through Redis or Valkey (redis://host:6379/0, rediss:// for TLS);"
        " needs collab[redis]; without it this is the only server on its database",
    )
    relay_prefix: str = _setting(
        "collab:", _prefix, "prefix of every Redis key collab uses, so that several clusters can share one Redis"
    )
    relay_retention: float = _setting(
        60.0,
        parse_positive_duration,
        "how long Redis keeps each room's recent updates, for a process that joins a room late or falls behind;"
        " much longer than --commit-interval",
        format_duration,
    )
    workers: int = _setting(
        1,
        parse_workers,
        "worker processes sharing the port (SO_REUSEPORT; Linux); auto: one per core; more than 1 needs --relay",
    )
    max_message_size: int = _size(64 * 2**20, "largest WebSocket message accepted; larger ones close with 1009")
    commit_interval: float = _duration(
        0.05, "group commit window: an accepted update is durable within about this long"
    )
    compact_after: int = _setting(
        1000, parse_count, "compact a document's update log into a snapshot after this many updates"
    )
    unload_after: float = _duration(30.0, "unload a room this long after its last client left")
    history_recent: float = _duration(
        3600.0, "keep every change of each document for this long, for export --at (0: none)"
    )
    history_hourly: float = _duration(86400.0, "keep an hourly checkpoint of each document for this long (0: none)")
    history_daily: float = _duration(30 * 86400.0, "keep a daily checkpoint of each document for this long (0: none)")
    sqlite_synchronous: str = _setting(
        "full", _Choice("normal", "full", "extra"), "SQLite synchronous mode (full also survives power loss)"
    )
    sqlite_busy_timeout: float = _duration(
        5.0, "how long a write waits for a lock held by another process before it fails and is retried"
    )
    postgres_lock_timeout: float = _duration(
        5.0, "PostgreSQL: how long a write waits for a row lock another connection holds before it fails and is retried"
    )
    auth_secret: str | None = _setting(
        None, str, "turn access control on: the secret tokens are signed with (prefer --auth-secret-file)"
    )
    auth_secret_file: Path | None = _setting(None, parse_path, "read the auth secret from this file")
    auth_public_key: Path | None = _setting(
        None,
        parse_path,
        "turn access control on: accept tokens signed with the private key of this PEM public key (ES256, EdDSA)",
    )
    allowed_origin: tuple[str, ...] = _setting(
        (),
        _origins,
        "comma-separated origins browsers may connect from (https://app.example.com), or * for any;"
        " empty: any with access control on, else only the server's own origin and loopback names",
    )
    certfile: Path | None = _setting(None, parse_path, "TLS certificate (PEM): serve wss:// and https://")
    keyfile: Path | None = _setting(None, parse_path, "TLS private key (PEM) for --certfile")
    max_connections: int = _setting(10_000, parse_count, "connections in total; more are closed with 1013")
    max_room_connections: int = _setting(1_000, parse_count, "connections per room; more are closed with 1013")
    max_rooms: int = _setting(
        10_000, parse_count, "rooms loaded in memory; a connection needing one more is closed with 1013"
    )
    max_messages_per_second: float = _setting(
        500.0,
        parse_rate,
        "messages (awareness: entries) a connection may send per second, bursts of twice that;"
        " a faster one is read more slowly, not closed; 0: no limit",
    )
    throttle_close_after: float = _duration(
        600.0, "close (1008) a connection the rate limit held back this long without a pause; 0: never"
    )
    max_buffered: int = _size(
        16 * 2**20, "bytes a client may leave unread for longer than --slow-client-grace before it is closed with 1013"
    )
    slow_client_grace: float = _duration(
        30.0, "how long bytes queued for a client may wait unread before they count against --max-buffered"
    )
    max_document_size: int = _size(
        64 * 2**20, "largest document; an update that would grow one beyond it closes with 1009"
    )
    keepalive: float = _duration(
        20.0, "ping connections silent this long, drop them if no answer within as long again; 0: never"
    )
    handshake_timeout: float = _setting(
        10.0,
        parse_positive_duration,
        "close connections that do not send their request (or finish TLS) in time; more than 0",
        format_duration,
    )
    webhooks: tuple[str, ...] = _setting(
        (),
        _webhook_urls,
        "POST signed JSON events to this URL (repeat for more): documents changed, created, deleted, renamed;"
        " delivered at least once, in order per document, retried until --webhook-retry-for; needs --webhook-secret",
        repeated=("--webhook", parse_webhook_url),
    )
    webhook_secret: str | None = _setting(
        None, str, "the secret webhook events are signed with (HMAC-SHA256; prefer --webhook-secret-file)"
    )
    webhook_secret_file: Path | None = _setting(None, parse_path, "read the webhook secret from this file")
    webhook_events: tuple[str, ...] = _setting(
        ("document.changed", "document.created", "document.deleted", "document.renamed"),
        _event_types,
        "comma-separated events to send: document.changed, document.created, document.deleted, document.renamed,"
        " connection.opened, connection.closed",
        lambda types: ",".join(types),
    )
    webhook_quiet: float = _duration(2.0, "send document.changed once a document has not changed for this long")
    webhook_max_wait: float = _duration(
        10.0, "while a document keeps changing, send document.changed at least this often"
    )
    webhook_include: str = _setting(
        "none", _Choice("none", "text", "json"), "put the document's text or JSON export in document.changed"
    )
    webhook_include_limit: int = _size(
        64 * 2**10, "largest export put in an event; a larger one is left out (the event says so)"
    )
    webhook_timeout: float = _setting(
        10.0,
        parse_positive_duration,
        "how long a webhook may take to answer before the delivery counts as failed and is retried",
        format_duration,
    )
    webhook_retry_for: float = _setting(
        3 * 86400.0,
        parse_positive_duration,
        "keep retrying a failed delivery this long (backoff up to 1 minute apart), then give up (collab webhooks)",
        format_duration,
    )
    log_level: str = _setting("info", _Choice("debug", "info", "warning", "error"), "log verbosity")
    log_format: str = _setting("text", _Choice("text", "json"), "log lines as text (key=value fields) or JSON objects")

    def public_key(self) -> PublicKey | None:
        """The verifying key of `--auth-public-key`, or None; needs the optional `cryptography` package."""
        if self.auth_public_key is None:
            return None
        from .keys import load_public_key

        return load_public_key(self.auth_public_key)

    def secret(self) -> bytes | None:
        """The auth secret, from the setting or its file; None when access control is off."""
        return _secret(self.auth_secret, self.auth_secret_file, "auth")

    def webhook_key(self) -> bytes | None:
        """The webhook signing secret, from the setting or its file; `ConfigError` if webhooks lack one."""
        key = _secret(self.webhook_secret, self.webhook_secret_file, "webhook")
        if self.webhooks and key is None:
            raise ConfigError("--webhook needs --webhook-secret or --webhook-secret-file, to sign its events")
        return key

    @classmethod
    def load(cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from flags (None = not given), then `COLLAB_*` variables, then defaults."""
        flags = flags or {}
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            given = flags.get(item.name)
            if given is not None:
                values[item.name] = tuple(given) if isinstance(given, list) else given
                continue
            text = environ.get(env_name(item.name))
            if text is None or (text == "" and item.name not in SECRET_SETTINGS):
                continue
            if text == "":
                off = "webhooks off" if item.name.startswith("webhook") else "access control off"
                raise ConfigError(f"{env_name(item.name)} is empty: unset it to turn {off}, or give it a value")
            try:
                values[item.name] = item.metadata["parse"](text)
            except ValueError as error:
                raise ConfigError(f"{env_name(item.name)}: {error}") from error
        return cls(**values)


def _secret(value: str | None, file: Path | None, what: str) -> bytes | None:
    """A secret given as a setting or in a file (read whole, stripped); at least 16 characters."""
    text = value
    if file is not None:
        try:
            text = file.read_text().strip()
        except OSError as error:
            raise ConfigError(f"cannot read --{what}-secret-file {file}: {error.strerror}") from error
    if text is None:
        return None
    if len(text) < 16:
        raise ConfigError(f"the {what} secret must be at least 16 characters long")
    return text.encode()


def env_name(field_name: str) -> str:
    return "COLLAB_" + field_name.upper()
