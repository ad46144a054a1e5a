"""One HTTP/1.1 POST, for a webhook: resolve, connect, send, read the final status line, close.

The standard library's clients block, and collab's dependencies have none for
asyncio, so this is the smallest client a webhook needs: one request per
connection (`Connection: close`), a body of known length, TLS verified against
the system's CAs (no option to skip it), everything bounded by one timeout, and
the answer read up to its final status (interim 1xx answers skipped; the rest
is not needed). Redirects are not followed: a webhook URL that moved is a
configuration to fix, said as a failure. Host names are resolved on two threads
of the webhooks' own, so that a resolver that hangs holds up webhooks only, not
the other work of the event loop's default threads (revocation reads, exports).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

from .. import __version__
from ..errors import DeliveryError

__all__ = ["post", "shown"]

MAX_LINE = 8192
"""Longest status or header line read from an answer."""
MAX_INTERIM = 8
"""1xx answers skipped before the final one, at most; lines of each, at most 100."""
RESOLVER_THREADS = 2


@functools.cache
def _tls() -> ssl.SSLContext:
    """The system's CAs, hostname checked: made once (loading the CAs takes milliseconds)."""
    return ssl.create_default_context()


@functools.cache
def _resolver() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="collab-webhook-dns")


def shown(url: str) -> str:
    """`url` fit for a log line or a listing: its user part and its query hidden (either may hold a secret)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="***" if parts.query else "").geturl()


async def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> int:
    """POST `body` (JSON) to `url` with `headers`; its 2xx status, or `DeliveryError` saying why not in one line
    (with the status, if an answer came). `tls`: the context for https:// URLs (default: the system's CAs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)  # checked when the URL was configured (`parse_webhook_url`)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        f"User-Agent: collab/{__version__}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(credentials).decode()}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            addresses = await loop.run_in_executor(
                _resolver(), functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            )
            family, _, protocol, _, address = addresses[0]
            reader, writer = await asyncio.open_connection(
                str(address[0]),
                int(address[1]),
                family=family,
                proto=protocol,
                ssl=(tls or _tls()) if secure else None,
                server_hostname=host if secure else None,
                limit=MAX_LINE,
            )
            writer.write(request)
            await writer.drain()
            status, reason = await _final_status(reader)
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except ssl.SSLCertVerificationError as error:
        raise DeliveryError(f"TLS certificate not trusted: {error.verify_message}") from None
    except (OSError, ssl.SSLError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as error:
        raise DeliveryError(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__) from None
    finally:
        if writer is not None:
            writer.close()
    if not 200 <= status < 300:
        where = " (redirects are not followed: point --webhook at the new URL)" if 300 <= status < 400 else ""
        raise DeliveryError(f"answered {status} {reason}".rstrip() + where, status)
    return status


async def _final_status(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The status and reason of the answer, past any interim (1xx) ones; `DeliveryError` if it is not HTTP."""
    for _ in range(MAX_INTERIM + 1):
        status, reason = _status(await reader.readline())
        if status >= 200:
            return status, reason
        for _ in range(100):  # an interim answer's headers, to the blank line
            if await reader.readline() in (b"\r\n", b"\n", b""):
                break
    raise DeliveryError(f"more than {MAX_INTERIM} interim answers")


def _status(line: bytes) -> tuple[int, str]:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise DeliveryError("not an HTTP answer" if line else "connection closed without an answer")
    reason = parts[2].decode("ascii", "replace").strip() if len(parts) > 2 else ""
    return int(parts[1]), "".join(c if c.isprintable() else "?" for c in reason)[:100]
