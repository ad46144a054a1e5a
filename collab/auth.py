"""Access tokens: signed, scoped to a document or a name prefix, read or write, expiring.

A token is a JWT signed with HMAC-SHA256 (RFC 7519, `alg: HS256`), so any
language's JWT library can mint one. Its claims:

    {"doc": "notes/plan",   # a document name, or a prefix ending in "/" ("team/")
     "perm": "write",       # or "read"
     "exp": 1798000000}     # Unix time it expires

An app server mints tokens with the secret collab is configured with; collab
only verifies them. Clients present a token as `?token=...` on the URL, or as
the WebSocket subprotocol `token.<TOKEN>` (a browser cannot set headers), or to
the HTTP API as `Authorization: Bearer <TOKEN>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import ForbiddenError, UnauthenticatedError

__all__ = [
    "TOKEN_SUBPROTOCOL_PREFIX",
    "Access",
    "Grant",
    "Permission",
    "authorize",
    "mint_token",
    "token_from_subprotocols",
    "verify_token",
]

TOKEN_SUBPROTOCOL_PREFIX = "token."
_HEADER = {"alg": "HS256", "typ": "JWT"}


class Permission(Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    scope: str
    """A document name, or a prefix ending in '/' that covers every name under it."""
    permission: Permission
    expires_at: float

    def covers(self, name: str) -> bool:
        return name == self.scope or (self.scope.endswith("/") and name.startswith(self.scope))

    @property
    def can_write(self) -> bool:
        return self.permission is Permission.WRITE


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signing_input: str) -> str:
    return _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def mint_token(secret: bytes, scope: str, permission: Permission, ttl: float, now: float | None = None) -> str:
    """A token granting `permission` on `scope` for `ttl` seconds."""
    expires = int((time.time() if now is None else now) + ttl)
    claims = {"doc": scope, "perm": permission.value, "exp": expires}
    signing_input = _b64(json.dumps(_HEADER, separators=(",", ":")).encode()) + "." + _b64(
        json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
    )
    return signing_input + "." + _sign(secret, signing_input)


def verify_token(secret: bytes, token: str | None, now: float | None = None) -> Grant:
    """Check a token's signature and expiry; raise `UnauthenticatedError` saying what is wrong."""
    if not token:
        raise UnauthenticatedError("a token is required (?token=... or the subprotocol token.<TOKEN>)", "missing")
    parts = token.split(".")
    if len(parts) != 3:
        raise UnauthenticatedError("malformed token")
    header_b64, claims_b64, signature = parts
    if not hmac.compare_digest(_sign(secret, f"{header_b64}.{claims_b64}"), signature):
        raise UnauthenticatedError("invalid token signature")
    try:
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(claims_b64))
        scope, permission, expires_at = claims["doc"], Permission(claims["perm"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError) as error:
        raise UnauthenticatedError("malformed token claims") from error
    if header.get("alg") != "HS256" or not isinstance(scope, str):
        raise UnauthenticatedError("malformed token claims")
    if expires_at <= (time.time() if now is None else now):
        raise UnauthenticatedError("token expired", "expired")
    return Grant(scope, permission, expires_at)


def authorize(secret: bytes, token: str | None, name: str, now: float | None = None) -> Grant:
    """The grant `token` gives on document `name`; `ForbiddenError` if it is for another document."""
    grant = verify_token(secret, token, now)
    if not grant.covers(name):
        raise ForbiddenError(f"token is for {grant.scope!r}, not {name!r}", "forbidden")
    return grant


class Access:
    """The server's access policy: open when no secret is configured, tokens otherwise."""

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret

    @property
    def enabled(self) -> bool:
        return self.secret is not None

    def check(self, token: str | None, name: str | None = None) -> Grant | None:
        """The grant for `name` (or any name, for a listing); None when access control is off."""
        if self.secret is None:
            return None
        if name is None:
            return verify_token(self.secret, token)
        return authorize(self.secret, token, name)


def token_from_subprotocols(offered: Sequence[str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None
