"""collab.client as applications use it: refusals that raise at once, reconnecting and resyncing after a server
restart, tokens, TLS with verification, presence, waiting for changes. Real servers throughout."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest
from websockets.typing import Origin

from collab.auth import Permission
from collab.client import Backoff, Client, ClosedError, RefusedError, State, retryable_close
from collab.server.app import CollabServer

from .helpers import (
    ServerProcess,
    StartServer,
    call,
    room_url,
    run_in_process,
    self_signed_certificate,
    synced,
    text,
    token,
    wait_stored,
    write_backup,
)

FAST = Backoff(initial=0.02, max_delay=0.1)
"""Reconnecting within a tenth of a second, so that tests do not wait out the default backoff."""


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


# Refusals raise at once.


@pytest.mark.parametrize(
    ("scope", "code", "said"),
    [("notes", 4401, "invalid token signature"), ("other", 4403, "token is for 'other', not 'notes'")],
)
async def test_a_refused_token_raises_at_once_with_the_close_code_and_reason(
    secured: CollabServer, scope: str, code: int, said: str
) -> None:
    value = token(scope) + ("x" if code == 4401 else "")
    started = time.monotonic()
    with pytest.raises(RefusedError) as refusal:
        async with Client(room_url(secured, "notes"), token=value):  # reconnecting is on: a refusal is final
            pytest.fail("a refused client never gets in")
    assert time.monotonic() - started < 2, "at once, not after a timeout"
    assert refusal.value.code == code and said in refusal.value.reason
    assert str(refusal.value) == f"the server refused the connection ({code}): {refusal.value.reason}"
    label = "invalid" if code == 4401 else "forbidden"
    assert secured.metrics.auth_failures.get(label) == 1, "no second attempt"


async def test_wait_synced_raises_the_refusal_instead_of_hanging(secured: CollabServer) -> None:
    """The old way, `await client.synced.wait()`, hung forever on a 4401; the documented one raises."""
    client = await Client(room_url(secured, "notes")).connect()  # no token at all
    try:
        with pytest.raises(RefusedError) as refusal:
            await client.wait_synced(timeout=5)
        assert refusal.value.code == 4401 and "a token is required" in refusal.value.reason
        assert client.state is State.CLOSED and client.error is not None
        with pytest.raises(RefusedError):
            await client.wait_for_change(timeout=5)  # every wait says so, not only the first
    finally:
        await client.close()


async def test_a_refused_upgrade_raises_with_its_http_status(start_server: StartServer) -> None:
    server = await start_server(allowed_origin=("https://app.example.com",))
    with pytest.raises(RefusedError) as refusal:
        async with Client(room_url(server, "x"), origin=Origin("https://evil.example.com")):
            pass
    assert refusal.value.code == 403 and str(refusal.value).startswith("the server refused the connection (HTTP 403)")
    assert server.metrics.auth_failures.get("origin") == 1, "no second attempt"


async def test_a_document_deleted_under_a_client_ends_it_for_good(server: CollabServer) -> None:
    states: list[State] = []
    async with Client(room_url(server, "doomed"), reconnect=FAST, on_state=states.append) as client:
        text(client).insert(0, "soon gone")
        await client.resync()
        assert (await call(server, "DELETE", "/api/docs/doomed")).status == 200
        with pytest.raises(RefusedError) as deleted:
            await client.wait_for_change(timeout=10)
        assert deleted.value.code == 4410
        assert await client.wait_closed() == (4410, deleted.value.reason)
    assert states == [State.CONNECTING, State.CONNECTED, State.SYNCED, State.CLOSED], "never reconnected"
    assert not server.peers


# Reconnecting and resyncing.


async def test_a_restarted_server_is_reconnected_to_and_what_each_side_missed_arrives(
    start_server: StartServer, db_path: Path, tmp_path: Path
) -> None:
    server = await start_server()
    port = server.port
    states: list[State] = []
    async with Client(room_url(server, "notes"), reconnect=FAST, on_state=states.append) as client:
        text(client).insert(0, "before. ")
        await client.resync()  # the server has it
        client.set_awareness({"user": "bot"})
        await server.stop()  # 1001, going away: worth reconnecting
        await client.wait_state(State.RECONNECTING)
        text(client).insert(len(str(text(client))), "typed offline. ")
        # Someone else changes the document while the server is down: collab import writes the database.
        await run_in_process("import", str(write_backup(tmp_path / "notes.ydoc", "while away. ")), "--db", str(db_path))
        restarted = await start_server(port=port)
        await client.wait_synced(timeout=10)
        await client.wait_until(lambda: "while away. " in str(text(client)))  # the server's step 2
        async with synced(room_url(restarted, "notes")) as other:
            await other.wait_until(lambda: "typed offline. " in str(text(other)))  # our answer to its step 1
            assert str(text(other)) == str(text(client))
            await other.wait_until(lambda: other.awareness.get(client.client_id) == {"user": "bot"})
        await wait_stored(db_path, "notes", str(text(client)))
    assert states == [
        *(State.CONNECTING, State.CONNECTED, State.SYNCED),
        *(State.RECONNECTING, State.CONNECTED, State.SYNCED),
        State.CLOSED,
    ]


async def test_a_server_killed_and_restarted_on_its_port_is_reconnected_to(db_path: Path) -> None:
    """kill -9: no close frame at all (1006); the client finds the new process on the same port."""
    process = ServerProcess(db_path, "--commit-interval", "5ms").start()
    try:
        async with Client(process.url("killed"), reconnect=FAST) as client:
            text(client).insert(0, "durable. ")
            await client.resync()
            await wait_stored(db_path, "killed", "durable. ")
            process.kill()
            await client.wait_state(State.RECONNECTING)
            assert client.close_code == 1006
            text(client).insert(len(str(text(client))), "meanwhile.")
            await asyncio.to_thread(process.start)
            await client.wait_synced(timeout=20)
            await client.resync()  # answered: the server has handled our step 2 as well
            await wait_stored(db_path, "killed", "durable. meanwhile.")
    finally:
        process.stop()


async def test_a_dropped_connection_comes_back_with_its_presence(server: CollabServer) -> None:
    """The server broadcast the dropped connection's removal at clock + 1 and remembers it: the presence
    published again must be newer than that, or everyone would take it for a stale echo."""
    async with synced(room_url(server, "cursors")) as watcher:
        async with Client(room_url(server, "cursors"), reconnect=FAST) as client:
            client.set_awareness({"user": "ada"})
            await watcher.wait_until(lambda: watcher.awareness.get(client.client_id) == {"user": "ada"})
            client.ws.transport.abort()  # the network drops it: 1006
            await watcher.wait_until(lambda: client.client_id not in watcher.awareness)
            await watcher.wait_until(lambda: watcher.awareness.get(client.client_id) == {"user": "ada"})
            assert client.state is State.SYNCED
            text(watcher).insert(0, "still in sync")
            await client.wait_until(lambda: str(text(client)) == "still in sync")


async def test_a_server_at_its_limit_is_tried_again_until_it_has_room(start_server: StartServer) -> None:
    server = await start_server(max_connections=1)
    holder = await Client(room_url(server, "full")).connect()
    await holder.wait_synced()
    states: list[State] = []
    reconnecting = asyncio.Event()

    def on_state(state: State) -> None:
        states.append(state)
        if state is State.RECONNECTING:
            reconnecting.set()

    waiting = Client(room_url(server, "full"), reconnect=FAST, on_state=on_state)
    starting = asyncio.create_task(waiting.start())
    try:
        await asyncio.wait_for(reconnecting.wait(), 10)  # closed with 1013: try again later
        assert waiting.close_code == 1013
        await holder.close()
        await starting
        assert waiting.state is State.SYNCED
    finally:
        await waiting.close()
    assert states[:3] == [State.CONNECTING, State.CONNECTED, State.RECONNECTING]


async def test_giving_up_after_max_attempts_says_why() -> None:
    url = f"ws://127.0.0.1:{free_port()}/nobody"
    client = Client(url, reconnect=Backoff(initial=0.01, max_delay=0.02, max_attempts=3))
    with pytest.raises(ClosedError) as gave_up:
        await client.start()
    assert f"gave up on {url} after 3 attempt(s)" in str(gave_up.value)
    assert isinstance(gave_up.value.__cause__, OSError), "the last failure, a refused connection"
    assert client.state is State.CLOSED


async def test_a_server_that_never_comes_is_given_up_on_after_sync_timeout() -> None:
    url = f"ws://127.0.0.1:{free_port()}/nobody"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"not synced within 0\.3 s; the last attempt: .*onnect"):
        async with Client(url, reconnect=FAST, sync_timeout=0.3):
            pass
    assert time.monotonic() - started < 3


def test_only_closes_a_retry_can_fix_are_retried() -> None:
    assert all(retryable_close(code) for code in (1001, 1006, 1011, 1012, 1013, 1014))
    assert not any(retryable_close(code) for code in (1000, 1002, 1003, 1005, 1007, 1008, 1009, 4400, 4401, 4403))
    assert not any(retryable_close(code) for code in (4410, 4411, None))


def test_the_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(initial=0.5, max_delay=4.0)
    assert [backoff.delay(n, lambda: 0.999999) for n in range(1, 6)] == pytest.approx([0.5, 1, 2, 4, 4])
    assert [backoff.delay(n, lambda: 0.0) for n in range(1, 6)] == [0.25, 0.5, 1, 2, 2], "never less than half"
    assert backoff.delay(10_000) <= 4.0
    for bad in ({"initial": 0}, {"initial": 5, "max_delay": 1}, {"factor": 0.5}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            Backoff(**bad)


# Tokens and TLS.


async def test_a_token_goes_in_a_subprotocol_not_the_url(secured: CollabServer) -> None:
    url = room_url(secured, "plan")
    async with Client(url, token=token("plan")) as writer, Client(url, token=token("plan", Permission.READ)) as reader:
        assert "token" not in writer.url and writer.ws.subprotocol == "collab", "the server never echoes the token"
        text(writer).insert(0, "by token")
        await reader.wait_until(lambda: str(text(reader)) == "by token")
        text(reader).insert(0, "not allowed")
        await reader.wait_until(lambda: reader.permission_denied is not None)
        assert "read-only" in (reader.permission_denied or "") and reader.state is State.SYNCED


async def test_wss_verifies_the_certificate_and_trusts_the_ca_it_is_given(
    start_server: StartServer, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = await start_server(certfile=cert, keyfile=key)
    url = f"wss://127.0.0.1:{server.port}/secure"
    started = time.monotonic()
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate"):
        async with Client(url):  # Python's default trust store: this certificate is in no CA list
            pass
    assert time.monotonic() - started < 5, "a certificate it does not trust is not retried"
    async with Client(url, cafile=cert) as first, Client(url, ssl=ssl.create_default_context(cafile=cert)) as second:
        text(first).insert(0, "over TLS")
        await second.wait_until(lambda: str(text(second)) == "over TLS")
    with pytest.raises(ValueError, match="for wss:// URLs"):
        Client(f"ws://127.0.0.1:{server.port}/plain", cafile=cert)


# Presence and changes.


async def test_wait_for_change_misses_nothing_and_reports_only_what_others_did(server: CollabServer) -> None:
    url = room_url(server, "changes")
    async with synced(url) as author:
        text(author).insert(0, "already there. ")
        await author.resync()
        async with Client(url) as watcher:
            assert str(text(watcher)) == "already there. "
            with pytest.raises(TimeoutError):
                await watcher.wait_for_change(timeout=0.2)  # the first sync's content is no change
            text(watcher).insert(0, "mine. ")
            text(author).insert(len(str(text(author))), "one. ")
            text(author).insert(len(str(text(author))), "two.")
            await author.resync()
            await watcher.wait_until(lambda: str(text(watcher)).endswith("two."))
            await watcher.wait_for_change(timeout=1)  # both came before this call: reported, not missed
            with pytest.raises(TimeoutError):
                await watcher.wait_for_change(timeout=0.2)  # and reported once; our own edit is no change
            text(author).insert(0, "three. ")
            await watcher.wait_for_change(timeout=5)
            assert str(text(watcher)).startswith("three. ")


async def test_others_presence_can_be_read_and_waited_for(server: CollabServer) -> None:
    url = room_url(server, "presence")
    async with Client(url) as watcher:
        watcher.set_awareness({"user": "watcher"})
        async with Client(url) as ada:
            ada.set_awareness({"user": "ada"})
            others = await watcher.wait_for_awareness(timeout=5)
            assert others == {ada.client_id: {"user": "ada"}}, "its own state is not among the others"
            ada.set_awareness({"user": "ada", "cursor": 3})
            assert await watcher.wait_for_awareness(timeout=5) == {ada.client_id: {"user": "ada", "cursor": 3}}
            leaving = ada.client_id
        assert leaving not in await watcher.wait_for_awareness(timeout=5), "gone: its removal is a change too"
