"""Sharing and access: GET /api/access says what a token may do, POST /api/share mints a link from it.

The rule that a share token is never more than the sharer's (`collab.auth.share_grant`) is checked on its
own first, then through a real server: the minted tokens decoded, used over WebSocket, refused, revoked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from collab.auth import (
    MAX_SHARE_DEPTH,
    SHARE_ID_PREFIX,
    Grant,
    Permission,
    Revocation,
    Revocations,
    Via,
    mint_grant,
    share_grant,
    verify_token,
)
from collab.client import Client
from collab.errors import ForbiddenError
from collab.http.share import editor_path
from collab.server.app import CollabServer

from .helpers import (
    SECRET,
    StartServer,
    call,
    get,
    room_url,
    run_collab,
    server_text,
    stored_text,
    synced,
    text,
    token,
    with_token,
)

DAY = 86400.0


async def share(server: CollabServer, query: str, bearer: str | None = None) -> tuple[int, Any]:
    reply = await call(server, "POST", f"/api/share?{query}", bearer=bearer)
    return reply.status, reply.json()


async def access_of(server: CollabServer, query: str = "", bearer: str | None = None) -> tuple[int, Any]:
    reply = await get(server, f"/api/access{query}", bearer=bearer)
    return reply.status, reply.json()


# The rule, without a server.

NOW = 1_800_000_000.25
WRITER = Grant("team/", Permission.WRITE, 1_800_003_600.0, subject="ada", token_id="ada-1", issued_at=NOW - 60)
READER = Grant("team/", Permission.READ, 1_800_003_600.0)


def test_a_share_grant_is_exactly_one_covered_document_with_its_own_id() -> None:
    grant = share_grant(WRITER, "team/plan", Permission.WRITE, 600, NOW)
    assert (grant.scope, grant.permission) == ("team/plan", Permission.WRITE)
    assert (grant.issued_at, grant.expires_at) == (math.ceil(NOW), math.ceil(NOW) + 600), "whole seconds, from iat"
    assert grant.subject is None, "for whoever gets the link, not for the sharer"
    assert grant.token_id is not None and grant.token_id.startswith(SHARE_ID_PREFIX) and grant.token_id != "ada-1"
    assert share_grant(WRITER, "team/plan", Permission.WRITE, 600, NOW).token_id != grant.token_id
    assert share_grant(WRITER, "team/plan", Permission.READ, 600, NOW).permission is Permission.READ
    assert share_grant(READER, "team/plan", Permission.READ, 600, NOW).permission is Permission.READ


def test_a_share_grant_never_outlives_the_sharer_s() -> None:
    assert share_grant(WRITER, "team/plan", Permission.READ, 365 * DAY, NOW).expires_at == WRITER.expires_at
    assert share_grant(WRITER, "team/plan", Permission.READ, 3598, NOW).expires_at == math.ceil(NOW) + 3598
    with pytest.raises(ValueError, match=r"a share link lasting 0\.5 s would be expired when made"):
        share_grant(WRITER, "team/plan", Permission.READ, 0.5, NOW)
    expiring = Grant("team/", Permission.WRITE, math.ceil(NOW))
    with pytest.raises(ValueError, match=r"^the token sharing it expires at 2027-01-15T08:00:01\.000Z, within the s"):
        share_grant(expiring, "team/plan", Permission.READ, 3600, NOW)


def test_a_share_link_made_just_after_a_revocation_in_the_same_second_lives() -> None:
    """iat rounded up: rounded down, it would fall before `collab revoke --doc` made earlier in that second."""
    revocations = Revocations()
    revocations.add([Revocation(scope="team/", before=NOW)])
    replacement = Grant("team/", Permission.WRITE, NOW + 3600, token_id="ada-2", issued_at=NOW + 0.1)
    assert not revocations.revokes(replacement, "team/plan")
    link = share_grant(replacement, "team/plan", Permission.WRITE, 600, NOW + 0.5)
    assert not revocations.revokes(link, "team/plan")
    assert link.issued_at == math.ceil(NOW)


@pytest.mark.parametrize(
    ("sharer", "name", "permission", "refusal", "label"),
    [
        (READER, "team/plan", Permission.WRITE, "read-only token cannot share 'team/plan' for editing", "read_only"),
        (WRITER, "elsewhere", Permission.READ, "token is for 'team/', not 'elsewhere'", "forbidden"),
        (WRITER, "team", Permission.READ, "not 'team'", "forbidden"),
    ],
)
def test_a_share_grant_is_never_wider(
    sharer: Grant, name: str, permission: Permission, refusal: str, label: str
) -> None:
    with pytest.raises(ForbiddenError, match=refusal) as error:
        share_grant(sharer, name, permission, 600, NOW)
    assert error.value.label == label


def test_a_share_grant_carries_its_line_of_tokens() -> None:
    """`via`: the ids of every token it came from, first first, and when the first was issued."""
    link = share_grant(WRITER, "team/plan", Permission.WRITE, 600, NOW)
    assert link.via == Via(("ada-1",), WRITER.issued_at)
    assert link.token_id is not None
    relinked = share_grant(link, "team/plan", Permission.READ, 600, NOW + 5)
    assert relinked.via == Via(("ada-1", link.token_id), WRITER.issued_at), "the first token's iat, not the link's"
    anonymous = share_grant(READER, "team/plan", Permission.READ, 600, NOW)
    assert anonymous.via == Via((), None), "a first token without jti or iat: nothing to name"
    assert anonymous.token_id is not None
    assert share_grant(anonymous, "team/plan", Permission.READ, 600, NOW).via == Via((anonymous.token_id,), None)


def test_a_share_grant_becomes_a_token_that_verifies_as_exactly_it() -> None:
    relinked = share_grant(
        share_grant(WRITER, "team/plan", Permission.WRITE, 600, NOW), "team/plan", Permission.READ, 60, NOW
    )
    for grant in (relinked, share_grant(READER, "team/plan", Permission.READ, 600, NOW), WRITER):
        assert verify_token(SECRET.encode(), mint_grant(SECRET.encode(), grant), NOW) == grant


def test_a_line_of_shares_is_bounded() -> None:
    grant = WRITER  # with a jti: the first of the ids
    for depth in range(MAX_SHARE_DEPTH):
        grant = share_grant(grant, "team/plan", Permission.READ, 600, NOW)
        assert grant.via is not None and len(grant.via.token_ids) == depth + 1
    with pytest.raises(ForbiddenError, match=f"a line of {MAX_SHARE_DEPTH} shared tokens already") as error:
        share_grant(grant, "team/plan", Permission.READ, 600, NOW)
    assert error.value.label == "share_depth"


def test_a_share_link_falls_with_any_token_it_came_from() -> None:
    """By id: the first token, or any link between; by time: the first token's iat (the leak), not the link's."""
    link = share_grant(WRITER, "team/plan", Permission.WRITE, 600, NOW)
    relinked = share_grant(link, "team/plan", Permission.WRITE, 600, NOW)
    sibling = share_grant(WRITER, "team/plan", Permission.WRITE, 600, NOW)
    assert link.token_id is not None

    def void(revocation: Revocation) -> set[str]:
        revocations = Revocations()
        revocations.add([revocation])
        named = {"first": WRITER, "link": link, "relinked": relinked, "sibling": sibling}
        return {label for label, grant in named.items() if revocations.revokes(grant, "team/plan")}

    assert void(Revocation(token_id="ada-1")) == {"first", "link", "relinked", "sibling"}
    assert void(Revocation(token_id=link.token_id)) == {"link", "relinked"}, "its descendants, not its elders"
    assert void(Revocation(scope="team/", before=NOW - 30)) == {"first", "link", "relinked", "sibling"}
    assert void(Revocation(scope="team/plan", before=NOW - 30)) == {"first", "link", "relinked", "sibling"}
    assert void(Revocation(scope="team/", before=NOW - 90)) == set(), "issued after: all kept"
    assert void(Revocation(scope="team/other", before=NOW)) == set(), "another document"

    anonymous = share_grant(READER, "team/plan", Permission.READ, 600, NOW)
    revocations = Revocations()
    revocations.add([Revocation(scope="team/", before=0)])
    assert revocations.revokes(anonymous, "team/plan"), "from a token without iat: issued before any revocation"


def test_a_share_grant_is_never_a_prefix() -> None:
    with pytest.raises(ValueError, match="one document"):
        share_grant(WRITER, "team/sub/", Permission.READ, 600, NOW)


def test_editor_paths_match_the_pages() -> None:
    assert editor_path("team/plan 1") == "/d/team/plan%201"
    assert editor_path("a/../b") == "/d/a%2F..%2Fb"
    assert editor_path("ümlaut?#") == "/d/%C3%BCmlaut%3F%23"


# GET /api/access.


async def test_access_without_access_control_is_edit_everywhere(server: CollabServer) -> None:
    everything = {"access_control": False, "access": "edit", "scope": None, "expires_at": None, "can_share": True}
    assert await access_of(server) == (200, {**everything, "doc": None})
    assert await access_of(server, "?doc=team%2Fplan") == (200, {**everything, "doc": "team/plan"})
    status, answer = await access_of(server, "?doc=%20spaced")
    assert status == 400 and "whitespace" in answer["error"]


async def test_access_with_access_control_is_the_token_s_grant(secured: CollabServer) -> None:
    writer = token("notes", ttl=600)
    status, answer = await access_of(secured, "?doc=notes", writer)
    assert status == 200
    assert answer == {
        "access_control": True,
        "doc": "notes",
        "access": "edit",
        "scope": "notes",
        "expires_at": answer["expires_at"],
        "can_share": True,
    }
    assert datetime.fromisoformat(answer["expires_at"]).timestamp() == verify_token(SECRET.encode(), writer).expires_at

    reader = token("team/", Permission.READ)
    assert (await access_of(secured, "?doc=team%2Fa", reader))[1]["access"] == "view"
    assert (await access_of(secured, "?token=" + reader))[1] | {"expires_at": None} == {
        "access_control": True,
        "doc": None,
        "access": "view",
        "scope": "team/",
        "expires_at": None,
        "can_share": True,
    }, "without doc: the grant wherever it reaches (a page lists what it may act on)"
    not_covered = (await access_of(secured, "?doc=elsewhere", reader))[1]
    assert (not_covered["access"], not_covered["can_share"], not_covered["scope"]) == ("none", False, "team/")
    assert (await access_of(secured, "?doc=notes", token("notes", Permission.READ)))[1]["access"] == "view"

    status, answer = await access_of(secured, "?doc=notes")
    assert (status, answer) == (401, {"error": "a token is required (?token=... or the subprotocol token.<TOKEN>)"})
    assert (await access_of(secured, "?doc=notes", writer + "x"))[0] == 401
    assert (await access_of(secured, "?doc=notes", token("notes", ttl=-5)))[0] == 401
    assert secured.metrics.auth_failures.get("missing") == 1
    assert secured.metrics.auth_failures.get("expired") == 1


# POST /api/share.


async def test_sharing_without_access_control_is_the_plain_link(server: CollabServer) -> None:
    status, answer = await share(server, "doc=team%2Fplan%201&access=edit")
    assert status == 200
    assert answer == {
        "url": "/d/team/plan%201",
        "token": None,
        "doc": "team/plan 1",
        "access": "edit",
        "expires_at": None,
        "id": None,
        "access_control": False,
    }
    assert (await share(server, "doc=x&access=view&expires_in=soon"))[0] == 400, "parameters checked all the same"


@pytest.mark.parametrize(("access", "permission"), [("view", Permission.READ), ("edit", Permission.WRITE)])
async def test_a_share_link_carries_a_new_token_for_exactly_that_document(
    secured: CollabServer, access: str, permission: Permission
) -> None:
    sharer = token("team/", ttl=30 * DAY, token_id="ada-1", subject="ada")
    before = math.ceil(time.time())
    status, answer = await share(secured, f"doc=team%2Fplan%201&access={access}&expires_in=1h", sharer)
    after = math.ceil(time.time())
    assert status == 200, answer
    minted = answer["token"]
    assert minted != sharer
    assert answer["url"] == f"/d/team/plan%201?token={minted}"
    assert (answer["doc"], answer["access"], answer["access_control"]) == ("team/plan 1", access, True)
    grant = verify_token(SECRET.encode(), minted)
    assert (grant.scope, grant.permission, grant.subject) == ("team/plan 1", permission, None)
    assert grant.issued_at is not None and before <= grant.issued_at <= after, "now, rounded up"
    assert grant.expires_at == grant.issued_at + 3600
    assert grant.via == Via(("ada-1",), verify_token(SECRET.encode(), sharer).issued_at)
    assert grant.token_id == answer["id"] and answer["id"].startswith(SHARE_ID_PREFIX)
    assert (await access_of(secured, "?doc=team%2Fplan%201", minted))[1]["expires_at"] == answer["expires_at"]
    assert (await access_of(secured, "?doc=team%2Fother", minted))[1]["access"] == "none", "that document only"

    default = await share(secured, f"doc=team%2Fplan%201&access={access}", sharer)
    left = verify_token(SECRET.encode(), default[1]["token"]).expires_at - time.time()
    assert 7 * DAY - 5 < left < 7 * DAY + 1, "7 days from its iat, now rounded up"


async def test_a_share_link_expires_no_later_than_the_sharer_s_token(secured: CollabServer) -> None:
    sharer = token("notes", ttl=600)
    own_expiry = verify_token(SECRET.encode(), sharer).expires_at
    status, answer = await share(secured, "doc=notes&access=edit&expires_in=365d", sharer)
    assert status == 200
    assert verify_token(SECRET.encode(), answer["token"]).expires_at == own_expiry
    assert answer["expires_at"] == (await access_of(secured, "?doc=notes", sharer))[1]["expires_at"]


async def test_a_view_link_reads_and_cannot_write_an_edit_link_writes(secured: CollabServer, db_path: Path) -> None:
    sharer = token("team/")
    view = (await share(secured, "doc=team%2Fplan&access=view&expires_in=1h", sharer))[1]["token"]
    edit = (await share(secured, "doc=team%2Fplan&access=edit&expires_in=1h", sharer))[1]["token"]
    url = room_url(secured, "team/plan")
    async with synced(with_token(url, sharer)) as ada:
        text(ada).insert(0, "the plan")
        await ada.resync()
        async with synced(with_token(url, view)) as viewer, synced(with_token(url, edit)) as editor:
            assert str(text(viewer)) == "the plan"
            text(viewer).insert(0, "vandalism ")
            await viewer.resync()
            assert viewer.permission_denied is not None and "read-only" in viewer.permission_denied
            assert viewer.close_code is None, "a viewer stays, reading"
            text(editor).insert(8, ", shared")
            await ada.wait_until(lambda: str(text(ada)) == "the plan, shared")
            await viewer.wait_until(lambda: str(text(viewer)).endswith("the plan, shared"))
            assert server_text(secured, "team/plan") == "the plan, shared"
        await secured.store.flush()
        assert stored_text(db_path, "team/plan") == "the plan, shared"
        elsewhere = await Client(with_token(room_url(secured, "team/other"), edit)).connect()
        assert (await elsewhere.wait_closed())[0] == 4403, "exactly that document, not the sharer's prefix"


async def test_sharing_refusals(secured: CollabServer) -> None:
    reader, writer = token("team/", Permission.READ), token("team/")
    bad = {
        "access=view": (400, "which document?"),
        "doc=%20x&access=view": (400, "whitespace"),
        "doc=team%2Fa": (400, "access must be 'view' or 'edit', not ''"),
        "doc=team%2Fa&access=write": (400, "not 'write'"),
        "doc=team%2Fa&access=view&expires_in=soon": (400, "not a duration: 'soon'"),
        "doc=team%2Fa&access=view&expires_in=366d": (400, "from 1s to 365d, not '366d'"),
        "doc=team%2Fa&access=view&expires_in=0s": (400, "from 1s to 365d"),
        "doc=team%2Fa&access=view&expires_in=-1h": (400, "negative"),
        "doc=team%2Fsub%2F&access=view": (400, "one document"),
    }
    for query, (status, message) in bad.items():
        answer = await share(secured, query, writer)
        assert answer[0] == status and message in answer[1]["error"], (query, answer)
    assert await share(secured, "doc=team%2Fa&access=edit", reader) == (
        403,
        {"error": "a read-only token cannot share 'team/a' for editing"},
    )
    assert await share(secured, "doc=elsewhere&access=view", writer) == (
        403,
        {"error": "token is for 'team/', not 'elsewhere'"},
    )
    status, answer = await share(secured, "doc=team%2Fa&access=view")
    assert status == 401 and "a token is required" in answer["error"]
    assert (await share(secured, "doc=team%2Fa&access=view", writer[:-2]))[0] == 401
    assert (await share(secured, "doc=team%2Fa&access=view&token=" + reader))[0] == 200, "a token by query too"
    assert secured.metrics.auth_failures.get("read_only") == 1
    assert secured.metrics.auth_failures.get("forbidden") == 1
    assert secured.metrics.auth_failures.get("missing") == 1
    reply = await call(secured, "GET", "/api/share?doc=a&access=view", bearer=writer)
    assert (reply.status, reply.headers["allow"]) == (405, "POST"), "sharing changes something: POST only"


def ed25519_token(private: ed25519.Ed25519PrivateKey, claims: dict[str, Any]) -> str:
    """What an app server's JWT library signs with its private key (EdDSA)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"EdDSA","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(private.sign(signing_input.encode()))


async def test_a_server_with_only_a_public_key_cannot_mint(start_server: StartServer, tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    public_path = tmp_path / "app.pub.pem"
    public_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    server = await start_server(auth_public_key=public_path)
    claims = {"doc": "notes", "perm": "write", "exp": int(time.time()) + 600, "iat": int(time.time())}
    signed = ed25519_token(private, claims)
    status, answer = await access_of(server, "?doc=notes", signed)
    assert status == 200 and (answer["access"], answer["can_share"]) == ("edit", False)
    status, answer = await share(server, "doc=notes&access=view", signed)
    assert status == 409 and "--auth-public-key only" in answer["error"]
    assert (await share(server, "doc=notes&access=view"))[0] == 401, "who asks is checked first"


async def test_a_share_link_is_revoked_by_its_id_alone(secured: CollabServer, db_path: Path) -> None:
    sharer = token("notes")
    first = (await share(secured, "doc=notes&access=edit&expires_in=1h", sharer))[1]
    second = (await share(secured, "doc=notes&access=edit&expires_in=1h", sharer))[1]
    url = room_url(secured, "notes")
    async with synced(with_token(url, first["token"])) as doomed, synced(with_token(url, second["token"])) as kept:
        text(doomed).insert(0, "shared")
        await kept.wait_until(lambda: str(text(kept)) == "shared")
        result = await run_collab("revoke", "--db", str(db_path), "--id", first["id"])
        assert f"revoked token {first['id']!r}" in result.stderr
        assert (await doomed.wait_closed())[0] == 4401
        assert doomed.permission_denied == "permission denied: token revoked"
        refusal = await get(secured, f"/api/docs/notes?format=txt&token={quote(first['token'])}")
        assert (refusal.status, refusal.json()) == (401, {"error": "token revoked"})
        assert (await access_of(secured, "?doc=notes", first["token"]))[0] == 401
        text(kept).insert(6, "!")
        await kept.resync()
        assert kept.close_code is None, "the other link, and the sharer's own token, still work"
        assert server_text(secured, "notes") == "shared!"
        assert (await share(secured, "doc=notes&access=view", sharer))[0] == 200


async def test_access_to_a_document_revoked_for_it_is_refused(secured: CollabServer, db_path: Path) -> None:
    """`collab revoke --doc` voids a token for that document only: /api/access says so, like every request."""
    team = token("team/", ttl=3600, now=time.time() - 60)
    assert (await access_of(secured, "?doc=team%2Fa", team))[1]["access"] == "edit"
    await run_collab("revoke", "--db", str(db_path), "--doc", "team/a")
    async with asyncio.timeout(10):
        while (answer := await access_of(secured, "?doc=team%2Fa", team))[0] != 401:
            await asyncio.sleep(0.05)
    assert answer == (401, {"error": "token revoked"})
    assert (await access_of(secured, "?doc=team%2Fb", team))[1]["access"] == "edit"
    assert (await access_of(secured, "", team))[1]["access"] == "edit", "the listing still shows the rest"
    assert (await share(secured, "doc=team%2Fa&access=view", team))[0] == 401


async def test_links_fall_with_the_tokens_they_were_shared_from(secured: CollabServer, db_path: Path) -> None:
    """A link made from a link closes, live, when either is revoked by id; the tokens above it carry on."""
    ada, bob = token("team/", token_id="ada-1"), token("team/", token_id="bob-1")
    link = (await share(secured, "doc=team%2Fa&access=edit&expires_in=1h", ada))[1]
    relinked = (await share(secured, "doc=team%2Fa&access=edit&expires_in=1h", link["token"]))[1]
    sibling = (await share(secured, "doc=team%2Fa&access=view&expires_in=1h", ada))[1]
    unrelated = (await share(secured, "doc=team%2Fa&access=view&expires_in=1h", bob))[1]
    url = room_url(secured, "team/a")
    async with (
        synced(with_token(url, ada)) as first,
        synced(with_token(url, link["token"])) as middle,
        synced(with_token(url, relinked["token"])) as last,
        synced(with_token(url, sibling["token"])) as beside,
        synced(with_token(url, unrelated["token"])) as other,
    ):
        text(last).insert(0, "relayed")
        await first.wait_until(lambda: str(text(first)) == "relayed")
        await run_collab("revoke", "--db", str(db_path), "--id", link["id"])
        for client in (middle, last):
            assert (await client.wait_closed())[0] == 4401
            assert client.permission_denied == "permission denied: token revoked"
        assert (await access_of(secured, "?doc=team%2Fa", relinked["token"]))[0] == 401
        text(first).insert(0, "still ")
        await beside.wait_until(lambda: str(text(beside)) == "still relayed")
        assert first.close_code is None and beside.close_code is None, "its elders and siblings carry on"

        await run_collab("revoke", "--db", str(db_path), "--id", "ada-1")
        for client in (first, beside):
            assert (await client.wait_closed())[0] == 4401
        assert (await share(secured, "doc=team%2Fa&access=view", sibling["token"]))[0] == 401, "nor shares again"
        await other.resync()
        assert other.close_code is None, "a link from another token"
        assert (await access_of(secured, "?doc=team%2Fa", unrelated["token"]))[1]["access"] == "view"


async def test_a_link_minted_from_a_leaked_token_falls_with_it(secured: CollabServer, db_path: Path) -> None:
    """`collab revoke --doc team/ --before 1h` voids what was issued before the leak, and what the leaked token's
    holder shared after it: the links' line began before; links from newer tokens stay."""
    leaked = token("team/", ttl=7 * DAY, now=time.time() - 2 * 3600)
    replacement = token("team/", ttl=7 * DAY)
    stolen = (await share(secured, "doc=team%2Fa&access=edit&expires_in=30d", leaked))[1]
    restolen = (await share(secured, "doc=team%2Fa&access=edit&expires_in=30d", stolen["token"]))[1]
    fresh = (await share(secured, "doc=team%2Fa&access=edit&expires_in=30d", replacement))[1]
    url = room_url(secured, "team/a")
    async with (
        synced(with_token(url, stolen["token"])) as thief,
        synced(with_token(url, restolen["token"])) as accomplice,
        synced(with_token(url, fresh["token"])) as kept,
    ):
        text(thief).insert(0, "x")
        await kept.wait_until(lambda: str(text(kept)) == "x")
        await run_collab("revoke", "--db", str(db_path), "--doc", "team/", "--before", "1h")
        for client in (thief, accomplice):
            assert (await client.wait_closed())[0] == 4401
            assert client.permission_denied == "permission denied: token revoked"
        for refused in (leaked, stolen["token"], restolen["token"]):
            assert (await access_of(secured, "?doc=team%2Fa", refused))[0] == 401
        text(kept).insert(1, "!")
        await kept.resync()
        assert kept.close_code is None and server_text(secured, "team/a") == "x!"
        assert (await share(secured, "doc=team%2Fa&access=view", replacement))[0] == 200
