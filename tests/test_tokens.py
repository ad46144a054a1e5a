"""Tokens over a connection's life: strict claims, closed at expiry, revoked by id or by document and time."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Text

from collab.auth import MAX_SHARE_DEPTH, Permission, Via, mint_token, verify_token
from collab.client import Client
from collab.errors import UnauthenticatedError
from collab.server.app import CollabServer
from collab.units import format_time

from .helpers import (
    SECRET,
    StartServer,
    collab_cli,
    get,
    room_url,
    run_collab,
    synced,
    text,
    token,
    wait_for,
    with_token,
)


def signed(claims: dict[str, Any] | str) -> str:
    """A correctly signed token with exactly these claims (a str is the raw JSON text, for NaN and friends)."""
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(body.encode())
    return signing_input + "." + b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())


def claims_text(exp: str, extra: str = "") -> str:
    return '{"doc": "notes", "perm": "write", "exp": ' + exp + extra + "}"


FUTURE = str(int(time.time()) + 3600)
BAD_CLAIMS = {
    "exp Infinity as a string": claims_text('"Infinity"'),
    "exp a numeric string": claims_text(f'"{FUTURE}"'),
    "exp Infinity": claims_text("Infinity"),
    "exp NaN": claims_text("NaN"),
    "exp 1e999": claims_text("1e999"),
    "exp a float": claims_text(FUTURE + ".5"),
    "exp true": claims_text("true"),
    "exp null": claims_text("null"),
    "exp missing": '{"doc": "notes", "perm": "write"}',
    "exp beyond 2**53": claims_text(str(2**64)),
    "exp with 5000 digits": claims_text("9" * 5000),
    "exp beyond the year 9999": claims_text("253402300800"),
    "iat beyond the year 9999": claims_text(FUTURE, ', "iat": 253402300800'),
    "iat a string": claims_text(FUTURE, ', "iat": "yesterday"'),
    "iat NaN": claims_text(FUTURE, ', "iat": NaN'),
    "iat true": claims_text(FUTURE, ', "iat": true'),
    "sub a number": claims_text(FUTURE, ', "sub": 7'),
    "jti a list": claims_text(FUTURE, ', "jti": ["a"]'),
    "via a string": claims_text(FUTURE, ', "via": "ada-1"'),
    "via a list": claims_text(FUTURE, ', "via": ["ada-1"]'),
    "via without ids": claims_text(FUTURE, ', "via": {"iat": 5}'),
    "via ids a string": claims_text(FUTURE, ', "via": {"ids": "ada-1"}'),
    "via ids holding a number": claims_text(FUTURE, ', "via": {"ids": ["ada-1", 7]}'),
    "via ids past the depth": claims_text(FUTURE, ', "via": ' + json.dumps({"ids": ["a"] * (MAX_SHARE_DEPTH + 1)})),
    "via iat a string": claims_text(FUTURE, ', "via": {"ids": [], "iat": "yesterday"}'),
    "via iat true": claims_text(FUTURE, ', "via": {"ids": [], "iat": true}'),
    "via iat beyond the year 9999": claims_text(FUTURE, ', "via": {"ids": [], "iat": 253402300800}'),
    "via with another key": claims_text(FUTURE, ', "via": {"ids": [], "jti": "ada-1"}'),
    "claims a list": "[1, 2]",
    "perm unknown": '{"doc": "notes", "perm": "admin", "exp": ' + FUTURE + "}",
}


@pytest.mark.parametrize("kind", sorted(BAD_CLAIMS))
def test_verify_refuses_claims_that_are_not_what_they_should_be(kind: str) -> None:
    with pytest.raises(UnauthenticatedError, match="malformed token claims"):
        verify_token(SECRET.encode(), signed(BAD_CLAIMS[kind]))


@pytest.mark.parametrize("kind", ["exp Infinity as a string", "exp NaN", "exp a float", "exp true", "sub a number"])
async def test_bad_claims_are_refused_with_4401_while_others_carry_on(secured: CollabServer, kind: str) -> None:
    async with (
        synced(with_token(room_url(secured, "notes"), token("notes"))) as healthy,
        synced(with_token(room_url(secured, "elsewhere"), token("elsewhere"))) as other,
    ):
        intruder = await Client(with_token(room_url(secured, "notes"), signed(BAD_CLAIMS[kind]))).connect()
        assert (await intruder.wait_closed())[0] == 4401
        assert intruder.permission_denied is not None and "malformed token claims" in intruder.permission_denied
        text(healthy).insert(0, "still ")
        text(other).insert(0, "fine")
        async with synced(with_token(room_url(secured, "notes"), token("notes"))) as fresh:
            await fresh.wait_until(lambda: str(text(fresh)) == "still ")
        await other.resync()


def test_minted_tokens_carry_iat_jti_and_sub() -> None:
    grant = verify_token(SECRET.encode(), token("notes", subject="ada", token_id="session-1"))
    assert (grant.subject, grant.token_id) == ("ada", "session-1")
    assert grant.issued_at is not None and abs(grant.issued_at - time.time()) < 5
    assert grant.expires_at == grant.issued_at + 600
    first, second = (verify_token(SECRET.encode(), token("notes")).token_id for _ in range(2))
    assert first and second and first != second, "a random jti by default"
    assert verify_token(SECRET.encode(), signed(claims_text(FUTURE))).token_id is None, "all optional"


def test_via_is_read_as_written() -> None:
    """A share token's line (`collab.auth.Via`): ids and the first token's iat, which may be missing or a float."""
    line = ', "via": {"ids": ["ada-1", "share-x"], "iat": 1797990000.5}'
    assert verify_token(SECRET.encode(), signed(claims_text(FUTURE, line))).via == Via(
        ("ada-1", "share-x"), 1797990000.5
    )
    assert verify_token(SECRET.encode(), signed(claims_text(FUTURE, ', "via": {"ids": []}'))).via == Via((), None)
    assert verify_token(SECRET.encode(), signed(claims_text(FUTURE, ', "via": null'))).via is None, "as absent"
    deepest = ', "via": {"ids": ' + json.dumps(["a"] * MAX_SHARE_DEPTH) + "}"
    assert verify_token(SECRET.encode(), signed(claims_text(FUTURE, deepest))).via == Via(
        ("a",) * MAX_SHARE_DEPTH, None
    )


def test_token_command_mints_subject_and_id() -> None:
    result = collab_cli(
        "token", "notes", "--write", "--subject", "ada", "--id", "session-42", env={"COLLAB_AUTH_SECRET": SECRET}
    )
    assert result.returncode == 0, result.stderr
    grant = verify_token(SECRET.encode(), result.stdout.strip())
    assert (grant.subject, grant.token_id, grant.can_write) == ("ada", "session-42", True)


async def test_a_connection_is_closed_with_4401_when_its_token_expires(secured: CollabServer) -> None:
    """An idle one and one that keeps typing: both told and closed; nothing typed after expiry is kept."""
    url = room_url(secured, "notes")
    async with (
        synced(with_token(url, token("notes"))) as healthy,
        synced(with_token(room_url(secured, "elsewhere"), token("elsewhere"))) as other,
    ):
        short = token("notes", ttl=2)
        expires_at = verify_token(SECRET.encode(), short).expires_at
        async with synced(with_token(url, short)) as idle, synced(with_token(url, short)) as typist:
            typed: list[str] = []
            told_at: int | None = None
            # Until told and closed: a denial and a close that arrive in the same poll are still recorded here,
            # from the client's state, before the next keystroke.
            while told_at is None or typist.close_code is None:
                if told_at is None and typist.permission_denied is not None:
                    told_at = len(typed)
                if len(typed) < 2000:
                    typed.append(f"<{len(typed)}>")
                    text(typist).insert(len(str(text(typist))), typed[-1])
                await asyncio.sleep(0.01)
                assert time.time() < expires_at + 10, "never closed"
            assert told_at is not None and told_at < len(typed), "told inside the loop, and typed on after"
            assert time.time() >= expires_at
            for client in (idle, typist):
                assert client.close_code == 4401
                assert client.permission_denied == "permission denied: token expired"
        room = secured.rooms.get("notes")
        assert room is not None
        kept = str(room.doc.get("content", type=Text))
        assert kept == "".join(typed[: kept.count("<")]), "a prefix of what was typed"
        assert kept.count("<") <= told_at, "nothing typed after the server said the token expired"
        text(healthy).insert(0, "healthy ")
        async with synced(with_token(url, token("notes"))) as fresh:
            await fresh.wait_until(lambda: str(text(fresh)).startswith("healthy "))
        text(other).insert(0, "unaffected")
        await other.resync()
        assert other.close_code is None and healthy.close_code is None
    assert secured.metrics.auth_failures.get("expired") == 2


async def test_revoking_a_token_by_id_closes_it_and_refuses_it_everywhere(secured: CollabServer, db_path: Path) -> None:
    url = room_url(secured, "notes")
    doomed, kept = token("notes", token_id="doomed"), token("notes", token_id="kept")
    async with (
        synced(with_token(url, kept)) as healthy,
        synced(with_token(room_url(secured, "elsewhere"), token("elsewhere"))) as other,
        synced(with_token(url, doomed)) as victim,
    ):
        text(victim).insert(0, "before ")
        await healthy.wait_until(lambda: str(text(healthy)) == "before ")
        assert (await get(secured, "/api/docs/notes?format=txt", bearer=doomed)).status == 200
        result = await run_collab("revoke", "--db", str(db_path), "--id", "doomed")
        assert result.returncode == 0, result.stderr
        assert "revoked token 'doomed'" in result.stderr
        assert (await victim.wait_closed())[0] == 4401
        assert victim.permission_denied == "permission denied: token revoked"
        again = await Client(with_token(url, doomed)).connect()
        assert (await again.wait_closed())[0] == 4401 and again.permission_denied == "permission denied: token revoked"
        assert not again.synced.is_set()
        refusal = await get(secured, "/api/docs/notes?format=txt", bearer=doomed)
        assert (refusal.status, refusal.json()) == (401, {"error": "token revoked"})
        assert (await get(secured, "/api/docs", bearer=doomed)).status == 401
        text(healthy).insert(7, "after")
        await other.resync()
        async with synced(with_token(url, kept)) as fresh:
            await fresh.wait_until(lambda: str(text(fresh)) == "before after")
        assert healthy.close_code is None and other.close_code is None
    assert secured.metrics.auth_failures.get("revoked") >= 3


async def test_revoking_a_document_before_a_time(secured: CollabServer, db_path: Path) -> None:
    """Tokens for team/ minted before the time lose team/a, keep team/b; newer ones and other rooms are unaffected."""
    old = token("team/", ttl=3600, now=time.time() - 600)
    new = token("team/")
    elsewhere = token("elsewhere", ttl=3600, now=time.time() - 600)
    async with (
        synced(with_token(room_url(secured, "team/a"), old)) as victim,
        synced(with_token(room_url(secured, "team/b"), old)) as sibling,
        synced(with_token(room_url(secured, "team/a"), new)) as newer,
        synced(with_token(room_url(secured, "elsewhere"), elsewhere)) as other,
    ):
        text(sibling).insert(0, "b")
        text(newer).insert(0, "a")
        await victim.wait_until(lambda: str(text(victim)) == "a")
        await sibling.resync()
        before = format_time(time.time() - 60)
        revoke = ("revoke", "--db", str(db_path), "--doc", "team/a", "--before", before)
        result = await run_collab(*revoke)
        assert result.returncode == 0, result.stderr
        assert (await victim.wait_closed())[0] == 4401
        assert victim.permission_denied == "permission denied: token revoked"
        refused = await Client(with_token(room_url(secured, "team/a"), old)).connect()
        assert (await refused.wait_closed())[0] == 4401
        listing = await get(secured, "/api/docs", bearer=old)
        assert listing.status == 200 and [doc["name"] for doc in listing.json()["documents"]] == ["team/b"], (
            "the listing hides team/a"
        )
        text(newer).insert(1, "!")
        text(sibling).insert(1, "!")
        await newer.resync()
        await sibling.resync()
        await other.resync()
        assert all(client.close_code is None for client in (sibling, newer, other))

        result = await run_collab("revoke", "--db", str(db_path), "--doc", "team/")
        assert result.returncode == 0, result.stderr
        for client in (sibling, newer):
            assert (await client.wait_closed())[0] == 4401
        await other.resync()
        assert other.close_code is None


async def test_revocations_are_stored_and_hold_after_a_restart(start_server: StartServer, db_path: Path) -> None:
    doomed = token("notes", token_id="doomed")
    result = await run_collab("revoke", "--db", str(db_path), "--id", "doomed")
    assert result.returncode == 0, result.stderr
    server = await start_server(auth_secret=SECRET)
    refused = await Client(with_token(room_url(server, "notes"), doomed)).connect()
    assert (await refused.wait_closed())[0] == 4401
    async with synced(with_token(room_url(server, "notes"), token("notes"))):
        pass


def test_revoke_errors_are_clear(tmp_path: Path) -> None:
    db = str(tmp_path / "collab.db")
    assert collab_cli("revoke", "--db", db, check=False).returncode == 2, "--id or --doc is required"
    both = collab_cli("revoke", "--db", db, "--id", "x", "--before", "2h", check=False)
    assert both.returncode == 2 and "--before goes with --doc" in both.stderr
    bad_time = collab_cli("revoke", "--db", db, "--doc", "notes", "--before", "soon", check=False)
    assert bad_time.returncode == 2 and "--before" in bad_time.stderr


async def test_closed_connections_are_not_held_until_their_tokens_expire(secured: CollabServer) -> None:
    url = with_token(room_url(secured, "notes"), token("notes"))
    async with synced(url):
        for _ in range(150):
            async with synced(url):
                assert len(secured.sessions._live) == 2
        await wait_for(lambda: len(secured.sessions._live) == 1)
        assert len(secured.sessions._expiries) <= 2 * 65, "stale expiries are pruned"


def key_pair(kind: str, tmp_path: Path) -> tuple[Any, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    private = ec.generate_private_key(ec.SECP256R1()) if kind == "ES256" else ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / f"{kind}.pub.pem"
    path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, path


def sign_with(private: Any, algorithm: str, claims: dict[str, Any]) -> str:
    """What an app server's JWT library does with its private key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    signing_input = b64(json.dumps({"alg": algorithm, "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    if algorithm == "EdDSA":
        signature = private.sign(signing_input.encode())
    else:
        r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32) + s.to_bytes(32)
    return signing_input + "." + b64(signature)


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
async def test_public_key_tokens(start_server: StartServer, tmp_path: Path, algorithm: str) -> None:
    """collab holds only the public key: tokens signed by the private key work, nothing else does."""
    private, public_path = key_pair(algorithm, tmp_path)
    server = await start_server(auth_public_key=public_path)
    claims = {"doc": "notes", "perm": "write", "exp": int(time.time()) + 600, "iat": int(time.time()), "jti": "k1"}
    url = room_url(server, "notes")
    async with synced(with_token(url, sign_with(private, algorithm, claims))) as writer:
        text(writer).insert(0, "signed")
        await writer.resync()
        (tmp_path / "other").mkdir()
        other_private, _ = key_pair(algorithm, tmp_path / "other")
        header, _, signature = sign_with(private, algorithm, claims).split(".")
        other_claims = signed({**claims, "doc": "other"}).split(".")[1]
        forged = {
            "another key": sign_with(other_private, algorithm, claims),
            "HS256 with the public key as secret": mint_token(public_path.read_bytes(), "notes", Permission.WRITE, 600),
            "the claims changed": f"{header}.{other_claims}.{signature}",
            "alg none": base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + f".{other_claims}.",
        }
        for kind, value in forged.items():
            intruder = await Client(with_token(url, value)).connect()
            assert (await intruder.wait_closed())[0] == 4401, kind
            assert not intruder.synced.is_set(), kind
        path = "/api/docs/notes?format=txt"
        reply = await get(server, path, bearer=sign_with(private, algorithm, claims))
        assert (reply.status, reply.body) == (200, b"signed")
        assert writer.close_code is None


def test_a_bad_public_key_is_a_clear_error(tmp_path: Path) -> None:
    from collab.config import Settings
    from collab.errors import ConfigError

    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Settings(auth_public_key=tmp_path / "bad.pem").public_key()
    with pytest.raises(ConfigError, match="cannot read"):
        Settings(auth_public_key=tmp_path / "missing.pem").public_key()
