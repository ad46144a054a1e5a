"""One HTTP/1.1 POST, for a webhook: connect, send, read the status line, close.

The standard library's clients block, and collab's dependencies have none for
asyncio, so this is the smallest client a webhook needs: one request per
connection (`Connection: close`), a body of known length, TLS verified against
the system's CAs (no option to skip it), everything bounded by one timeout, and
the answer read up to its status (the rest is not needed). Redirects are not
followed: a webhook URL that moved is a configuration to fix, said as a failure.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from .. import __version__
from ..errors import DeliveryError

__all__ = ["post"]

MAX_STATUS_LINE = 8192


@functools.cache
def _tls() -> ssl.SSLContext:
    """The system's CAs, hostname checked: made once (loading the CAs takes milliseconds)."""
    return ssl.create_default_context()


async def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> int:
    """POST `body` (JSON) to `url` with `headers`; its 2xx status, or `DeliveryError` saying why not in one line.

    `tls`: the context for https:// URLs (default: the system's CAs, hostname checked).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
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
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=(tls or _tls()) if secure else None,
                server_hostname=host if secure else None,
                limit=MAX_STATUS_LINE,
            )
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except ssl.SSLCertVerificationError as error:
        raise DeliveryError(f"TLS certificate not trusted: {error.verify_message}") from None
    except (OSError, ssl.SSLError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as error:
        raise DeliveryError(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__) from None
    finally:
        if writer is not None:
            writer.close()
    return _status(status_line)


def _status(line: bytes) -> int:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise DeliveryError("not an HTTP answer" if line else "connection closed without an answer")
    status = int(parts[1])
    if not 200 <= status < 300:
        reason = parts[2].decode("latin-1").strip() if len(parts) > 2 else ""
        where = " (redirects are not followed: point --webhook at the new URL)" if 300 <= status < 400 else ""
        raise DeliveryError(f"answered {status} {reason}".rstrip() + where)
    return status
