"""Access control: every token path, on WebSocket and HTTP, and the origin check."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from pycrdt import Text
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from collab.auth import MAX_TIME, Permission, mint_token, verify_token
from collab.client import Client
from collab.server.app import CollabServer

from .helpers import (
    ROOT,
    SECRET,
    StartServer,
    collab_cli,
    get,
    refused,
    room_url,
    stored_text,
    synced,
    text,
    token,
    upgrade_status,
    wait_for,
    with_token,
)


@pytest.mark.parametrize(
    ("make_token", "code", "reason", "label"),
    [
        (lambda: None, 4401, "a token is required", "missing"),
        (lambda: token("notes") + "x", 4401, "invalid token signature", "invalid"),
        (lambda: mint_token(b"another-secret-entirely", "notes", Permission.WRITE, 600), 4401, "signature", "invalid"),
        (lambda: token("notes", ttl=-1), 4401, "token expired", "expired"),
        (lambda: "garbage", 4401, "malformed", "invalid"),
        (lambda: token("other"), 4403, "token is for 'other', not 'notes'", "forbidden"),
        (lambda: token("team/"), 4403, "not 'notes'", "forbidden"),
    ],
)
async def test_bad_tokens_are_refused_before_any_document_data(
    secured: CollabServer, make_token, code: int, reason: str, label: str
) -> None:
    async with synced(with_token(room_url(secured, "notes"), token("notes"))) as owner:
        text(owner).insert(0, "secret plans")
        await owner.resync()
        value = make_token()
        url = room_url(secured, "notes") if value is None else with_token(room_url(secured, "notes"), value)
        intruder = await refused(url)
        assert intruder.close_code == code
        assert intruder.permission_denied is not None and reason in intruder.permission_denied
        assert not intruder.synced.is_set()
        assert str(text(intruder)) == "", "no document data before the check"
        assert intruder.received_frames == 1, "only the auth message"
    assert secured.metrics.auth_failures.get(label) == 1


async def test_write_tokens_work_by_query_and_by_subprotocol(secured: CollabServer) -> None:
    by_query = with_token(room_url(secured, "team/plan"), token("team/"))
    async with synced(by_query) as first:
        text(first).insert(0, "hello")
        async with Client(
            room_url(secured, "team/plan"), subprotocols=["collab", f"token.{token('team/plan')}"]
        ) as second:
            await second.synced.wait()
            assert second.ws.subprotocol == "collab"
            await second.wait_until(lambda: str(text(second)) == "hello")
            text(second).insert(5, " world")
            await first.wait_until(lambda: str(text(first)) == "hello world")


async def test_a_read_token_reads_and_shares_presence_but_cannot_write(secured: CollabServer, db_path: Path) -> None:
    url = room_url(secured, "notes")
    async with synced(with_token(url, token("notes"))) as writer:
        text(writer).insert(0, "original")
        await wait_for(lambda: stored_text(db_path, "notes") == "original")
        async with synced(with_token(url, token("notes", Permission.READ))) as reader:
            assert str(text(reader)) == "original"
            reader.set_awareness({"user": "viewer"})
            await writer.wait_until(lambda: writer.awareness.get(reader.client_id) == {"user": "viewer"})
            text(reader).insert(0, "vandalism ")
            text(reader).insert(0, "more ")
            await reader.resync()
            assert reader.permission_denied is not None and "read-only" in reader.permission_denied
            assert reader.close_code is None, "stays connected"
            text(writer).insert(8, "!")
            await reader.wait_until(lambda: str(text(reader)).endswith("original!"))
            await writer.resync()
            assert str(text(writer)) == "original!"
            room = secured.rooms.get("notes")
            assert room is not None and str(room.doc.get("content", type=Text)) == "original!"
            await secured.store.flush()
            assert stored_text(db_path, "notes") == "original!"
    assert secured.metrics.rejected.get("read_only") >= 2


async def test_without_a_secret_everything_is_open(server: CollabServer) -> None:
    async with synced(room_url(server, "open")) as writer, synced(room_url(server, "open")) as reader:
        text(writer).insert(0, "no token needed")
        await reader.wait_until(lambda: str(text(reader)) == "no token needed")
        assert writer.permission_denied is None and reader.permission_denied is None
    reply = await get(server, "/api/docs/open?format=txt")
    assert (reply.status, reply.body) == (200, b"no token needed")
    assert server.metrics.auth_failures.get("missing") == 0


async def test_http_api_honours_tokens(secured: CollabServer) -> None:
    async with synced(with_token(room_url(secured, "team/a"), token("team/a"))) as writer:
        text(writer).insert(0, "A")
        await writer.resync()
    async with synced(with_token(room_url(secured, "other"), token("other"))) as writer:
        text(writer).insert(0, "B")
        await writer.resync()
    await secured.store.flush()

    assert (await get(secured, "/api/docs")).status == 401
    listing = await get(secured, "/api/docs", bearer=token("team/", Permission.READ))
    assert listing.status == 200 and [doc["name"] for doc in listing.json()["documents"]] == ["team/a"]
    by_query = await get(secured, "/api/docs/team%2Fa?format=txt&token=" + token("team/a", Permission.READ))
    assert (by_query.status, by_query.body) == (200, b"A")
    assert (await get(secured, "/api/docs/other?format=txt", bearer=token("team/"))).status == 403
    assert (await get(secured, "/api/docs/other?format=txt", bearer=token("other", ttl=-5))).status == 401
    assert (await get(secured, "/")).status == 200, "the page itself holds no document data"


async def test_allowed_origins_refuse_other_browsers(start_server: StartServer) -> None:
    server = await start_server(allowed_origin=("https://app.example.com",))
    async with connect(room_url(server, "x"), origin=Origin("https://app.example.com")) as allowed:
        await allowed.recv()
    with pytest.raises(InvalidStatus) as refusal:
        async with connect(room_url(server, "x"), origin=Origin("https://evil.example.com")):
            pass
    assert refusal.value.response.status_code == 403
    async with synced(room_url(server, "x")):  # non-browser clients send no Origin
        pass
    assert server.metrics.auth_failures.get("origin") == 1


def test_token_command_prints_only_a_token(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    result = collab_cli("token", "team/", "--write", "--ttl", "2h", "--auth-secret-file", str(secret_file))
    grant = verify_token(SECRET.encode(), result.stdout.strip())
    assert grant.scope == "team/" and grant.can_write
    assert 7000 < grant.expires_at - time.time() <= 7200
    assert result.stdout.count("\n") == 1


def test_the_readme_minting_snippet_makes_valid_tokens() -> None:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(import base64, hashlib.*?)```", readme, re.DOTALL)
    assert snippet, "the README shows how an app server mints tokens"
    namespace: dict[str, object] = {}
    exec(snippet[1], namespace)
    minted = namespace["collab_token"](SECRET.encode(), "team/", "read", 60)  # type: ignore[operator]
    grant = verify_token(SECRET.encode(), minted)
    assert grant.scope == "team/" and not grant.can_write


async def test_without_access_control_only_the_servers_own_pages_may_use_it(server: CollabServer) -> None:
    """A page on another site cannot drive the user's browser into their local documents."""
    port = server.port
    async with synced(room_url(server, "notes")) as healthy, synced(room_url(server, "elsewhere")) as other:
        text(healthy).insert(0, "private")
        for path in ("/notes", "/api/docs", "/api/docs/notes?format=txt"):
            assert await upgrade_status(port, "http://evil.example", host=f"127.0.0.1:{port}", path=path) == 403
            assert await upgrade_status(port, "null", host=f"127.0.0.1:{port}", path=path) == 403
            assert await upgrade_status(port, f"http://evil.example:{port}", host=f"127.0.0.1:{port}", path=path) == 403
        allowed = [
            (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"),
            (f"http://localhost:{port}", f"127.0.0.1:{port}"),
            (f"http://[::1]:{port}", f"127.0.0.1:{port}"),
            ("http://collab.example", "collab.example"),  # its own origin, by Host
            ("https://collab.example", "collab.example"),  # behind a proxy that terminates TLS
            (f"HTTP://LOCALHOST:{port}/", f"127.0.0.1:{port}"),
        ]
        for origin, host in allowed:
            assert await upgrade_status(port, origin, host=host) == 101, origin
            assert await upgrade_status(port, origin, host=host, path="/api/docs") == 200, origin
        assert await upgrade_status(port, f"http://localhost:{port + 1}", host=f"127.0.0.1:{port}") == 403
        assert await upgrade_status(port, None) == 101, "non-browser clients send no Origin"
        own = f"http://127.0.0.1:{port}"
        async with connect(room_url(server, "notes"), origin=Origin(own)) as browser_like:
            await browser_like.recv()
        await healthy.resync()
        await other.resync()
    assert server.metrics.auth_failures.get("origin") == 10


async def test_allowed_origin_star_and_access_control_open_it_up(start_server: StartServer) -> None:
    anywhere = await start_server(allowed_origin=("*",))
    assert await upgrade_status(anywhere.port, "http://evil.example") == 101
    await anywhere.stop()
    secured = await start_server(auth_secret=SECRET)
    assert await upgrade_status(secured.port, "http://app.example", path="/notes?token=" + token("notes")) == 101
    await secured.stop()
    listed = await start_server(allowed_origin=("https://app.example.com",))
    assert await upgrade_status(listed.port, "https://app.example.com") == 101
    assert await upgrade_status(listed.port, f"http://127.0.0.1:{listed.port}", host=f"127.0.0.1:{listed.port}") == 403


async def test_expiries_up_to_the_year_9999_are_answered_later_ones_refused(secured: CollabServer) -> None:
    """`expires_at` is ISO 8601 with a four-digit year: an `exp` past 9999 is refused, not a 500."""
    last = mint_token(SECRET.encode(), "notes", Permission.WRITE, MAX_TIME, now=0)
    reply = await get(secured, "/api/access?doc=notes", bearer=last)
    assert reply.status == 200 and reply.json()["expires_at"] == "9999-12-31T23:59:59.000Z"
    async with synced(with_token(room_url(secured, "notes"), last)) as writer:
        text(writer).insert(0, "lasting")
        await writer.resync()
        assert writer.close_code is None
    refusal = "malformed token claims: exp must be an integer Unix time up to 253402300799 (9999-12-31T23:59:59.000Z)"
    for beyond in (MAX_TIME + 1, 2**53):
        too_late = mint_token(SECRET.encode(), "notes", Permission.WRITE, beyond, now=0)
        reply = await get(secured, "/api/access?doc=notes", bearer=too_late)
        assert (reply.status, reply.json()) == (401, {"error": refusal})
