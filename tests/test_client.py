"""collab.client as applications use it: refusals that raise at once, reconnecting and resyncing after a server
restart, tokens, TLS with verification, presence, waiting for changes. Real servers throughout."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidMessage
from websockets.typing import Origin

from collab.auth import Permission
from collab.client import Backoff, Client, ClosedError, RefusedError, State, retryable_close
from collab.client.policy import redacted_url
from collab.client.presence import Presence
from collab.server.app import CollabServer
from collab.sync.protocol import Awareness, AwarenessEntry, SyncStep1, SyncStep2, Update, parse_frame

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
    wait_for,
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
    """The server broadcast the dropped connection's removal at clock + 1, or handed its id over to the quick
    reconnection with none (collab.sync.presence): either way the presence published again must be newer, or
    everyone would take it for a stale echo and the user would be gone."""
    url = room_url(server, "cursors")
    async with synced(url) as watcher:
        async with Client(url, reconnect=FAST) as client:
            client.set_awareness({"user": "ada"})
            await watcher.wait_until(lambda: watcher.awareness.get(client.client_id) == {"user": "ada"})
            dropped = client.ws
            dropped.transport.abort()  # the network drops it: 1006
            await client.wait_until(lambda: client.ws is not dropped and client.state is State.SYNCED)
            await wait_for(lambda: len(server.peers) == 2)  # the server let the dropped one go: watcher, client
            async with synced(url) as newcomer:  # greeted with what the server holds now
                assert newcomer.awareness.get(client.client_id) == {"user": "ada"}
            await watcher.wait_until(lambda: watcher.awareness.get(client.client_id) == {"user": "ada"})
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
    assert Backoff(factor=1e6).delay(70) <= 30, "no float overflow past the cap"
    bad_ones = ({"initial": 0}, {"initial": 5, "max_delay": 1}, {"factor": 0.5}, {"max_attempts": 0})
    for bad in (*bad_ones, {"stable_after": -1}, {"factor": float("inf")}):
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


# Connections that fail in the ways a network or a misbehaving server does: a cut handshake, no sync, a sync
# and then a close, a slow reader. The servers are real sockets with a script of their own.


@asynccontextmanager
async def scripted(handler: Callable[[ServerConnection], Awaitable[None]], **options: Any) -> AsyncIterator[int]:
    """A WebSocket server on 127.0.0.1 that runs `handler` for each connection; its port."""
    async with serve(handler, "127.0.0.1", 0, compression=None, **options) as listening:
        yield listening.sockets[0].getsockname()[1]


async def answer(ws: ServerConnection, doc: Doc, *, greet: bool = True) -> None:
    """Serve `doc` to `ws` as a y-websocket server does (greet with a step 1, answer each step 1, take each
    update), to the end."""
    if greet:
        await ws.send(SyncStep1(doc.get_state()).encode())
    async for frame in ws:
        assert isinstance(frame, bytes)
        for message in parse_frame(frame):
            match message:
                case SyncStep1(state_vector=state_vector):
                    await ws.send(SyncStep2(doc.get_update(state_vector)).encode())
                case SyncStep2(update=update) | Update(update=update):
                    doc.apply_update(update)


def recording(states: list[State], awaited: State, seen: asyncio.Event) -> Callable[[State], None]:
    """An `on_state` that keeps every state and sets `seen` on `awaited`, however briefly the client is in it."""

    def on_state(state: State) -> None:
        states.append(state)
        if state is awaited:
            seen.set()

    return on_state


async def test_a_connection_cut_during_the_handshake_is_tried_again() -> None:
    """A server killed while answering, a load balancer with no backend: accepted, then closed before any HTTP
    answer (websockets' InvalidMessage, caused by EOFError). It was final: start() raised at once."""
    cut = 0

    async def accept_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal cut
        cut += 1
        writer.close()

    front = await asyncio.start_server(accept_and_close, "127.0.0.1", 0)
    states: list[State] = []
    try:
        url = f"ws://127.0.0.1:{front.sockets[0].getsockname()[1]}/x"
        client = Client(url, reconnect=FAST, sync_timeout=1, on_state=states.append)
        with pytest.raises(TimeoutError, match="not synced within 1 s; the last attempt: did not receive a valid HTTP"):
            await client.start()
    finally:
        front.close()
    assert cut >= 3 and State.RECONNECTING in states, (cut, states)


async def test_a_ws_url_to_a_tls_port_is_refused_at_once_saying_wss(
    start_server: StartServer, certificate: tuple[Path, Path]
) -> None:
    """A TLS port cuts a plain handshake just as a server going down does; the client tells them apart by
    trying a TLS handshake, and refuses for good."""
    cert, key = certificate
    server = await start_server(certfile=cert, keyfile=key)
    started = time.monotonic()
    with pytest.raises(InvalidMessage, match=r"is a ws:// URL, but the server speaks TLS: use wss://"):
        async with Client(f"ws://127.0.0.1:{server.port}/plain"):
            pass
    assert time.monotonic() - started < 5


async def test_a_certificate_for_another_name_is_refused_at_once(
    start_server: StartServer, certificate: tuple[Path, Path]
) -> None:
    """The certificate names 127.0.0.1 only: trusted (cafile), but not for localhost."""
    cert, key = certificate
    server = await start_server(certfile=cert, keyfile=key)
    started = time.monotonic()
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        async with Client(f"wss://localhost:{server.port}/secure", cafile=cert):
            pass
    assert time.monotonic() - started < 5, "not retried"


async def test_a_reconnection_that_never_syncs_is_dropped_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    """A room load that hangs: the connection opens, the server answers pings, no step 2 ever comes. Only the
    first connection had a deadline (start's): a reconnection stayed CONNECTED forever."""
    caplog.set_level(logging.INFO, "collab.client")
    release, tried = asyncio.Event(), asyncio.Event()
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await ws.send(SyncStep2(Doc().get_update()).encode())
            await release.wait()
            await ws.close(1012, "restarting")
            return
        if connections == 4:
            tried.set()
        await ws.wait_closed()  # open, never syncing

    states: list[State] = []
    async with scripted(handler) as port:
        async with Client(f"ws://127.0.0.1:{port}/x", reconnect=FAST, sync_timeout=0.3, on_state=states.append):
            release.set()
            await asyncio.wait_for(tried.wait(), 10)
    assert states[:4] == [State.CONNECTING, State.CONNECTED, State.SYNCED, State.RECONNECTING]
    assert states[4:8] == [State.CONNECTED, State.RECONNECTING] * 2, states
    assert "dropped the connection: not synced within 0.3 s of connecting" in caplog.text


async def test_a_server_that_syncs_and_closes_at_once_is_not_reconnected_to_at_full_speed() -> None:
    """Synced, then 1013 every time: each sync reset the backoff, and every client came back about three times a
    second. A connection now counts as a success only once it stayed up `stable_after` seconds."""
    opened: list[float] = []
    sixth = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        opened.append(time.monotonic())
        if len(opened) == 6:
            sixth.set()
        await ws.send(SyncStep2(Doc().get_update()).encode())
        await ws.close(1013, "try again later")

    async with scripted(handler) as port:
        client = Client(f"ws://127.0.0.1:{port}/x", reconnect=Backoff(initial=0.05, max_delay=1.0))
        starting = asyncio.create_task(client.start())
        try:
            await asyncio.wait_for(sixth.wait(), 10)
        finally:
            await client.close()
            await asyncio.gather(starting, return_exceptions=True)
    # Waits of at least half of 0.05, 0.1, 0.2, 0.4, 0.8: 0.775 s. Reset after each sync: at most 5 * 0.05.
    assert opened[5] - opened[0] >= 0.7, [round(at - opened[0], 3) for at in opened]


async def test_resync_through_a_reconnect_waits_until_the_server_read_the_offline_edits() -> None:
    """The step 2 answering a new connection's greeting comes before the server read our answer to its step 1,
    which carries what was typed offline: resync() returned on it, and the server did not have the edits yet."""
    held: Doc = Doc()
    restart, reconnecting = asyncio.Event(), asyncio.Event()
    connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            serving = asyncio.create_task(answer(ws, held))
            await restart.wait()
            await ws.close(1012, "restarting")
            await serving
            return
        await ws.recv()  # the greeting's step 1
        await ws.send(SyncStep2(held.get_update()).encode())  # answered at once...
        await ws.send(SyncStep1(held.get_state()).encode())
        await asyncio.sleep(0.3)  # ...by a busy server, which reads what follows only now
        await answer(ws, held, greet=False)

    states: list[State] = []
    async with scripted(handler) as port:
        on_state = recording(states, State.RECONNECTING, reconnecting)
        async with Client(f"ws://127.0.0.1:{port}/x", reconnect=Backoff(0.3, 0.3), on_state=on_state) as client:
            restart.set()
            await asyncio.wait_for(reconnecting.wait(), 10)
            text(client).insert(0, "typed offline")
            await client.resync()
            assert str(held.get("content", type=Text)) == "typed offline", "the server has it once resync returns"
            assert connections == 2


async def test_resync_sends_again_when_the_connection_is_lost_before_the_answer() -> None:
    """The step 1 went out on a connection that closed before answering: the answer never comes on it; the next
    connection is asked again."""
    held: Doc = Doc()
    connections = 0
    asked = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections > 1:
            await answer(ws, held)
            return
        async for frame in ws:
            assert isinstance(frame, bytes)
            for message in parse_frame(frame):
                if isinstance(message, SyncStep1) and message.state_vector != Doc().get_state():
                    asked.set()  # resync's step 1 (the greeting's is of an empty document): never answered
                    await ws.close(1012, "restarting")
                    return
                if isinstance(message, SyncStep1):
                    await ws.send(SyncStep2(held.get_update()).encode())
                    await ws.send(SyncStep1(held.get_state()).encode())
                elif isinstance(message, SyncStep2 | Update):
                    held.apply_update(message.update)

    async with scripted(handler) as port:
        async with Client(f"ws://127.0.0.1:{port}/x", reconnect=FAST) as client:
            text(client).insert(0, "kept")
            await client.resync(timeout=10)
            assert asked.is_set() and connections == 2
            assert str(held.get("content", type=Text)) == "kept"


async def test_a_server_that_stops_reading_is_dropped_above_max_unsent(caplog: pytest.LogCaptureFixture) -> None:
    """broadcast() has no backpressure: edits for a server that reads nothing piled up in memory without end."""
    dropped = asyncio.Event()
    states: list[State] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send(SyncStep2(Doc().get_update()).encode())
        await ws.wait_closed()  # reads nothing: with max_queue=1 the socket fills up

    async with scripted(handler, max_queue=1) as port:
        on_state = recording(states, State.RECONNECTING, dropped)
        async with Client(
            f"ws://127.0.0.1:{port}/x", reconnect=Backoff(5, 5), max_unsent=2**20, on_state=on_state
        ) as client:
            for _ in range(200):  # 50 MiB at most, far more than the socket's buffers hold
                text(client).insert(0, "x" * 2**18)
                if dropped.is_set():
                    break
                await asyncio.sleep(0)  # let the transport write what the socket takes
            assert dropped.is_set(), "dropped, to reconnect and resync"
    assert "the server did not read the" in caplog.text and "more than max_unsent" in caplog.text


async def test_a_message_above_max_size_stops_the_client_saying_so() -> None:
    async def handler(ws: ServerConnection) -> None:
        doc: Doc = Doc()
        doc.get("content", type=Text).insert(0, "x" * 2**21)
        await ws.send(SyncStep2(doc.get_update()).encode())
        await ws.wait_closed()

    async with scripted(handler, max_size=None) as port:
        with pytest.raises(ClosedError) as stopped:
            async with Client(f"ws://127.0.0.1:{port}/x", reconnect=FAST, max_size=2**20):
                pass
    assert not isinstance(stopped.value, RefusedError), "the server refused nothing"
    assert stopped.value.code == 1009 and "pass max_size= to take larger messages" in str(stopped.value)


async def test_close_during_the_handshake_or_the_backoff_returns_at_once() -> None:
    accepted = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # never answers the upgrade; returns once the client goes
        writer.close()

    stalling = await asyncio.start_server(stall, "127.0.0.1", 0)
    try:
        client = Client(f"ws://127.0.0.1:{stalling.sockets[0].getsockname()[1]}/x")
        starting = asyncio.create_task(client.start())
        await asyncio.wait_for(accepted.wait(), 10)
        started = time.monotonic()
        await client.close()
        assert time.monotonic() - started < 1 and client.state is State.CLOSED
        with pytest.raises(ClosedError, match="the client is closed"):
            await starting
    finally:
        stalling.close()
    reconnecting = asyncio.Event()
    waiting = Client(
        f"ws://127.0.0.1:{free_port()}/x",
        reconnect=Backoff(initial=30, max_delay=30),
        on_state=recording([], State.RECONNECTING, reconnecting),
    )
    starting = asyncio.create_task(waiting.start())
    await asyncio.wait_for(reconnecting.wait(), 10)
    started = time.monotonic()
    await waiting.close()
    assert time.monotonic() - started < 1, "not after the 15-30 s wait"
    with pytest.raises(ClosedError):
        await starting
    assert [task for task in asyncio.all_tasks() if task.get_name().startswith("collab client")] == []


async def test_a_token_in_the_url_stays_out_of_logs_errors_and_task_names(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "collab.client")
    secret = "SECRET-TOKEN-VALUE"
    reconnecting = asyncio.Event()
    names: list[str] = []

    def on_state(state: State) -> None:
        if state is State.RECONNECTING:
            names.extend(task.get_name() for task in asyncio.all_tasks())
            reconnecting.set()

    client = Client(
        f"ws://127.0.0.1:{free_port()}/x?token={secret}", reconnect=FAST, sync_timeout=0.5, on_state=on_state
    )
    with pytest.raises(TimeoutError) as gave_up:
        await client.start()
    assert reconnecting.is_set() and any("token=***" in name for name in names), names
    assert secret not in str(gave_up.value) and "token=***" in str(gave_up.value)
    assert secret not in caplog.text and "token=***" in caplog.text
    assert not any(secret in name for name in names)
    with pytest.raises(ValueError) as refused:
        Client(f"http://host/x?token={secret}")
    assert secret not in str(refused.value)


def test_redacted_urls_hide_tokens_and_passwords() -> None:
    assert redacted_url("wss://h:1/a%2Fb?token=abc&x=1") == "wss://h:1/a%2Fb?token=***&x=1"
    assert redacted_url("ws://ada:hunter2@h/x") == "ws://ada:***@h/x"
    assert redacted_url("ws://h/x") == "ws://h/x"


# Presence.


async def test_the_own_presence_is_renewed_while_connected(server: CollabServer) -> None:
    """A stock client drops a remote state it has not heard of for 30 s: the bot vanished from the web editor
    half a minute after it came. It is renewed, at a higher clock each time, the same state."""
    url = room_url(server, "renewed")
    async with Client(url, presence_interval=0.05) as bot, connect(url) as raw:
        bot.set_awareness({"user": "bot"})
        clocks: list[int] = []
        async with asyncio.timeout(10):
            while len(clocks) < 4:
                frame = await raw.recv()
                assert isinstance(frame, bytes)
                for message in parse_frame(frame):
                    if isinstance(message, Awareness):
                        for entry in message.entries:
                            if entry.client_id == bot.client_id:
                                assert json.loads(entry.state) == {"user": "bot"}
                                clocks.append(entry.clock)
    assert clocks == sorted(set(clocks)), "each at a higher clock"


def test_presence_renews_only_a_state_and_counts_only_real_changes() -> None:
    ours, theirs = Presence(1), AwarenessEntry
    assert ours.renewal() is None, "nothing to renew before a state"
    ours.publish({"user": "bot"})
    assert ours.renewal() is not None
    ours.publish(None)
    assert ours.renewal() is None and ours.greeting() is None, "gone: not renewed, not sent again"
    ours.greeted()
    ours.receive([theirs(2, 1, '{"user": "ada"}')])
    assert ours.changes == 1
    ours.receive([theirs(2, 2, '{"user": "ada"}'), theirs(1, 3, '{"user": "bot"}')])
    assert ours.changes == 1, "a renewal of the same state, our own echo: no change"
    ours.lost()
    assert ours.others() == {}, "nobody shown while disconnected"
    ours.receive([theirs(2, 3, '{"user": "ada"}')])  # the new connection's greeting
    ours.greeted()
    assert ours.changes == 1, "as before the gap: no change"
    ours.lost()
    ours.greeted()
    assert ours.changes == 2, "ada left during the gap"


async def test_presence_across_a_reconnect_reports_who_left_meanwhile_and_only_that(
    start_server: StartServer,
) -> None:
    """`others` kept people who left while reconnecting, a departure during the gap was never reported, and the
    re-greeting counted everyone unchanged as a change."""
    server = await start_server()
    port, url = server.port, room_url(server, "p")
    async with Client(url, reconnect=FAST) as watcher, Client(url, reconnect=FAST) as bea:
        bea.set_awareness({"user": "bea"})
        assert await watcher.wait_for_awareness(timeout=5) == {bea.client_id: {"user": "bea"}}
        dropped = watcher.ws
        dropped.transport.abort()
        await watcher.wait_until(lambda: watcher.ws is not dropped and watcher.state is State.SYNCED)
        assert watcher.others == {bea.client_id: {"user": "bea"}}
        with pytest.raises(TimeoutError):
            await watcher.wait_for_awareness(timeout=0.3)  # bea is as she was: nothing to report
        ada = await Client(url, reconnect=False).start()
        ada.set_awareness({"user": "ada"})
        await watcher.wait_until(lambda: ada.client_id in watcher.others)
        await watcher.wait_for_awareness(timeout=5)
        await server.stop()  # everyone goes; ada for good (no reconnect)
        await watcher.wait_state(State.RECONNECTING)
        assert watcher.others == {}, "nobody is shown while nothing is heard"
        await ada.close()
        await start_server(port=port)
        await watcher.wait_until(lambda: bea.client_id in watcher.others and watcher.state is State.SYNCED)
        others = await watcher.wait_for_awareness(timeout=5)
        assert ada.client_id not in others and bea.client_id in others, "ada left during the gap: reported once"
        with pytest.raises(TimeoutError):  # once: nothing more has changed
            await watcher.wait_for_awareness(timeout=0.3)


# The rest of the client's contract.


async def test_the_client_refuses_use_from_another_thread(server: CollabServer) -> None:
    async with synced(room_url(server, "threads")) as client:
        with pytest.raises(RuntimeError, match="from its event loop's thread only"):
            await asyncio.to_thread(client.set_awareness, {"user": "elsewhere"})


def test_a_refusal_survives_pickling() -> None:
    """A RefusedError raised in a worker process or a thread pool reaches its caller whole."""
    refusal = pickle.loads(pickle.dumps(RefusedError(4401, "invalid token signature")))
    assert isinstance(refusal, RefusedError) and (refusal.code, refusal.reason) == (4401, "invalid token signature")
    assert str(refusal) == "the server refused the connection (4401): invalid token signature"
