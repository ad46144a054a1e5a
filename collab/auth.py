"""Access tokens: signed, scoped to a document or a name prefix, read or write, expiring.

A token is a JWT (RFC 7519) signed with HMAC-SHA256 (`alg: HS256`, the shared
`--auth-secret`) or, when `--auth-public-key` is configured, with the app
server's private key (`ES256` or `EdDSA`, see `keys`), so any language's JWT
library can mint one. Its claims:

    {"doc": "notes/plan",   # a document name, or a prefix ending in "/" ("team/")
     "perm": "write",       # or "read"
     "exp": 1798000000,     # Unix time it expires: an integer, required
     "iat": 1797996400,     # Unix time it was issued, optional: `collab revoke --doc ... --before`
     "sub": "ada",          # who it is for, optional: the same person across reconnects
     "jti": "k3J9...",      # its id, optional: `collab revoke --id`
     "via": {"ids": ["ada-1"], "iat": 1797990000}}
                            # a share link's line, set by collab only (`share_grant`): the ids of the
                            # tokens it was shared from and when the first was issued, so that revoking
                            # any of them by id, or the first by time, voids the link too

An app server mints tokens with the secret collab is configured with (or with
the private key of `--auth-public-key`, see `collab.keys`); collab only verifies
them. A connection is closed (4401) when its token expires or is revoked
(`Revocations`, filled by the server from the database). Clients present a
token as `?token=...` on the URL, or as the WebSocket subprotocol `token.<TOKEN>` (a browser cannot set headers), or to
the HTTP API as `Authorization: Bearer <TOKEN>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .errors import ForbiddenError, UnauthenticatedError
from .units import format_time

if TYPE_CHECKING:
    from .keys import PublicKey

__all__ = [
    "MAX_SHARE_DEPTH",
    "MAX_TIME",
    "SHARE_ID_PREFIX",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "Access",
    "Grant",
    "Permission",
    "Revocation",
    "Revocations",
    "Via",
    "authorize",
    "mint_grant",
    "mint_token",
    "share_grant",
    "token_from_subprotocols",
    "verify_token",
]

TOKEN_SUBPROTOCOL_PREFIX = "token."
_HEADER = {"alg": "HS256", "typ": "JWT"}
MAX_TIME = 253402300799
"""Later `exp` and `iat` are refused: 9999-12-31T23:59:59Z, the last second an ISO 8601 answer (`expires_at`)
can write with its four-digit year, and Python's `datetime` hold."""
MAX_SHARE_DEPTH = 8
"""The most ids a share token's `via` holds: a link made from a link ... made from a token, 8 deep at most, so
that re-sharing cannot grow a token (and its URL) without end."""


class Permission(Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Via:
    """Where a share token comes from: its line of tokens, each shared from the one before.

    A revocation of any token in the line voids the share token too, so that a link (or a link made from a
    link) does not outlive the access it came from: by id, any of `token_ids`; by time, the first token's
    `issued_at`, since a link a leaked token's holder mints after the leak is as leaked as the token.
    """

    token_ids: tuple[str, ...]
    """The `jti` of every token in the line, the first (an app server's or `collab token`'s) first, the sharer
    last; a token without a `jti` is left out (it cannot be revoked by id)."""
    issued_at: float | None
    """The first token's `iat`; None if it had none: the link then counts, as that token does, as issued before
    any revocation by time."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    scope: str
    """A document name, or a prefix ending in '/' that covers every name under it."""
    permission: Permission
    expires_at: float
    subject: str | None = None
    """The token's `sub` claim: who it was issued to (the same person across reconnects), if the issuer said."""
    token_id: str | None = None
    """The token's `jti` claim, by which it can be revoked, if the issuer gave one."""
    issued_at: float | None = None
    """The token's `iat` claim; a token without one counts as issued before any revocation by time."""
    via: Via | None = None
    """A share token's line (its `via` claim); None for any other token."""

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


def mint_token(
    secret: bytes,
    scope: str,
    permission: Permission,
    ttl: float,
    now: float | None = None,
    *,
    subject: str | None = None,
    token_id: str | None = None,
) -> str:
    """A token granting `permission` on `scope` for `ttl` seconds, with `iat` and a `jti` (random if not given)."""
    issued = time.time() if now is None else now
    grant = Grant(
        scope,
        permission,
        float(int(issued + ttl)),
        subject=subject,
        token_id=secrets.token_urlsafe(16) if token_id is None else token_id,
        issued_at=float(int(issued)),
    )
    return mint_grant(secret, grant)


def mint_grant(secret: bytes, grant: Grant) -> str:
    """A token that verifies as exactly `grant` (`exp` cut to a whole second), signed with `secret`: how a
    share link's grant from `share_grant` becomes its token, `via` and all."""
    claims: dict[str, object] = {"doc": grant.scope, "perm": grant.permission.value, "exp": int(grant.expires_at)}
    if grant.issued_at is not None:
        claims["iat"] = _json_time(grant.issued_at)
    if grant.token_id is not None:
        claims["jti"] = grant.token_id
    if grant.subject is not None:
        claims["sub"] = grant.subject
    if grant.via is not None:
        line: dict[str, object] = {"ids": list(grant.via.token_ids)}
        if grant.via.issued_at is not None:
            line["iat"] = _json_time(grant.via.issued_at)
        claims["via"] = line
    signing_input = (
        _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    )
    return signing_input + "." + _sign(secret, signing_input)


def _json_time(timestamp: float) -> int | float:
    """A whole second as an integer, as tokens usually write `iat`; any other time as it is."""
    return int(timestamp) if timestamp.is_integer() else timestamp


SHARE_ID_PREFIX = "share-"
"""Starts the `jti` of every share token, which then never starts with '-': `collab revoke --id ID` reads it
as a value, not as an option."""


def share_grant(sharer: Grant, name: str, permission: Permission, ttl: float, now: float) -> Grant:
    """What a share link for document `name` may grant, made from the sharer's own grant: never more.

    Exactly that one document, which `sharer` must cover (`ForbiddenError`, "forbidden"); write only from a
    write grant (`ForbiddenError`, "read_only"); expiring after `ttl` seconds but never after `sharer` does;
    with an id of its own (`jti`, for `collab revoke --id`) and no `sub`, since it is for whoever gets the link.
    Its `via` is the sharer's line with the sharer added (`Via`), so that it falls with any token it came from;
    a line already `MAX_SHARE_DEPTH` ids long is refused (`ForbiddenError`, "share_depth").

    Times are whole seconds, as `exp` and `iat` are written. `iat` is `now` rounded up: rounded down, it could
    fall before a `collab revoke --doc` made earlier in the same second and mint a link void when made. A name
    ending in '/' would be read as a prefix of names, and a `ttl` under a second, or a sharer expiring within
    the second, would mint a dead token: `ValueError`.
    """
    if name.endswith("/"):
        raise ValueError(
            f"a share link is for one document, and {name!r} ends in '/', which would cover every name under it"
        )
    if not sharer.covers(name):
        raise ForbiddenError(f"token is for {sharer.scope!r}, not {name!r}", "forbidden")
    if permission is Permission.WRITE and not sharer.can_write:
        raise ForbiddenError(f"a read-only token cannot share {name!r} for editing", "read_only")
    via = _line_after(sharer)
    if len(via.token_ids) > MAX_SHARE_DEPTH:
        raise ForbiddenError(
            f"this token comes from a line of {MAX_SHARE_DEPTH} shared tokens already, and shares no further",
            "share_depth",
        )
    issued = math.ceil(now)
    expires = math.floor(issued + ttl)
    if expires <= issued:
        raise ValueError(f"a share link lasting {ttl:g} s would be expired when made")
    if math.floor(sharer.expires_at) <= issued:
        raise ValueError(
            f"the token sharing it expires at {format_time(sharer.expires_at)}, within the second:"
            " a share link, which never outlives it, would be expired when made"
        )
    return Grant(
        name,
        permission,
        float(min(expires, math.floor(sharer.expires_at))),
        token_id=SHARE_ID_PREFIX + secrets.token_urlsafe(16),
        issued_at=float(issued),
        via=via,
    )


def _line_after(sharer: Grant) -> Via:
    """The `via` of a token shared from `sharer`: its own line (or, for a first token, none) and its id."""
    line = sharer.via or Via((), sharer.issued_at)
    ids = line.token_ids if sharer.token_id is None else (*line.token_ids, sharer.token_id)
    return Via(ids, line.issued_at)


def verify_token(
    secret: bytes | None, token: str | None, now: float | None = None, *, public_key: PublicKey | None = None
) -> Grant:
    """Check a token's signature, claims and expiry; raise `UnauthenticatedError` saying what is wrong.

    The header's `alg` picks the check, among those configured only: HS256 with `secret`, or the one
    algorithm of `public_key`. A public key is never used as an HMAC secret (the "alg confusion" forgery).
    """
    if not token:
        raise UnauthenticatedError("a token is required (?token=... or the subprotocol token.<TOKEN>)", "missing")
    parts = token.split(".")
    if len(parts) != 3:
        raise UnauthenticatedError("malformed token")
    header_b64, claims_b64, signature = parts
    try:
        header = json.loads(_unb64(header_b64))
        algorithm = header.get("alg") if isinstance(header, dict) else None
        if algorithm == "HS256" and secret is not None:
            valid = hmac.compare_digest(_sign(secret, f"{header_b64}.{claims_b64}"), signature)
        elif public_key is not None and algorithm == public_key.algorithm:
            valid = public_key.verify(f"{header_b64}.{claims_b64}".encode(), _unb64(signature))
        else:
            raise UnauthenticatedError(f"token algorithm {algorithm!r} is not accepted here")
    except ValueError as error:  # bad base64, JSON or UTF-8 (all ValueErrors)
        raise UnauthenticatedError("malformed token") from error
    if not valid:
        raise UnauthenticatedError("invalid token signature")
    try:
        claims = json.loads(_unb64(claims_b64))
    except ValueError as error:
        raise UnauthenticatedError("malformed token claims") from error
    if not isinstance(claims, dict):
        raise UnauthenticatedError("malformed token claims")
    grant = grant_from_claims(claims)
    if grant.expires_at <= (time.time() if now is None else now):
        raise UnauthenticatedError("token expired", "expired")
    return grant


def grant_from_claims(claims: dict[str, object]) -> Grant:
    """The grant verified claims describe; `UnauthenticatedError` naming the first claim that is wrong."""
    scope, perm = claims.get("doc"), claims.get("perm")
    if not isinstance(scope, str):
        raise UnauthenticatedError("malformed token claims: doc must be a string")
    if perm not in ("read", "write"):
        raise UnauthenticatedError("malformed token claims: perm must be 'read' or 'write'")
    # exp an integer, as RFC 7519 NumericDate is in practice: not "Infinity", not 1e999, NaN or true.
    expires_at = _unix_time(claims, "exp", required=True, integer=True)
    assert expires_at is not None  # required: it raised instead
    issued_at = _unix_time(claims, "iat", required=False, integer=False)
    subject, token_id = claims.get("sub"), claims.get("jti")
    if not isinstance(subject, str | None) or not isinstance(token_id, str | None):
        raise UnauthenticatedError("malformed token claims: sub and jti must be strings")
    return Grant(
        scope,
        Permission(perm),
        expires_at,
        subject=subject,
        token_id=token_id,
        issued_at=issued_at,
        via=_via(claims.get("via")),
    )


def _via(value: object) -> Via | None:
    """The `via` claim as `mint_grant` writes it, or None if absent (or null); `UnauthenticatedError` if it is not."""
    if value is None:
        return None
    wrong = (
        "malformed token claims: via must be {"
        f'"ids": [up to {MAX_SHARE_DEPTH} strings], "iat": a Unix time (optional)}}'
    )
    if not isinstance(value, dict) or not value.keys() <= {"ids", "iat"}:
        raise UnauthenticatedError(wrong)
    ids = value.get("ids")
    if type(ids) is not list or len(ids) > MAX_SHARE_DEPTH or not all(isinstance(id_, str) for id_ in ids):
        raise UnauthenticatedError(wrong)
    return Via(tuple(ids), _unix_time(value, "iat", required=False, integer=False, label="via.iat"))


def _unix_time(
    claims: dict[str, object], key: str, *, required: bool, integer: bool, label: str | None = None
) -> float | None:
    """Claim `key` (called `label` in the refusal) as a Unix time within ±MAX_TIME, None if absent and not
    `required`; never a bool, NaN or inf."""
    value = claims.get(key)
    if value is None and not required:
        return None
    # type(), not isinstance(): True is an int to Python but not a time. The range check also refuses NaN
    # and infinities, and compares huge ints exactly (math.isfinite would overflow converting them).
    if (type(value) is int or (not integer and type(value) is float)) and -MAX_TIME <= value <= MAX_TIME:
        return float(value)
    raise UnauthenticatedError(
        f"malformed token claims: {label or key} must be {'an integer' if integer else 'a'} Unix time"
        f" up to {MAX_TIME} ({format_time(MAX_TIME)})"
    )


def authorize(
    secret: bytes | None, token: str | None, name: str, now: float | None = None, *, public_key: PublicKey | None = None
) -> Grant:
    """The grant `token` gives on document `name`; `ForbiddenError` if it is for another document."""
    grant = verify_token(secret, token, now, public_key=public_key)
    if not grant.covers(name):
        raise ForbiddenError(f"token is for {grant.scope!r}, not {name!r}", "forbidden")
    return grant


@dataclass(frozen=True, slots=True)
class Revocation:
    """One `collab revoke`: a token by its id, or every token for a document or prefix issued before a time."""

    token_id: str | None = None
    scope: str | None = None
    """A document name, or a prefix ending in '/' (as a token's `doc`); with `before`."""
    before: float | None = None


class Revocations:
    """The revocations a server knows of, checked at connect, on every API request and on live connections.

    Kept as a set of token ids and, per document or prefix, the latest time before which its tokens are void,
    so a check costs the same however many revocations there are.
    """

    def __init__(self) -> None:
        self.token_ids: set[str] = set()
        self.before: dict[str, float] = {}

    def add(self, revocations: Iterable[Revocation]) -> None:
        for revocation in revocations:
            if revocation.token_id is not None:
                self.token_ids.add(revocation.token_id)
            if revocation.scope is not None and revocation.before is not None:
                self.before[revocation.scope] = max(revocation.before, self.before.get(revocation.scope, -math.inf))

    def revokes(self, grant: Grant, name: str | None) -> bool:
        """Whether `grant` is void for document `name` (None: for everything, as a listing asks).

        A share token is void with any token of its line (`Via`): by id, any of them; by time, when it or the
        first was issued before the revocation's time, whichever is earlier.
        """
        if grant.token_id is not None and grant.token_id in self.token_ids:
            return True
        if grant.via is not None and not self.token_ids.isdisjoint(grant.via.token_ids):
            return True
        if name is None or not self.before:
            return False
        issued = _time_or_before_all(grant.issued_at)
        if grant.via is not None:
            issued = min(issued, _time_or_before_all(grant.via.issued_at))
        return any(issued < self.before.get(scope, -math.inf) for scope in _scopes_covering(name))


def _time_or_before_all(issued_at: float | None) -> float:
    """An `iat`, or for a token without one a time before any revocation's."""
    return -math.inf if issued_at is None else issued_at


def _scopes_covering(name: str) -> Iterable[str]:
    """The name itself and each of its prefixes that ends in '/': every scope a revocation of `name` may name."""
    yield name
    index = name.find("/")
    while index != -1:
        yield name[: index + 1]
        index = name.find("/", index + 1)


class Access:
    """The server's access policy: open when no secret or public key is configured, tokens otherwise."""

    def __init__(self, secret: bytes | None, public_key: PublicKey | None = None) -> None:
        self.secret = secret
        self.public_key = public_key
        self.revocations = Revocations()

    @property
    def enabled(self) -> bool:
        return self.secret is not None or self.public_key is not None

    def check(self, token: str | None, name: str | None = None) -> Grant | None:
        """The grant for `name` (or any name, for a listing); None when access control is off."""
        if not self.enabled:
            return None
        if name is None:
            grant = verify_token(self.secret, token, public_key=self.public_key)
        else:
            grant = authorize(self.secret, token, name, public_key=self.public_key)
        if self.revocations.revokes(grant, name):
            raise UnauthenticatedError("token revoked", "revoked")
        return grant

    def check_write(self, token: str | None, name: str) -> Grant | None:
        """The grant for changing `name`, as `check` gives it; `ForbiddenError` ("read_only") for a read-only one."""
        grant = self.check(token, name)
        if grant is not None and not grant.can_write:
            raise ForbiddenError(f"a read-only token cannot change {name!r}", "read_only")
        return grant

    def allows(self, grant: Grant | None, name: str) -> bool:
        """Whether a grant `check` returned earlier gives `name` now: it covers it and is not revoked for it.

        A None grant (access control off) allows everything. A listing filters with this, and live
        connections are closed when it stops holding.
        """
        return grant is None or (grant.covers(name) and not self.revocations.revokes(grant, name))


def token_from_subprotocols(offered: Sequence[str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None
