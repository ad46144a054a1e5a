"""What a token may do, and share links minted from it: the two requests behind the pages' Share and menus.

    GET /api/access[?doc=NAME]    {"access_control", "doc", "access": "edit"|"view"|"none", "scope",
                                   "expires_at", "can_share"}: what the request's token gives (on NAME,
                                   or wherever it reaches), so that a page shows only what will work.
    POST /api/share?doc=NAME&access=view|edit[&expires_in=7d]
                                  {"url": "/d/NAME?token=T", "token", "doc", "access", "expires_at", "id",
                                   "access_control"}: a link to hand to someone else.

With access control off everything is open: access is "edit", a share link is the document's plain
address, and nothing expires. With it on, the token comes as `?token=` or `Authorization: Bearer` (401
without a valid one, or one revoked for the document asked about). `/api/access` answers "none" for a
document the token does not cover, rather than 403, since the question is "what may I do here".

A share link carries a new token for exactly that document, made by `collab.auth.share_grant` from the
sharer's own grant (never wider, never longer-lived: an "edit" link from a read token is 403, an expiry
past the sharer's is cut to it) and signed with `--auth-secret`; a server configured with
`--auth-public-key` only holds no key to sign with, and says so (409, `can_share: false`). Its `id`
revokes it, and the links made from it: `collab revoke --id ID`. It falls, too, with the token it was made
from, by id or by time (its `via` claim, `collab.auth.Via`): a link does not outlive the access it came from.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import quote

from websockets.http11 import Response

from ..auth import Access, Grant, Permission, mint_grant, share_grant
from ..errors import AuthError, InvalidRoomNameError
from ..sync.names import validate_room_name
from ..units import format_duration, format_time, parse_duration
from .api import error_response, refused, request_token
from .router import HttpRequest, Router, json_response

if TYPE_CHECKING:
    from ..server.metrics import ServerMetrics

__all__ = ["DEFAULT_EXPIRY", "MAX_EXPIRY", "editor_path", "install_share"]

ACCESS = "/api/access"
SHARE = "/api/share"

DEFAULT_EXPIRY = 7 * 86400.0
MAX_EXPIRY = 365 * 86400.0
"""The longest a share link lasts: a link is copied into mails and chats, and outlives what it was for."""
MIN_EXPIRY = 1.0
"""Shorter would round down to a token that is expired when made (`exp` is whole seconds)."""

ACCESS_OF = {Permission.WRITE: "edit", Permission.READ: "view"}
PERMISSION_OF = {access: permission for permission, access in ACCESS_OF.items()}


def editor_path(name: str) -> str:
    """The editor page's path for `name`, as web/src/names.js `editorPath` writes it.

    Segment by segment, so that a name with slashes reads naturally; whole (slashes as %2F) when a "." or
    ".." segment would be folded away by URL normalisation.
    """
    segments = name.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "/d/" + quote(name, safe="")
    return "/d/" + "/".join(quote(segment, safe="") for segment in segments)


def install_share(router: Router, access: Access, metrics: ServerMetrics) -> None:
    """Register `GET /api/access` and `POST /api/share` on `router`."""

    async def what_access(request: HttpRequest) -> Response:
        try:
            name = validate_room_name(request.query["doc"]) if "doc" in request.query else None
        except InvalidRoomNameError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        token = request_token(request)
        try:
            grant = access.check(token)  # verified, and not revoked by its id
            if grant is not None and name is not None and grant.covers(name):
                access.check(token, name)  # revoked for this document (`collab revoke --doc`): 401, as elsewhere
        except AuthError as error:
            return refused(metrics, error)
        if grant is None:
            return json_response(_access_json(name, "edit", None, can_mint=True))
        covered = name is None or grant.covers(name)
        answer = ACCESS_OF[grant.permission] if covered else "none"
        return json_response(_access_json(name, answer, grant, can_mint=access.secret is not None))

    async def share(request: HttpRequest) -> Response:
        try:
            name, permission, ttl = _share_request(request.query)
        except (ValueError, InvalidRoomNameError) as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        try:
            sharer = access.check(request_token(request), name)
        except AuthError as error:
            return refused(metrics, error)
        if sharer is None:
            return json_response(_share_json(editor_path(name), None, name, permission, None))
        if access.secret is None:
            return error_response(
                HTTPStatus.CONFLICT,
                "this server verifies tokens with --auth-public-key only and cannot mint one: "
                "share links come from the app server that holds the private key",
            )
        try:
            grant = share_grant(sharer, name, permission, ttl, time.time())
        except ValueError as error:
            return error_response(HTTPStatus.BAD_REQUEST, str(error))
        except AuthError as error:
            return refused(metrics, error)
        token = mint_grant(access.secret, grant)
        url = f"{editor_path(name)}?token={quote(token, safe='')}"
        return json_response(_share_json(url, token, name, permission, grant))

    router.route(ACCESS, what_access)
    router.route(SHARE, share, methods=("POST",))


def _share_request(query: dict[str, str]) -> tuple[str, Permission, float]:
    """The document, permission and lifetime a share request asks for; `ValueError` or
    `InvalidRoomNameError` saying which parameter is wrong."""
    if "doc" not in query:
        raise ValueError(f"which document? POST {SHARE}?doc=NAME&access=view|edit")
    name = validate_room_name(query["doc"])
    permission = PERMISSION_OF.get(query.get("access", ""))
    if permission is None:
        raise ValueError(f"access must be 'view' or 'edit', not {query.get('access', '')!r}")
    ttl = parse_duration(query["expires_in"]) if "expires_in" in query else DEFAULT_EXPIRY
    if not MIN_EXPIRY <= ttl <= MAX_EXPIRY:
        raise ValueError(
            f"expires_in must be from {format_duration(MIN_EXPIRY)} to {format_duration(MAX_EXPIRY)},"
            f" not {query['expires_in']!r}"
        )
    return name, permission, ttl


def _access_json(name: str | None, answer: str, grant: Grant | None, *, can_mint: bool) -> dict[str, object]:
    return {
        "access_control": grant is not None,
        "doc": name,
        "access": answer,
        "scope": None if grant is None else grant.scope,
        "expires_at": None if grant is None else format_time(grant.expires_at),
        "can_share": can_mint and answer != "none",
    }


def _share_json(
    url: str, token: str | None, name: str, permission: Permission, grant: Grant | None
) -> dict[str, object]:
    return {
        "url": url,
        "token": token,
        "doc": name,
        "access": ACCESS_OF[permission],
        "expires_at": None if grant is None else format_time(grant.expires_at),
        "id": None if grant is None else grant.token_id,
        "access_control": grant is not None,
    }
