"""Signing webhook requests, and checking a signature, as a receiver does.

A request carries `X-Collab-Timestamp` (Unix seconds) and `X-Collab-Signature:
sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` under the shared secret.
Signing the timestamp with the body lets a receiver refuse an old request
replayed (`tolerance`), and the idempotency id in the body (`id`, also in
`X-Collab-Delivery`) lets it drop a retry it has handled already.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from ..errors import InvalidSignatureError

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "InvalidSignatureError", "sign", "verify"]

SIGNATURE_HEADER = "X-Collab-Signature"
TIMESTAMP_HEADER = "X-Collab-Timestamp"
TOLERANCE = 300.0
"""Seconds a receiver accepts a timestamp away from its own clock, by default."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Collab-Signature` value of `body` sent at `timestamp`."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: bytes | str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise `InvalidSignatureError` unless `headers` sign `body` with `secret`, within `tolerance` seconds of `now`.

    `headers` is looked up case-insensitively if it is a plain dict. Compare in constant time, as here.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    lower = {name.lower(): value for name, value in headers.items()}
    stamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    given = lower.get(SIGNATURE_HEADER.lower(), "")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise InvalidSignatureError(f"no {TIMESTAMP_HEADER}, or not a number")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise InvalidSignatureError(f"{TIMESTAMP_HEADER} is more than {tolerance:g}s away: a replay, or a clock off")
    if not hmac.compare_digest(sign(key, int(stamp), body).encode(), given.encode("utf-8", "replace")):
        raise InvalidSignatureError(f"{SIGNATURE_HEADER} does not match the body")
